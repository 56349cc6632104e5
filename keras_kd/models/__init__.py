"""Model zoo: CIFAR ResNets, WRNs, VGG, MobileNetV2, small digits CNNs and
LeNet-5 (with batch norm).

Every zoo model is a functional `keras.Model` returning logits, with its
intermediate outputs under stable layer names:

- `stem`: the first convolution's output (LeNet-5 has none);
- `stage1`, `stage2`, ... : each stage's output (`stage_layer_names`);
- `block{stage}_{index}`: each residual block's output (`block_layer_names`);
- `features`: the vector before the classifier (pooled; LeNet-5's last
  hidden layer);
- `logits`: the float32 Dense classifier.
"""

from keras_kd.models.digits import digits_cnn_large
from keras_kd.models.digits import digits_cnn_small
from keras_kd.models.digits import fashion_cnn_large
from keras_kd.models.digits import fashion_cnn_small
from keras_kd.models.layer_names import block_layer_names
from keras_kd.models.layer_names import hint_layer_names
from keras_kd.models.layer_names import stage_layer_names
from keras_kd.models.lenet import lenet5_bn
from keras_kd.models.mobilenetv2 import mobilenetv2
from keras_kd.models.preactivation import batch_norm_before
from keras_kd.models.preactivation import preactivation_layer_names
from keras_kd.models.resnet import cifar_resnet
from keras_kd.models.resnet import resnet8x4
from keras_kd.models.resnet import resnet20
from keras_kd.models.resnet import resnet32
from keras_kd.models.resnet import resnet32x4
from keras_kd.models.resnet import resnet56
from keras_kd.models.resnet import resnet110
from keras_kd.models.vgg import vgg8
from keras_kd.models.vgg import vgg13
from keras_kd.models.wrn import wrn
from keras_kd.models.wrn import wrn_16_2
from keras_kd.models.wrn import wrn_40_1
from keras_kd.models.wrn import wrn_40_2

MODELS = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet8x4": resnet8x4,
    "resnet32x4": resnet32x4,
    "wrn_16_2": wrn_16_2,
    "wrn_40_1": wrn_40_1,
    "wrn_40_2": wrn_40_2,
    "vgg8": vgg8,
    "vgg13": vgg13,
    "mobilenetv2": mobilenetv2,
    "digits_cnn_large": digits_cnn_large,
    "digits_cnn_small": digits_cnn_small,
    "fashion_cnn_large": fashion_cnn_large,
    "fashion_cnn_small": fashion_cnn_small,
    "lenet5_bn": lenet5_bn,
}


def get(name, num_classes=None, input_shape=None, **kwargs):
    """Builds the zoo model `name`; unset arguments keep the model's defaults.

    Example:

    ```python
    teacher = keras_kd.models.get("resnet32x4", num_classes=10)
    student = keras_kd.models.get("resnet8x4", num_classes=10,
                                  weight_decay=5e-4)
    ```
    """
    if name not in MODELS:
        raise ValueError(
            f"Unknown model '{name}'. Available: {', '.join(sorted(MODELS))}."
        )
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if input_shape is not None:
        kwargs["input_shape"] = tuple(input_shape)
    return MODELS[name](**kwargs)
