"""Offline distillation: record teachers' targets once, replay them.

See docs/methods.md §10.
"""

from keras_kd.data.common import steps_per_epoch
from keras_kd.offline.augment import CropFlip
from keras_kd.offline.pipeline import ReplayPyDataset
from keras_kd.offline.pipeline import dataset
from keras_kd.offline.record import ensure_record
from keras_kd.offline.record import record
from keras_kd.offline.recorded_teacher import RecordedTeacher
from keras_kd.offline.recorded_teacher import dense_probabilities
from keras_kd.offline.recorded_teacher import live_teacher_terms
from keras_kd.offline.recorded_teacher import recorded_teachers
from keras_kd.offline.store import Record
from keras_kd.offline.token_replay import TokenReplayPyDataset
from keras_kd.offline.token_replay import record_size
from keras_kd.offline.token_replay import sparse_kl_report
from keras_kd.offline.token_replay import token_dataset
from keras_kd.offline.tokens import record_tokens
from keras_kd.offline.tokens import tokenizer_fingerprint
