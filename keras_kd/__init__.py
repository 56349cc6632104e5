"""keras_kd: knowledge distillation for Keras 3."""

from keras_kd import callbacks
from keras_kd import data
from keras_kd import distribute
from keras_kd import export
from keras_kd import losses
from keras_kd import models
from keras_kd import offline
from keras_kd import on_policy
from keras_kd import optimizers
from keras_kd import presets
from keras_kd import reffakd
from keras_kd import skd
from keras_kd import teacher_inputs
from keras_kd import training
from keras_kd.distiller import Distiller
from keras_kd.soft_label_teacher import SoftLabelTeacher

__version__ = "0.1.0"
