"""fit: compiled epochs, determinism, both engines, checkpoints, divergence, and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import compile_records, np_forward, np_loss

from jaxbp import checkpoint, datasets, mlp, softmax_cross_entropy
from jaxbp.losses import mse
from jaxbp.train import CHECKPOINT_NAME, TrainingDiverged, fit

KEY = jax.random.PRNGKey(42)


@pytest.fixture(scope="module")
def moons():
    (x, y), (xt, yt) = datasets.load("moons", n_train=200, n_test=100)
    return (x, y), (xt, yt)


def _run(data, epochs=3, **options):
    model = mlp([16, 2], "tanh")
    _, params = model.init(jax.random.PRNGKey(0), (2,))
    options = {
        "optimizer": optax.adam(1e-2),
        "batch_size": 32,
        "key": KEY,
        "progress": False,
    } | options
    return fit(model, softmax_cross_entropy, params, data[0], epochs=epochs, **options)


def test_learns_and_reports_eval_metrics(moons):
    params, history = _run(moons, epochs=30, eval_data=moons[1])
    assert len(history["loss"]) == len(history["eval_accuracy"]) == 30
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["eval_accuracy"][-1] > 0.85


def _binary(n=64):
    """Two inputs, one 0/1 target column: MSE on it is scored as right or wrong by default."""
    x = jax.random.normal(jax.random.PRNGKey(3), (n, 2))
    return x, (x[:, :1] > 0).astype(jnp.float32)


def _fit_mse(data, **options):
    model = mlp([4, 1], "tanh")
    _, params = model.init(jax.random.PRNGKey(0), (2,))
    return fit(
        model, mse, params, data, optimizer=optax.sgd(0.1), epochs=2, batch_size=16, key=KEY,
        progress=False, eval_data=data, **options,
    )  # fmt: skip


def test_accuracy_is_inferred_turned_off_or_required():
    data = _binary()
    assert len(_fit_mse(data)[1]["eval_accuracy"]) == 2  # 0/1 targets: scored by default
    history = _fit_mse(data, accuracy=False)[1]
    assert "eval_accuracy" not in history and len(history["eval_loss"]) == 2
    assert len(_fit_mse(data, accuracy=True)[1]["eval_accuracy"]) == 2


def test_bad_accuracy_option_is_refused_before_training():
    x, y = _binary()
    with pytest.raises(ValueError, match="accuracy=True, but mse on these eval labels"):
        _fit_mse((x, y + 0.5), accuracy=True)
    with pytest.raises(TypeError, match="accuracy must be True, False or None, got 'yes'"):
        _fit_mse((x, y), accuracy="yes")
    model = mlp([4, 1], "tanh")
    _, params = model.init(jax.random.PRNGKey(0), (2,))
    with pytest.raises(ValueError, match="accuracy=True scores eval_data"):
        fit(model, mse, params, (x, y), optimizer=optax.sgd(0.1), epochs=1, batch_size=16,
            key=KEY, progress=False, accuracy=True)  # fmt: skip


def test_same_key_same_bits_and_another_key_differs(moons):
    a, _ = _run(moons)
    b, _ = _run(moons)
    c, _ = _run(moons, key=jax.random.PRNGKey(7))
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.array_equal(u, v)
    assert not np.array_equal(a[0]["W"], c[0]["W"])


def test_backprop_and_autodiff_engines_reach_the_same_parameters(moons):
    sgd = optax.sgd(0.1)
    a, _ = _run(moons, epochs=2, grad="backprop", optimizer=sgd)
    b, _ = _run(moons, epochs=2, grad="autodiff", optimizer=sgd)
    # SGD, not Adam: Adam's step lr m / sqrt(v) is scale-free, so on an entry whose gradient is
    # ~0 by cancellation a rounding difference of the engines can flip its sign, a whole lr apart.
    # SGD passes on the absolute difference. Each engine's batch-mean gradient is good to
    # (31 + 5) u of the mean of the 32 examples' |g_i| (a float32 sum of 32, a few ulps in each
    # term; u = 6e-8), and those are at most 0.9 here (|p - y| <= 1 at the output): the two
    # differ by <= 72 u 0.9 = 3.9e-6 a step, 12 steps of lr 0.1 give 4.7e-6 per weight; 1e-5
    # leaves 2x for the trajectory to amplify it. A wrong rule is off by ~lr |g| ~ 1e-2 a step.
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=0, atol=1e-5, err_msg="engines")


def test_no_recompilation_across_epochs(moons):
    after_epoch = {}
    with compile_records() as records:
        jax.clear_caches()  # from cold caches, whatever ran before in this process
        _run(moons, epochs=4, eval_data=moons[1],
             on_epoch=lambda epoch, _: after_epoch.setdefault(epoch, len(records)))  # fmt: skip
    # The first epoch compiles the epoch and the evaluation; epochs 2-4 compile nothing.
    assert after_epoch[1] > 0 and after_epoch[1] == after_epoch[4] == len(records), after_epoch


def test_partial_batch_policy(moons):
    (x, y), _ = moons
    model = mlp([3, 2], "tanh")
    _, params = model.init(jax.random.PRNGKey(0), (2,))
    # An "optimizer" that adds exactly 1 to every weight per step: the weights count the steps.
    count = optax.GradientTransformation(
        lambda p: optax.EmptyState(), lambda g, s, p=None: (jax.tree.map(jnp.ones_like, g), s)
    )
    moved, history = fit(
        model,
        softmax_cross_entropy,
        params,
        (x[:70], y[:70]),
        optimizer=count,
        epochs=3,
        batch_size=32,
        key=KEY,
        progress=False,
    )
    # floor(70 / 32) = 2 steps an epoch, the 6 left over sit out: 6 steps in 3 epochs. float32:
    # six additions of 1 to weights below 8 in size round by at most 6 ulps of 8 (6e-6).
    for before, after in zip(jax.tree.leaves(params), jax.tree.leaves(moved)):
        np.testing.assert_allclose(after - before, 6.0, atol=1e-5)
    assert len(history["loss"]) == 3 and np.all(np.isfinite(history["loss"]))
    sgd = optax.sgd(0.0)  # no movement: the loss is the initial parameters'
    # A batch larger than the data becomes the whole data: one full-batch step.
    _, history = fit(
        model,
        softmax_cross_entropy,
        params,
        (x[:10], y[:10]),
        optimizer=sgd,
        epochs=1,
        batch_size=64,
        key=KEY,
        progress=False,
    )
    full = np_loss("softmax_cross_entropy", np_forward(model, params, x[:10]), y[:10])[0]
    # float32 against the float64 formula. Each logit (|z| <= 1.1) is good to ~11 eps of the sum
    # of its terms' magnitudes (~1.5): 2 + 3 products and sums, XLA's tanh (~3 eps); the loss
    # takes it on at most twice (its gradient in z has L1 norm <= 2) plus ~4 eps of its own exp,
    # sum and log: 37 eps = 4.4e-6 of a loss of 0.65, 6.8e-6 relative, under 1e-5. A batch that
    # repeats or drops an example moves it by (its loss - the mean) / 10, ~1e-2.
    assert history["loss"][0] == pytest.approx(full, rel=1e-5)


def test_resume_reaches_the_uninterrupted_parameters(moons, tmp_path):
    whole, _ = _run(moons, epochs=6, checkpoint_dir=tmp_path / "a")
    _run(moons, epochs=4, checkpoint_dir=tmp_path / "b", checkpoint_every=2)
    resumed, history = _run(moons, epochs=6, checkpoint_dir=tmp_path / "b", resume=True)
    assert len(history["loss"]) == 6
    for u, v in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
        assert np.array_equal(u, v)
    with pytest.raises(ValueError, match="different key"):
        _run(moons, epochs=6, checkpoint_dir=tmp_path / "b", resume=True, key=jax.random.PRNGKey(1))


def test_divergence_stops_and_keeps_the_last_good_checkpoint(moons, tmp_path):
    # A sane rate for 3 epochs' worth of steps (6 per epoch), then NaN.
    def lr(count):
        return jnp.where(count < 18, 1e-2, jnp.nan)

    with pytest.raises(
        TrainingDiverged, match=r"became (nan|inf) in epoch 4.*epoch 3.*checkpoint"
    ) as info:
        _run(moons, epochs=8, optimizer=optax.sgd(lr), checkpoint_dir=tmp_path)
    assert len(info.value.history["loss"]) == 3
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(info.value.params))
    _, metadata = checkpoint.load(tmp_path / CHECKPOINT_NAME)
    assert metadata["epoch"] == 3


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda x, y: (x[:10], y[:9]), ValueError, "10 examples but y has 9"),
        (lambda x, y: (x.at[3, 1].set(jnp.nan), y), ValueError, "1 NaN or inf"),
        (lambda x, y: (x, y.at[0].set(5)), ValueError, r"labels span \[0, 5\].*2 outputs"),
        (lambda x, y: (x[:0], y[:0]), ValueError, "empty"),
        (lambda x, y: [x], TypeError, "pair"),
    ],
)
def test_bad_data_is_refused_before_compiling(moons, change, error, match):
    (x, y), _ = moons
    data = change(jnp.asarray(x), jnp.asarray(y))
    with pytest.raises(error, match=match):
        _run((data, None))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"epochs": 0}, "epochs must be positive"),
        ({"batch_size": -1}, "batch_size must be positive"),
        ({"grad": "numeric"}, "unknown gradient engine 'numeric'"),
    ],
)
def test_bad_settings_are_refused(moons, options, match):
    with pytest.raises(ValueError, match=match):
        _run(moons, **options)


def test_eval_data_is_validated_too(moons):
    (x, y), _ = moons
    with pytest.raises(ValueError, match="eval_data: x has 5 examples but y has 4"):
        _run(moons, eval_data=(x[:5], y[:4]))


def test_regression_and_custom_engine(key):
    x = jax.random.normal(key, (64, 3))
    y = x @ jnp.array([[1.0], [-2.0], [0.5]])
    model = mlp([1])
    _, params = model.init(key, (3,))
    calls = []

    def engine(model, loss, params, x, y, *, key=None):
        calls.append(1)  # traced once: the engine runs inside the compiled epoch
        return jax.value_and_grad(lambda p: loss.apply(model.apply(p, x), y))(params)

    params, history = fit(
        model,
        mse,
        params,
        (x, y),
        optimizer=optax.sgd(0.1),
        epochs=30,
        batch_size=16,
        key=key,
        grad=engine,
        progress=False,
    )
    assert len(calls) == 1 and history["loss"][-1] < 1e-3
