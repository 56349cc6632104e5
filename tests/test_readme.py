"""README's Python examples run as written, on digits-sized toy models.

Each fenced ```python block of README.md is executed in a namespace that
provides what the prose assumes (`teacher`, `student`, `x_train`, ...):
small zoo ResNets on 8×8×1 inputs and a few images. The only edits are
epoch counts (set to 1) and, for the unbounded training calls, the data.
"""

import os
import re

import keras
import numpy as np
import pytest

import keras_kd as kd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_blocks():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def namespace():
    rng = np.random.default_rng(0)
    # 40 images a class: ReffAKD's class similarity samples 40 per class.
    x_uint8 = rng.integers(0, 256, (400, 8, 8, 1)).astype("uint8")
    y = np.arange(400) % 10
    shape = dict(input_shape=(8, 8, 1))
    teacher = kd.models.get("resnet20", num_classes=10, **shape)
    student = kd.models.get("resnet20", num_classes=10, **shape)
    return {
        "teacher": teacher,
        "student": student,
        # What the earlier sections built, for the later ones.
        "distiller": kd.Distiller(
            teacher, student, **kd.presets.build("kd", teacher, student)
        ),
        "student_3way": kd.models.get("resnet20", num_classes=3, **shape),
        "pixel_teacher": pixel_teacher(),
        "x_train": x_uint8.astype("float32") / 255.0,
        "y_train": y,
        "x_val": x_uint8[:4].astype("float32") / 255.0,
        "x_test": x_uint8[:8].astype("float32") / 255.0,
        "y_test": y[:8],
        "x": x_uint8,
        "y": y,
        "x_uint8": x_uint8,
        "x_test_uint8": x_uint8[:8],
    }


def pixel_teacher():
    """A stand-in for a keras.applications teacher: 16×16, Rescaling(1/255)
    first, a softmax head."""
    inputs = keras.Input((16, 16, 1))
    h = keras.layers.Rescaling(1 / 255)(inputs)
    h = keras.layers.Conv2D(4, 3, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h))


def test_readme_has_the_examples():
    blocks = python_blocks()
    assert len(blocks) >= 4
    assert any("kd.presets.build" in b for b in blocks)
    assert any("kd.training.fit_resumable" in b for b in blocks)


@pytest.mark.slow  # ~1-3 min a block on a shared 2-core CPU.
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    code = python_blocks()[index]
    if "recipes_lib" in code or "from absl" in code:
        pytest.skip("a command-line example")
    if "strategy_from_flag" in code or "keras.distribution" in code:
        pytest.skip(
            "a scale-out example: tests/test_distribute.py runs it on simulated devices"
        )
    code = re.sub(r"epochs=\d+", "epochs=1", code)
    monkeypatch.chdir(tmp_path)
    keras.utils.set_random_seed(0)
    scope = namespace()
    exec(compile(code, f"README.md block {index}", "exec"), scope)
