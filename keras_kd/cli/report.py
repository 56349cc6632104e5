"""What the recipes print: the configuration, the results table, export."""

import os

import numpy as np

from keras_kd.cli.common import FLAGS
from keras_kd.cli.common import RecipeError


def model_size(model):
    """`(parameters, bytes of weights)` of `model`."""
    params = int(model.count_params())
    size = sum(
        int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights
    )
    return params, size


def model_entry(model, arch, result, **extra):
    """A phase's `result` with `arch`, `params`, `size_bytes` and `extra`:
    one model of `results.json`."""
    params, size = model_size(model)
    return dict(result, arch=arch, params=params, size_bytes=size, **extra)


def table_row(name, entry):
    """The `print_table` row of a `model_entry`."""
    return (name, entry, entry["arch"], entry["params"], entry["size_bytes"])


def print_table(rows, title):
    """Prints `[(name, result, arch, params, size), ...]` as a table."""
    header = ("model", "arch", "test acc (last)", "test acc (best)", "params", "size")
    lines = [header]
    for name, result, arch, params, size in rows:
        lines.append(
            (
                name,
                arch,
                f"{result['last_epoch_test_accuracy']:.4f}",
                f"{result['best_epoch_test_accuracy']:.4f} (ep {result['best_epoch']})",
                f"{params:,}",
                _format_bytes(size),
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    rule = "  ".join("-" * w for w in widths)
    print(f"\n{title}")
    print(rule)
    for i, row in enumerate(lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if i == 0:
            print(rule)
    print(rule)


def _format_bytes(size):
    return (
        f"{size / 1024:.1f} KiB" if size < 1 << 20 else (f"{size / (1 << 20):.2f} MiB")
    )


def check_export_flags():
    formats = [f.strip() for f in FLAGS.export if f.strip()]
    bad = [f for f in formats if f not in ("saved_model", "tflite")]
    if bad:
        raise RecipeError(
            f"Unknown --export format(s) {bad}; use saved_model, tflite or "
            f"both (comma-separated)."
        )
    import keras

    backend = keras.backend.backend()
    if "tflite" in formats and backend != "tensorflow":
        if FLAGS["export"].present:
            raise RecipeError(
                f"--export=tflite needs the TensorFlow backend (the backend "
                f"is {backend!r}): run with KERAS_BACKEND=tensorflow, or "
                f"--export=saved_model."
            )
        print(
            f"Note: no TFLite export on the {backend!r} backend (it needs "
            f"TensorFlow); the student is saved as student.keras."
        )
        formats = [f for f in formats if f != "tflite"]
    return tuple(formats)


def export_student(student, data, formats):
    """Exports the student with `keras_kd.export` and prints the report."""
    if not formats:
        return None
    from keras_kd import export

    out = os.path.join(FLAGS.output_dir, "export")
    report = export.export(
        student,
        out,
        formats=formats,
        sample_inputs=data.normalize(data.x_test[:200]),
        sample_labels=data.y_test[:200],
        tflite_quantization=FLAGS.tflite_quantization,
    )
    print(
        "\nExported the student (inputs: (pixels - mean) / std with "
        f"mean={data.mean.tolist()}, std={data.std.tolist()}):"
    )
    for fmt, item in report.items():
        extra = f", {_format_bytes(item['size_bytes'])}" if "size_bytes" in item else ""
        if "accuracy" in item:
            extra += f", accuracy {item['accuracy']:.4f} on 200 test images"
        print(
            f"  {fmt}: {item['path']}  (max |Δ| vs Keras = "
            f"{item['max_abs_diff']:.2e}{extra})"
        )
    return report


def print_config(
    cfg, lr, method_names, terms, ce_weight, data, x, student_name, teacher_specs
):
    weights = " + ".join(
        [f"{ce_weight:g}·CE"] + [f"{w:g}·{k}" for k, (_, w) in terms.items()]
    )
    print(
        f"Dataset {FLAGS.dataset}: {len(data.x)} training images "
        f"({len(x)} for the student), {len(data.x_test)} test, "
        f"{data.info['num_classes']} classes, "
        f"{tuple(data.info['input_shape'])}."
    )
    print(
        f"Protocol {cfg['protocol']}: {cfg['optimizer']} lr {lr:g}, "
        f"{cfg['epochs']} epochs (teachers {cfg['teacher_epochs']}), "
        f"batch {cfg['batch_size']}, weight decay {cfg['weight_decay']:g}, "
        f"lr ×{cfg['lr_decay_factor']:g} at "
        f"{cfg['lr_decay_epochs'] or 'never'} (teachers "
        f"{cfg['teacher_lr_decay_epochs'] or 'never'}), augment "
        f"{cfg['augment']}."
    )
    if teacher_specs is None:
        print(f"Model {student_name}; loss {weights}.")
    else:
        print(
            f"Teachers {teacher_specs or 'none (soft labels)'} → student "
            f"{student_name}; loss {weights}."
        )
