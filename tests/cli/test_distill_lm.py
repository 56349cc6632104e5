"""`recipes/distill_lm.py`: the corpus, the perplexity, the methods, the
resumable phases and a tiny run end to end (TensorFlow subprocesses, like
tests/cli/test_recipes.py)."""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import numpy_log_softmax

keras_hub = pytest.importorskip("keras_hub")

import keras_kd as kd  # noqa: E402
from keras_kd import Distiller  # noqa: E402
from keras_kd.cli import distill_lm  # noqa: E402
from keras_kd.cli import lm_corpus  # noqa: E402
from keras_kd.cli import lm_topk  # noqa: E402
from keras_kd.cli import lm_training  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = [
    "--max_train_tokens=6000",
    "--max_eval_tokens=1500",
    "--sequence_length=32",
    "--batch_size=16",
    "--epochs=1",
    "--teacher_epochs=2",
    "--teacher_layers=1",
    "--teacher_width=32",
    "--student_layers=1",
    "--student_width=16",
]


def recipe(*args, check=True):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "recipes", "distill_lm.py"), *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=ROOT,
    )
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def random_batches(seed=0, rows=5, length=8):
    rng = np.random.default_rng(seed)
    windows = rng.integers(0, 257, (rows, length + 1)).astype("int32")
    mask = np.ones_like(windows, bool)
    mask[1, 4:] = False
    mask[3] = False
    return lm_corpus.TokenBatches(windows, mask, batch_size=2, shuffle=False)


def test_perplexity_is_exp_of_the_mean_nll_of_real_tokens():
    model = lm_training.gpt2(1, 32, 8, "lm", seed=0)
    batches = random_batches()
    nll, count = [], 0
    for i in range(len(batches)):
        x, y, w = batches[i]
        log_p = numpy_log_softmax(keras.ops.convert_to_numpy(model(x)).astype("f8"))
        token = -np.take_along_axis(log_p, y[..., None], -1)[..., 0]
        nll.append(token[w > 0])
        count += int((w > 0).sum())
    expected = float(np.concatenate(nll).mean())
    ppl, mean, tokens = lm_training.perplexity(model, batches)
    assert tokens == count == 8 * 3 + 3  # Row 1: 3 labels; row 3: none.
    np.testing.assert_allclose(mean, expected, rtol=1e-5)
    np.testing.assert_allclose(ppl, math.exp(expected), rtol=1e-5)


def test_the_corpus_is_deterministic_and_its_splits_disjoint():
    files = lm_corpus.stdlib_files()
    assert files == sorted(files) and "os.py" in files
    skipped = ("test/", "site-packages/", "pydoc_data/")
    assert not any(p.startswith(skipped) for p in files)
    budgets = {"train": 3000, "validation": 500, "test": 500}
    corpus = lm_corpus.load_corpus(budgets)
    again = lm_corpus.load_corpus(budgets)
    assert corpus.fingerprint == again.fingerprint
    for split in lm_corpus.SPLITS:
        np.testing.assert_array_equal(corpus.tokens[split], again.tokens[split])
        assert len(corpus.tokens[split]) == budgets[split]
        assert all(lm_corpus.file_split(p) == split for p in corpus.files[split])
    assert not set(corpus.files["train"]) & set(corpus.files["test"])
    first = corpus.files["train"][0]
    with open(os.path.join(corpus.root, first), "rb") as f:
        data = np.frombuffer(f.read(), np.uint8)[:3000]
    np.testing.assert_array_equal(corpus.tokens["train"][: len(data)], data)
    bigger = lm_corpus.load_corpus(dict(budgets, train=4000))
    assert bigger.fingerprint != corpus.fingerprint


