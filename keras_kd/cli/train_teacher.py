"""`train_teacher`: one model trained with cross-entropy."""

import os
import time

from keras_kd.cli import flags as cli_flags
from keras_kd.cli.common import FLAGS
from keras_kd.cli.common import RecipeError
from keras_kd.cli.common import load_data
from keras_kd.cli.common import num_outputs
from keras_kd.cli.common import resolve_model
from keras_kd.cli.common import run
from keras_kd.cli.common import seed_all
from keras_kd.cli.common import train_plain
from keras_kd.cli.protocols import learning_rate
from keras_kd.cli.protocols import resolve_protocol
from keras_kd.cli.report import check_export_flags
from keras_kd.cli.report import export_student
from keras_kd.cli.report import model_entry
from keras_kd.cli.report import print_config
from keras_kd.cli.report import print_table
from keras_kd.cli.report import table_row
from keras_kd.cli.run_dir import prepare_output_dir
from keras_kd.cli.run_dir import run_flags
from keras_kd.cli.run_dir import write_results


def train_teacher_main(argv):
    """Trains one model with cross-entropy on the whole training split."""
    del argv
    start = time.perf_counter()
    cfg, defaults = resolve_protocol()
    formats = check_export_flags()
    data = load_data(cfg)
    spec = FLAGS.model or defaults["teacher"][0]
    seed_all(FLAGS.seed)
    model, loaded = resolve_model(
        spec,
        data.info["num_classes"],
        data.info["input_shape"],
        "model",
        0.0,
        FLAGS.mixed_precision,
    )  # Optimizer's L2.
    if num_outputs(model) != data.info["num_classes"]:
        raise RecipeError(
            f"--model={spec} has {num_outputs(model)} outputs but the "
            f"dataset has {data.info['num_classes']} classes."
        )
    lr = learning_rate(cfg, spec, defaults)
    prepare_output_dir("train_teacher")
    print_config(cfg, lr, [], {}, 1.0, data, data.x, spec, None)
    result = train_plain("model", model, data, data.x, data.y, cfg, lr, FLAGS.seed)
    path = os.path.join(FLAGS.output_dir, "model.keras")
    model.save(path)
    entry = model_entry(model, spec, result, saved_to=path)
    print_table([table_row("model", entry)], f"{FLAGS.dataset}: test accuracy")
    print(f"\nSaved {path}; use it with --teacher={path}.")
    export_report = export_student(model, data, formats)
    results = {
        "recipe": "train_teacher",
        "flags": run_flags("train_teacher"),
        "resolved": dict(cfg, lr=lr),
        "dataset": {**data.info, "normalization": {"mean": data.mean, "std": data.std}},
        "models": {"model": entry},
        "export": export_report,
        "wall_seconds": time.perf_counter() - start,
    }
    write_results(results)
    return results


def main():
    """`keras-kd-train-teacher`: one model with cross-entropy."""
    cli_flags.define_common_flags(default_output_dir="runs/teacher")
    cli_flags.flags.DEFINE_string(
        "model",
        None,
        "Zoo model name (see keras_kd.models.MODELS) or a "
        ".keras path to fine-tune. Protocol default: digits_cnn_large "
        "(digits), resnet32x4 (cifar), fashion_cnn_large (fashion).",
    )
    run(train_teacher_main)
