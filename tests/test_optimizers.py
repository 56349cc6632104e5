"""keras_kd.optimizers: PyTorch's coupled L2 over every trained variable."""

import keras
import numpy as np
import pytest

import keras_kd as kd
from tests.helpers import small_cnn
from tests.helpers import sparse_ce

pytestmark = pytest.mark.multi_backend


def torch_sgd(params, grads_per_step, lr, momentum, wd):
    """torch.optim.SGD's step (no dampening, not Nesterov), in NumPy."""
    params = [p.astype("float64") for p in params]
    bufs = [None] * len(params)
    for grads in grads_per_step:
        for i, (p, g) in enumerate(zip(params, grads)):
            d = g + wd * p
            bufs[i] = d if bufs[i] is None else momentum * bufs[i] + d
            params[i] = p - lr * bufs[i]
    return params


def test_sgd_steps_match_torch_sgd_with_weight_decay():
    rng = np.random.default_rng(0)
    shapes = [(3, 3, 2, 4), (4,), (4,), (5, 3)]  # kernel, γ, β, dense.
    init = [rng.normal(size=s).astype("float32") for s in shapes]
    grads = [[rng.normal(size=s).astype("float32") for s in shapes] for _ in range(3)]
    variables = [keras.Variable(v) for v in init]
    optimizer = kd.optimizers.SGD(0.05, momentum=0.9, l2=5e-4)
    for step in grads:
        optimizer.apply_gradients(zip(step, variables))
    expected = torch_sgd(init, grads, 0.05, 0.9, 5e-4)
    for v, e in zip(variables, expected):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), e, atol=1e-6)
    # The decay matters at this tolerance: without it the result differs.
    plain = torch_sgd(init, grads, 0.05, 0.9, 0.0)
    assert max(np.abs(p - e).max() for p, e in zip(plain, expected)) > 1e-5
    config = optimizer.get_config()
    assert config["l2"] == 5e-4
    assert kd.optimizers.SGD.from_config(config).l2 == 5e-4


def test_adam_adds_the_decay_to_the_gradient():
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(4,)).astype("float32")
    g = rng.normal(size=(4,)).astype("float32")
    a = keras.Variable(w0)
    b = keras.Variable(w0)
    tensor = keras.ops.convert_to_tensor
    kd.optimizers.Adam(1e-2, l2=0.1).apply_gradients([(tensor(g), a)])
    keras.optimizers.Adam(1e-2).apply_gradients([(tensor(g + 0.1 * w0), b)])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), atol=1e-7
    )
    with pytest.raises(ValueError, match="l2"):
        kd.optimizers.SGD(0.1, l2=-1.0)


def _distiller(seed):
    keras.utils.set_random_seed(seed)
    teacher = small_cnn(8, name="teacher")
    student = small_cnn(4, name="student")
    teacher.trainable = False
    term = kd.losses.FeatureAlignment("stage2", "stage2", aligner="linear", name="fa")
    return kd.Distiller(
        teacher,
        student,
        [kd.losses.LogitsDistillation(4.0), term],
        distillation_loss_weights=[1.0, 10.0],
        student_loss_weight=1.0,
        weighting="additive",
    )


def _one_step(l2):
    distiller = _distiller(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=(8,))
    distiller(x)
    distiller.compile(
        optimizer=kd.optimizers.SGD(0.1, momentum=0.9, l2=l2), loss=sparse_ce()
    )
    # Indices, not paths: a second build numbers the layers anew.
    variables = list(distiller.variables)
    ids = {id(v): i for i, v in enumerate(variables)}
    before = [keras.ops.convert_to_numpy(v) for v in variables]
    groups = {
        "trainable": {ids[id(v)] for v in distiller.trainable_variables},
        "student": {ids[id(v)] for v in distiller.student.trainable_variables},
        "teacher": {ids[id(v)] for v in distiller.teacher.variables},
    }
    names = [v.path for v in variables]
    distiller.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    after = [keras.ops.convert_to_numpy(v) for v in variables]
    return names, before, after, groups


def test_decay_covers_exactly_the_student_and_term_variables():
    names, before, decayed, groups = _one_step(5e-4)
    _, _, plain, _ = _one_step(0.0)
    trainable, student, teacher = (
        groups["trainable"],
        groups["student"],
        groups["teacher"],
    )
    heads = trainable - student
    # The term's head (1x1 conv + BN: kernel, bias, γ, β) is trained too.
    assert heads and not heads & teacher
    assert any("gamma" in names[i] for i in heads)
    assert any("beta" in names[i] for i in student)
    for i, w0 in enumerate(before):
        # First step from the same state: the decay moves each trained
        # variable by exactly −lr·l2·w0 more than plain SGD.
        diff = decayed[i] - plain[i]
        if i in trainable:
            np.testing.assert_allclose(
                diff, -0.1 * 5e-4 * w0, atol=2e-7, err_msg=names[i]
            )
            if np.abs(w0).max() > 0.5:
                assert np.abs(diff).max() > 1e-5, names[i]
        else:  # Teacher weights and BN moving statistics: not decayed.
            np.testing.assert_allclose(diff, 0.0, atol=1e-7, err_msg=names[i])
    for i in teacher:
        np.testing.assert_array_equal(decayed[i], before[i])