def test_windows_and_batches():
    windows, mask = lm_corpus.pack(np.arange(10, dtype="int32"), 4)
    np.testing.assert_array_equal(windows, [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    windows, mask = lm_corpus.pack(np.arange(7, dtype="int32"), 4)
    assert windows[1, 2] == lm_corpus.END_TOKEN and mask.sum() == 7
    windows, mask = lm_corpus.pack(np.arange(90, dtype="int32") % 256, 8)
    batches = lm_corpus.TokenBatches(windows, mask, batch_size=4, seed=1)
    x, y, w = batches[0]
    np.testing.assert_array_equal(y[:, :-1], x["token_ids"][:, 1:])
    assert x["token_ids"].shape == (4, 8) and w.dtype == np.float32
    first_epoch = [batches[i][1] for i in range(len(batches))]
    batches.on_epoch_end()
    resumed = lm_corpus.TokenBatches(windows, mask, 4, seed=1, first_epoch=1)
    np.testing.assert_array_equal(batches[0][1], resumed[0][1])
    assert not np.array_equal(batches[0][1], first_epoch[0])


def test_the_student_trains_on_the_start_of_the_teachers_stream():
    budgets = {"train": 1000, "validation": 100, "test": 100}
    corpus = lm_corpus.load_corpus(budgets)
    windows = lm_corpus.split_windows(corpus, 9, student_train_tokens=300)
    teacher, teacher_mask = windows["teacher_train"]
    student, student_mask = windows["train"]
    assert teacher_mask.sum() == 1000 and student_mask.sum() == 300
    assert len(teacher) == 100 and len(student) == 30  # 10-token windows.
    np.testing.assert_array_equal(student, teacher[:30])
    np.testing.assert_array_equal(
        windows["test"][0].ravel(), corpus.tokens["test"].reshape(-1)
    )


@pytest.mark.parametrize("method", ["kd", "reverse_kl", "jsd", "kd+hidden"])
def test_each_method_builds_and_trains(method):
    teacher = lm_training.gpt2(2, 32, 8, "teacher", seed=0)
    student = lm_training.gpt2(1, 16, 8, "student", seed=1)
    terms, weights = distill_lm.build_terms(method, teacher, student, beta=0.3)
    assert len(terms) == (2 if method == "kd+hidden" else 1)
    distiller = Distiller(teacher, student, terms, weights, student_loss_weight=0.5)
    lm_training.compile_lm(distiller, 1e-3, 10)
    x, y, w = random_batches()[0]
    logs = distiller.train_on_batch(x, y, sample_weight=w, return_dict=True)
    assert all(np.isfinite(v) for v in logs.values())
    assert logs["logits_distillation"] > 0


def test_topk_records_the_teacher_and_replays_it(tmp_path):
    teacher = lm_training.gpt2(2, 32, 8, "teacher", seed=0)
    student = lm_training.gpt2(1, 16, 8, "student", seed=1)
    windows = lm_corpus.pack(np.arange(200, dtype="int32") % 256, 8)
    path = str(tmp_path / "cache")
    manifest = lm_topk.record(teacher, windows, "toy", path, top_k=4)
    assert manifest["complete"] and manifest["storage"]["top_k"] == 4
    terms, weights = distill_lm.build_terms("topk", teacher, student)
    distiller = Distiller(
        kd.offline.RecordedTeacher(path), student, terms, weights, 0.5
    )
    lm_training.compile_lm(distiller, 1e-3, 10)
    batches = lm_topk.ReplayEpochs(windows, path, "toy", 8, epochs=2, teacher=teacher)
    plain = lm_corpus.TokenBatches(*windows, 8, seed=0)
    assert len(batches) == len(plain) == 3
    x, y, w = batches[1]
    np.testing.assert_array_equal(y, plain[1][1])  # The same batch order.
    logs = distiller.train_on_batch(x, y, sample_weight=w, return_dict=True)
    assert np.isfinite(logs["sparse_kl_distillation"])
    batches.on_epoch_end()
    plain.on_epoch_end()
    np.testing.assert_array_equal(batches[0][1], plain[0][1])
    other = lm_training.gpt2(2, 32, 8, "teacher", seed=5)
    with pytest.raises(ValueError, match="teacher weights"):
        lm_topk.ReplayEpochs(windows, path, "toy", 8, epochs=2, teacher=other)


class _Crashing(lm_corpus.TokenBatches):
    """Batches that fail on the first batch of epoch `crash_epoch`."""

    crash_epoch = None

    def __getitem__(self, index):
        if self.epoch == self.crash_epoch:
            raise KeyboardInterrupt
        return super().__getitem__(index)


def test_a_killed_phase_resumes_to_the_same_weights(tmp_path):
    windows, mask = lm_corpus.pack(np.arange(300, dtype="int32") % 256, 8)

    def train(out, crash_epoch=None):
        model = lm_training.gpt2(1, 16, 8, "lm", seed=0)
        lm_training.compile_lm(model, 1e-2, 3 * 5)
        model.run_eagerly = True  # Four fits: tracing each would cost more.

        def make(first_epoch):
            batches = _Crashing(windows, mask, 8, seed=0, first_epoch=first_epoch)
            batches.crash_epoch = crash_epoch
            return batches

        result = lm_training.fit_phase("p", model, make, 3, out, log=None)
        return model, result

    straight, _ = train(str(tmp_path / "a"))
    with pytest.raises(KeyboardInterrupt):
        train(str(tmp_path / "b"), crash_epoch=2)
    resumed, result = train(str(tmp_path / "b"))
    assert result["resumed_at_epoch"] == 2 and result["epochs"] == 3
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    loaded, again = train(str(tmp_path / "b"), crash_epoch=0)  # Not retrained.
    assert again == result
    for a, b in zip(resumed.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("distill_lm") / "run")
    args = [*TINY, "--teacher_train_tokens=9000", f"--output_dir={out}"]
    return out, args, recipe(*args)


@pytest.mark.slow  # Recipe subprocesses: the slow step.
def test_tiny_run_reports_three_perplexities(tiny_run):
    out, _, result = tiny_run
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    models = results["models"]
    assert set(models) == {"teacher", "student_alone", "distilled"}
    for entry in models.values():
        assert np.isfinite(entry["perplexity"]) and entry["perplexity"] > 1
        # Every token but the first of each 33-token window is a label.
        assert entry["test_tokens"] == 1500 - math.ceil(1500 / 33)
    assert results["corpus"]["tokens"] == {
        "train": 9000,  # The teacher's; the students read the first 6000.
        "validation": 1500,
        "test": 1500,
    }
    per_epoch = {k: models[k]["train_tokens"] / models[k]["epochs"] for k in models}
    assert per_epoch["teacher"] > 1.4 * per_epoch["student_alone"]
    assert per_epoch["student_alone"] == per_epoch["distilled"]
    assert "--max_train_tokens=6000" in results["command"]
    assert results["flags"]["method"] == "kd"
    assert results["models"]["distilled"]["tokens_per_second"] > 0
    assert "student + kd" in result.stdout


@pytest.mark.slow  # Recipe subprocesses: the slow step.
def test_the_saved_student_reloads_generates_and_scores_as_reported(tiny_run):
    out, _, _ = tiny_run
    student = keras.saving.load_model(os.path.join(out, "student.keras"))
    prompt = lm_corpus.prompt_inputs("def ", 16)
    generated = student.generate(prompt, stop_token_ids=None)
    assert generated["token_ids"].shape == (1, 16)
    np.testing.assert_array_equal(generated["token_ids"][0, :4], [100, 101, 102, 32])
    budgets = {"train": 6000, "validation": 1500, "test": 1500}
    windows, mask = lm_corpus.pack(lm_corpus.load_corpus(budgets).tokens["test"], 32)
    test = lm_corpus.TokenBatches(windows, mask, 64, shuffle=False)
    with open(os.path.join(out, "results.json")) as f:
        reported = json.load(f)["models"]["distilled"]["perplexity"]
    np.testing.assert_allclose(lm_training.perplexity(student, test)[0], reported, 1e-5)


@pytest.mark.slow  # Recipe subprocesses: the slow step.
def test_rerunning_a_finished_run_retrains_nothing(tiny_run):
    out, args, _ = tiny_run
    with open(os.path.join(out, "results.json")) as f:
        before = json.load(f)["models"]
    result = recipe(*args)
    for phase in ("teacher", "student_alone", "distilled"):
        assert f"[{phase}] already trained" in result.stdout
    with open(os.path.join(out, "results.json")) as f:
        after = json.load(f)["models"]
    for key, entry in before.items():
        np.testing.assert_allclose(after[key]["perplexity"], entry["perplexity"])
    refused = recipe(*args, "--epochs=2", check=False)
    assert refused.returncode == 2 and "different flags" in refused.stderr


@pytest.mark.slow  # Recipe subprocesses: the slow step.
def test_bad_flags_are_refused_before_training(tmp_path):
    out = f"--output_dir={tmp_path / 'run'}"
    result = recipe(out, "--on_policy_fraction=0.5", "--ce_weight=0.5", check=False)
    assert result.returncode == 2 and "--ce_weight must be 0" in result.stderr
    result = recipe(out, f"--teacher={tmp_path / 'none.keras'}", check=False)
    assert result.returncode == 2 and "no such file" in result.stderr
    result = recipe(out, "--teacher_train_tokens=1000", check=False)
    assert result.returncode == 2 and "is below --max_train_tokens" in result.stderr
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.slow
def test_on_policy_jsd_with_a_loaded_teacher(tiny_run, tmp_path):
    out, _, _ = tiny_run
    teacher = os.path.join(out, "teacher.keras")
    run = str(tmp_path / "gkd")
    args = [*TINY, "--method=jsd", "--on_policy_fraction=0.5"]
    recipe(*args, f"--teacher={teacher}", "--nobaseline", f"--output_dir={run}")
    with open(os.path.join(run, "results.json")) as f:
        results = json.load(f)
    assert results["resolved"]["ce_weight"] == 0.0
    assert results["resolved"]["prompt_length"] == 16
    assert set(results["models"]) == {"teacher", "distilled"}
    assert results["models"]["teacher"]["loaded_from"] == teacher
    assert 1 < results["models"]["distilled"]["perplexity"] < 257


@pytest.mark.slow
def test_topk_run_records_once_and_refuses_another_teacher(tiny_run, tmp_path):
    out, _, _ = tiny_run
    teacher = os.path.join(out, "teacher.keras")
    cache = str(tmp_path / "cache")
    args = [*TINY, "--method=topk", f"--teacher_cache={cache}", "--top_k=8"]
    recipe(*args, f"--teacher={teacher}", "--nobaseline", f"--output_dir={tmp_path}/a")
    with open(os.path.join(tmp_path, "a", "results.json")) as f:
        results = json.load(f)
    assert results["teacher_cache"]["top_k"] == 8
    assert results["teacher_cache"]["tokens"] == 6000 - math.ceil(6000 / 33)
    assert 1 < results["models"]["distilled"]["perplexity"] < 257
    # The record is refused for another teacher (trained here, seed 1).
    other = [f"--output_dir={tmp_path}/b", "--seed=1", "--nobaseline"]
    refused = recipe(*args, *other, check=False)
    assert refused.returncode == 2 and "--teacher_cache" in refused.stderr
