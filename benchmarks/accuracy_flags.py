"""The command-line flags of `benchmarks/accuracy.py`.

Defined only when accuracy.py runs as a script (or a test asks), so that
its modules can be imported beside other absl programs:

```python
from accuracy_flags import define_flags
define_flags()
```
"""

import os

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def define_flags():
    """The command-line flags (defined only when run as a script, so the
    module can be imported beside other absl programs)."""
    flags.DEFINE_enum("suite", "cpu", ["cpu", "cifar"], "Which suite to run.")
    flags.DEFINE_list(
        "methods",
        None,
        "Methods (recipes' --method names; default: every method the recipes "
        "know). The student alone is always reported, from the kd runs.",
    )
    flags.DEFINE_list("seeds", ["0", "1"], "Seeds; each method runs once each.")
    flags.DEFINE_integer(
        "epochs",
        None,
        "Student epochs (default: the recipes' protocol's, 240 cifar; the "
        "Fashion-MNIST subset uses --fashion_epochs).",
    )
    flags.DEFINE_integer(
        "teacher_epochs", None, "Teacher epochs (default: 30 digits, --epochs cifar)."
    )
    flags.DEFINE_list(
        "datasets",
        ["digits", "fashion_mnist"],
        "cpu suite: which of digits, fashion_mnist to run.",
    )
    flags.DEFINE_string(
        "fashion_mnist",
        None,
        "cpu suite: folder with Fashion-MNIST's train.npz/test.npz (e.g. "
        "../shared/data/fashion_mnist); omitted: digits only.",
    )
    flags.DEFINE_integer(
        "fashion_train",
        20000,
        "Fashion-MNIST: training images, a class-stratified subset of the "
        "60,000 (fixed seed 0); 60000 takes them all.",
    )
    flags.DEFINE_integer(
        "fashion_val",
        5000,
        "Fashion-MNIST: validation images, class-stratified, carved from the "
        "training images the subset leaves out (from the subset when it "
        "takes all 60,000); used for every choice (--tune), never test.",
    )
    flags.DEFINE_enum(
        "fashion_protocol",
        "digits",
        ["digits", "fashion", "reffakd_fashion"],
        "Fashion-MNIST: the recipes' protocol: digits (Adam 3e-3, no "
        "augmentation, --fashion_batch_size; unset --fashion_epochs, "
        "--fashion_teacher_epochs: 2, 3), fashion (converged; unset: its "
        "epochs; its batch size; keras_kd.cli.protocols) or "
        "reffakd_fashion (ReffAKD's notebooks: 32x32, LeNet-5 with batch "
        "norm; --fashion_epochs for teachers, students and the "
        "autoencoder, 200 unset).",
    )
    flags.DEFINE_integer("fashion_epochs", None, "Fashion-MNIST student epochs.")
    flags.DEFINE_integer("fashion_teacher_epochs", None, "Fashion teacher epochs.")
    flags.DEFINE_integer(
        "fashion_batch_size", 128, "Fashion-MNIST batch size (digits protocol, Adam)."
    )
    flags.DEFINE_bool(
        "with_kd",
        True,
        "Run the kd runs (teachers, student alone) first. --nowith_kd: "
        "another process runs them in the same --work_dir; this one waits "
        "for their teachers (a suite in parts, merged with --merge).",
    )
    flags.DEFINE_bool(
        "tune",
        False,
        "First choose each method's term weights (accuracy_suites."
        "tune_points: the protocol's or preset's ×1, ×0.1, ×10; ReffAKD's "
        "(T, α) on reffakd_fashion) by "
        "last-epoch accuracy on a validation split carved from the "
        "training data (digits: --digits_val images; Fashion-MNIST: "
        "--fashion_val), then run --seeds with the chosen weights and "
        "report their test accuracy. The sweep's runs are the suite's "
        "(folders tagged _<label>, e.g. _x0.1); it goes to the JSON.",
    )
    flags.DEFINE_list("tune_seeds", ["0"], "--tune: seeds of the sweep.")
    flags.DEFINE_list(
        "weights",
        [],
        "Without --tune: term weights chosen earlier, as method=label of "
        "its --tune grid (fa=x0.01, dlkd=x0.1; accuracy_suites."
        "chosen_weights); the runs take that point's flags and folders.",
    )
    flags.DEFINE_string(
        "store_dir",
        None,
        "A folder (in the repository) that keeps every finished run's "
        "record and each seed's teacher file (accuracy_store): a run found "
        "there is not run again, so a suite resumes on another machine "
        "from what was committed.",
    )
    flags.DEFINE_integer(
        "tune_extend", 2, "--tune: most points added past a winning grid edge."
    )
    flags.DEFINE_integer(
        "digits_val", 300, "--tune on digits: validation images (stratified)."
    )
    flags.DEFINE_string(
        "part",
        None,
        "A name for this part of a suite run in parts (added to the file names).",
    )
    flags.DEFINE_list(
        "merge",
        None,
        "Merge these JSON files (parts of one suite: runs of the same "
        "datasets) into --output_dir and exit.",
    )
    flags.DEFINE_string(
        "cifar_dataset",
        None,
        "cifar suite: the recipes' --dataset (cifar100, or npz:PATH).",
    )
    flags.DEFINE_string("data_dir", None, "tensorflow-datasets directory.")
    flags.DEFINE_string(
        "output_dir",
        os.path.join(ROOT, "benchmarks", "results"),
        "Where the table, JSON and plot go.",
    )
    flags.DEFINE_string(
        "work_dir", "/tmp/keras_kd_accuracy", "Where the runs (checkpoints, logs) go."
    )
    flags.DEFINE_list(
        "extra_flags", [], "More flags for every recipe run, e.g. --jit_compile."
    )
    flags.DEFINE_bool(
        "store_only",
        False,
        "Train nothing: take every run from --store_dir and leave out (and "
        "log) what is not there yet, e.g. to render a suite in progress. A "
        "--tune sweep then chooses among its stored points and lists the "
        "others as not run.",
    )
    flags.DEFINE_string(
        "report_from",
        None,
        "Rewrite the table and plot of an earlier run's JSON and exit.",
    )
    flags.DEFINE_string(
        "note",
        None,
        "With --report_from: a note to add to the JSON and the table (e.g. "
        "what changed during the run).",
    )
