"""fit on models that branch, keep state or draw randomness: they learn, resume, refuse."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_trees_close

import jaxbp
from jaxbp import datasets
from jaxbp import layers as L
from jaxbp.layers import init_state
from jaxbp.train import CHECKPOINT_NAME, fit

KEY = jax.random.PRNGKey(3)


@pytest.fixture(scope="module")
def digits():
    (x, y), (xt, yt) = datasets.load("digits")
    return (x[:640], y[:640]), (xt, yt)


def _fit(model, data, epochs=6, **given):
    _, params = model.init(jax.random.PRNGKey(0), (64,))
    state = init_state(model, params)
    options = {"optimizer": optax.adam(3e-3), "batch_size": 32, "key": KEY, "progress": False}
    options |= {"eval_data": data[1]} | ({"state": state} if jax.tree.leaves(state) else {})
    options |= given
    return fit(model, jaxbp.softmax_cross_entropy, params, data[0], epochs=epochs, **options)


@pytest.mark.parametrize("name", ["residual", "branched", "batchnorm", "dropout"])
def test_every_new_kind_of_model_learns_digits(name, digits):
    out = _fit(L.preset(name, 10), digits)
    history = out[-1]
    # 640 training images, 6 epochs, 360 test images: chance is 10%; the bound 80% leaves room
    # for another CPU's float32 rounding to move a trajectory by a few points.
    assert history["eval_accuracy"][-1] > 0.8, history["eval_accuracy"]
    assert history["loss"][-1] < 0.3 * history["loss"][0]


def test_batchnorm_state_is_trained_returned_and_used_in_evaluation(digits):
    model = L.mlp([32, 10], "relu", batch_norm=True)
    params, state, history = _fit(model, digits, epochs=2)
    start = init_state(model, params)
    assert float(jnp.abs(state[1]["mean"] - start[1]["mean"]).max()) > 1e-3
    # Evaluation reads the running statistics: the reported eval loss is the one they give.
    x, y = digits[1]
    y_pred = L.forward_state(L.eval_mode(model), params, state, jnp.asarray(x))[0]
    value = float(jaxbp.softmax_cross_entropy.apply(y_pred, jnp.asarray(y)))
    # float32 mean over 360 test rows, summed in possibly another order: a few ulps, so 1e-5.
    assert abs(value - history["eval_loss"][-1]) <= 1e-5 * value


def test_a_model_with_state_needs_state(digits):
    model = L.mlp([8, 10], "relu", batch_norm=True)
    _, params = model.init(KEY, (64,))
    with pytest.raises(
        ValueError, match=r"fit: the model keeps state \(layer \[1\] BatchNorm\(.*pass state="
    ):
        fit(model, jaxbp.softmax_cross_entropy, params, digits[0], optimizer=optax.sgd(0.1),
            epochs=1, batch_size=32, key=KEY)  # fmt: skip


def test_resume_carries_the_state(digits, tmp_path):
    model = L.preset("residual-bn", 10)
    whole = _fit(model, digits, epochs=4)
    first = _fit(model, digits, epochs=2, checkpoint_dir=tmp_path)
    assert len(first[2]["loss"]) == 2
    resumed = _fit(model, digits, epochs=4, checkpoint_dir=tmp_path, resume=True)
    # The same program on the same machine, run in two pieces: the same bits.
    assert_trees_close(resumed[:2], whole[:2], rtol=0, what="params and state")
    assert resumed[2]["loss"] == whole[2]["loss"]
    saved = np.load(tmp_path / CHECKPOINT_NAME)
    assert any(name.startswith("['state']") for name in saved.files), saved.files


def test_embedding_ids_out_of_range_are_refused_before_training():
    model = L.serial(L.Embedding(10, 4), L.Flatten(), L.Dense(3))
    _, params = model.init(KEY, (5,))
    x = np.arange(20, dtype=np.int32).reshape(4, 5) % 12  # ids 10 and 11 are out of range
    y = np.arange(4) % 3
    with pytest.raises(ValueError, match=r"train_data: x: Embedding.*0\.\.9.*largest 11"):
        fit(model, jaxbp.softmax_cross_entropy, params, (x, y), optimizer=optax.sgd(0.1),
            epochs=1, batch_size=4, key=KEY)  # fmt: skip
    params, history = fit(model, jaxbp.softmax_cross_entropy, params, (x % 10, y),
                          optimizer=optax.sgd(0.1), epochs=2, batch_size=4, key=KEY)  # fmt: skip
    assert np.isfinite(history["loss"]).all()


@pytest.mark.parametrize(
    "model", [L.cnn(3, (4, 6), 8), L.resnet(3, (4, 6), 1)], ids=["cnn", "resnet"]
)
def test_vision_models_backprop_matches_autodiff_float64(model, x64):
    _, params = model.init(KEY, (8, 8, 1))
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    state = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), init_state(model, params))
    x = jax.random.normal(KEY, (5, 8, 8, 1), jnp.float64)
    y = jnp.arange(5) % 3
    run = jax.jit(lambda f, p: f(model, jaxbp.softmax_cross_entropy, p, x, y, state=state),
                  static_argnums=0)  # fmt: skip
    value, grads, new_state = run(jaxbp.backprop, params)
    ref_value, ref_grads, ref_state = run(jaxbp.autodiff, params)
    # Relative to the whole gradient: a bias just before BatchNorm has an exactly-zero gradient.
    flat = [jnp.concatenate([g.ravel() for g in jax.tree.leaves(t)]) for t in (grads, ref_grads)]
    assert float(jnp.linalg.norm(flat[0] - flat[1])) <= 1e-12 * float(jnp.linalg.norm(flat[1]))
    assert abs(float(value - ref_value)) <= 1e-12 * abs(float(ref_value))
    assert_trees_close(new_state, ref_state, rtol=1e-12, what="state")
