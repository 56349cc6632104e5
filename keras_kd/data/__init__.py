"""Image classification data: loaders, host pipelines, augmentation, subsets.

- `load`: NumPy arrays (`x` uint8 NHWC, `y` int64) from scikit-learn's
  digits, a folder of `.npz` files, or tensorflow-datasets.
- `make_dataset`, `epoch_batches`: `tf.data` pipelines (the second
  deterministic per seed and epoch, for resumable training).
- `EpochBatches`: the same batches as a `keras.utils.PyDataset` (NumPy
  crop + flip, `crop_flip_numpy`), for machines without TensorFlow.
- `RandomCropFlip` (`augment_batch`): the same augmentation inside a model,
  with `keras.ops`; `flip_rotation`: flip + rotation (Keras layers).
- `resize_images`: uint8 images resized (bilinear), e.g. 28x28 to 32x32.
- `epoch_order`, `steps_per_epoch`: which examples each batch of an epoch
  holds, for every host pipeline (`kd.offline` included).
- `class_subset`: a subset of classes relabelled `0..k-1`.

Example:

```python
(x, y), (x_test, y_test), info = kd.data.load("digits")
(x_s, y_s), mapping = kd.data.class_subset((x, y), classes=[3, 5, 8])
```
"""

from keras_kd.data.augment import RandomCropFlip
from keras_kd.data.augment import RandomPaddedCrop
from keras_kd.data.augment import augment_batch
from keras_kd.data.augment import crop_flip_batch
from keras_kd.data.augment import crop_flip_numpy
from keras_kd.data.augment import flip_rotation
from keras_kd.data.common import epoch_order
from keras_kd.data.common import steps_per_epoch
from keras_kd.data.loaders import load
from keras_kd.data.loaders import resize_images
from keras_kd.data.pipeline import channel_stats
from keras_kd.data.pipeline import epoch_batches
from keras_kd.data.pipeline import make_dataset
from keras_kd.data.pipeline import with_example_index
from keras_kd.data.pydataset import EpochBatches
from keras_kd.data.pydataset import resolve_input_pipeline
from keras_kd.data.pydataset import tensorflow_available
from keras_kd.data.rand_augment import RandAugmentCutout
from keras_kd.data.subsets import ClassMapping
from keras_kd.data.subsets import class_subset
