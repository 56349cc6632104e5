"""Knowledge terms for `keras_kd.Distiller`, one per module."""

from keras_kd.losses.attention_feature_distillation import (
    AttentionFeatureDistillation,
)
from keras_kd.losses.attention_transfer import AttentionTransfer
from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.contrastive_representation import (
    ContrastiveRepresentation,
)
from keras_kd.losses.dual_level_distillation import DualLevelDistillation
from keras_kd.losses.feature_alignment import FeatureAlignment
from keras_kd.losses.feature_distillation import FeatureDistillation
from keras_kd.losses.keras_adapter import KerasDistillationLoss
from keras_kd.losses.logits_distillation import LogitsDistillation
from keras_kd.losses.representative_teacher_keys import (
    RepresentativeTeacherKeys,
)
from keras_kd.losses.review_distillation import ReviewDistillation
from keras_kd.losses.subset_logits_distillation import (
    SubsetLogitsDistillation,
)
