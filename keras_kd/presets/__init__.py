"""Named distillation presets: `kd.presets.build(name, teacher, student)`.

Each family module registers its presets on import; adding a family is one
import line below.

Example:

```python
import keras_kd as kd

print(kd.presets.names())
distiller = kd.Distiller(teacher, student,
                         **kd.presets.build("fitnets", teacher, student))
```
"""

# Families (one import each registers their presets).
from keras_kd.presets import afd  # noqa: E402,F401
from keras_kd.presets import at  # noqa: E402,F401
from keras_kd.presets import crd  # noqa: E402,F401
from keras_kd.presets import ctkd  # noqa: E402,F401
from keras_kd.presets import dist  # noqa: E402,F401
from keras_kd.presets import dkd  # noqa: E402,F401
from keras_kd.presets import dlkd  # noqa: E402,F401
from keras_kd.presets import fa  # noqa: E402,F401
from keras_kd.presets import fitnets  # noqa: E402,F401
from keras_kd.presets import kd  # noqa: E402,F401
from keras_kd.presets import ls  # noqa: E402,F401
from keras_kd.presets import mlkd  # noqa: E402,F401
from keras_kd.presets import ofd  # noqa: E402,F401
from keras_kd.presets import reffakd  # noqa: E402,F401
from keras_kd.presets import relational  # noqa: E402,F401
from keras_kd.presets import reviewkd  # noqa: E402,F401
from keras_kd.presets import skd  # noqa: E402,F401
from keras_kd.presets import vid  # noqa: E402,F401
from keras_kd.presets.registry import build
from keras_kd.presets.registry import get
from keras_kd.presets.registry import names
from keras_kd.presets.registry import parse
from keras_kd.presets.registry import register
