"""Knowledge terms for `keras_kd.Distiller`, one per module."""

from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.feature_alignment import FeatureAlignment
from keras_kd.losses.feature_distillation import FeatureDistillation
from keras_kd.losses.keras_adapter import KerasDistillationLoss
from keras_kd.losses.logits_distillation import LogitsDistillation
