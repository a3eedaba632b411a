"""Per-layer signals against jax.grad through a model split at every layer, under jit and vmap."""

from __future__ import annotations

import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close, np_forward, np_loss, rel_error

import jaxbp
from jaxbp import layers as L
from jaxbp import losses
from jaxbp.signals import LayerSignals, backprop_with_signals, signal_stats, to_floats


def _tanh_sigmoid_mse(rng):
    y = rng.uniform(size=(6, 3))
    return L.mlp([5, 4, 3], "tanh", "sigmoid"), losses.mse, (4,), y


def _flatten_gelu_softmax_ce(rng):
    y = rng.integers(0, 4, size=6)
    model = L.serial(L.Flatten(), L.Dense(8), L.Gelu(), L.Dense(4))
    return model, losses.softmax_cross_entropy, (2, 3), y


def _elu_bce(rng):
    y = rng.integers(0, 2, size=(6, 1)).astype(np.float64)
    return L.mlp([5, 4, 1], "elu"), losses.binary_cross_entropy, (3,), y


CASES = [_tanh_sigmoid_mse, _flatten_gelu_softmax_ce, _elu_bce]


def _problem(case, seed=0):
    """float64 params (biases too, so none is trivially zero), inputs and targets, drawn by numpy:
    eager jax.random would compile each small op on its own and dominate the tests' time."""
    rng = np.random.default_rng(seed)
    model, loss, shape, y = case(rng)
    _, shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), shape))
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) / 2), shapes)
    x = jnp.asarray(rng.normal(size=(6, *shape)))
    return model, loss, params, x, jnp.asarray(y)


def _reference(model, loss, params, x, y):
    """Outputs by layer.apply, and deltas as jax.grad of C w.r.t. a zero added to each output."""
    outputs, h = [], x
    for layer, p in zip(model.layers, params):
        h = layer.apply(p, h)
        outputs.append(h)

    def cost(eps):
        h = x
        for layer, p, e in zip(model.layers, params, eps):
            h = layer.apply(p, h) + e
        return loss.apply(h, y)

    return tuple(outputs), jax.grad(cost)(tuple(jnp.zeros_like(o) for o in outputs))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.strip("_"))
def test_deltas_are_jax_grad_of_cost_wrt_each_output_float64_under_jit(case, x64):
    model, loss, params, x, y = _problem(case)
    # Compiled whole: op-by-op dispatch would compile each small op and dominate the test's time.
    run = jax.jit(lambda p, x, y: backprop_with_signals(model, loss, p, x, y))
    value, grads, signals = run(params, x, y)
    _, deltas = jax.jit(lambda p, x, y: _reference(model, loss, p, x, y))(params, x, y)
    outputs, h = [], x  # layer by layer in NumPy/SciPy float64, sharing no code with jaxbp
    for layer, p in zip(model.layers, params, strict=True):
        h = np_forward(layer, p, h)
        outputs.append(jnp.asarray(h))
    outputs = tuple(outputs)
    assert list(signals) == [(i,) for i in range(len(model.layers))]
    assert all(isinstance(s, LayerSignals) for s in signals.values())
    # 1e-12 against float64 formulas a few operations deep; 1e-10 for deltas over <= 6 rules.
    assert_trees_close(signals[0].input, x, rtol=0, what="first input")
    assert_trees_close(
        tuple(s.output for s in signals.values()), outputs, rtol=1e-12, what="outputs"
    )
    assert_trees_close(
        tuple(s.input for s in list(signals.values())[1:]), outputs[:-1], rtol=1e-12, what="inputs"
    )
    assert_trees_close(tuple(s.delta for s in signals.values()), deltas, rtol=1e-10, what="deltas")
    ref_value, ref_grads = jax.jit(lambda p, x, y: jaxbp.backprop(model, loss, p, x, y))(
        params, x, y
    )
    assert_trees_close(value, ref_value, rtol=1e-12, what="cost")
    assert abs(float(value) - np_loss(repr(loss), outputs[-1], y)[0]) <= 1e-12 * abs(float(value))
    assert_trees_close(grads, ref_grads, rtol=1e-12, what="grads")


def test_dense_delta_is_dC_dz_and_gives_its_gradient(x64):
    model, loss, params, x, y = _problem(_tanh_sigmoid_mse)
    _, grads, signals = jax.jit(partial(backprop_with_signals, model, loss))(params, x, y)
    # The textbook identities: dW = x^T delta, db = sum over the batch of delta.
    for i in (0, 2, 4):
        s = signals[i]
        assert_trees_close(grads[i]["W"], s.input.T @ s.delta, rtol=1e-14, what=f"[{i}] W")
        assert_trees_close(grads[i]["b"], s.delta.sum(0), rtol=1e-14, what=f"[{i}] b")


def test_signals_eager_match_jit(x64):
    model, loss, params, x, y = _problem(_tanh_sigmoid_mse)
    eager = backprop_with_signals(model, loss, params, x, y)
    jitted = jax.jit(lambda p, x, y: backprop_with_signals(model, loss, p, x, y))(params, x, y)
    assert_trees_close(jitted, eager, rtol=1e-12, what="jit vs eager")


def test_per_example_signals_under_vmap(x64):
    model, loss, params, x, y = _problem(_tanh_sigmoid_mse)

    def one(xi, yi):
        return backprop_with_signals(model, loss, params, xi[None], yi[None])

    _, grads, signals = jax.jit(jax.vmap(one))(x, y)
    _, batch_grads, batch_signals = backprop_with_signals(model, loss, params, x, y)
    assert signals[0].delta.shape == (6, 1, 5)
    assert_trees_close(jax.tree.map(lambda g: g.mean(0), grads), batch_grads, rtol=1e-12)
    # C is a batch mean, so example i's own delta is m times its row of the batch delta.
    for s, b in zip(signals.values(), batch_signals.values(), strict=True):
        assert_trees_close(s.delta[:, 0] / 6, b.delta, rtol=1e-12, what="per-example deltas")


class _Noise(L.Layer):
    """A stochastic layer for the test: y = x + N(0, 1) noise drawn from the key; dx = dy."""

    def init(self, key, input_shape):
        return input_shape, ()

    def forward(self, params, x, *, key=None):
        return x + jax.random.normal(key, x.shape, x.dtype), ()

    def backward(self, params, residuals, dy):
        return (), dy


def _noisy_bce(rng):
    model = L.serial(L.Dense(4), _Noise(), L.Tanh(), L.Dense(1))
    return model, losses.binary_cross_entropy, (3,), _elu_bce(rng)[3]


def test_key_is_split_like_serial_forward(x64):
    model, loss, params, x, y = _problem(_noisy_bce)
    keys = jnp.array([[0, 0], [0, 1]], jnp.uint32)  # two raw PRNG keys, made without compiling
    ours = jax.jit(lambda k: backprop_with_signals(model, loss, params, x, y, key=k)[:2])
    theirs = jax.jit(lambda k: jaxbp.backprop(model, loss, params, x, y, key=k))
    # Two programs (XLA may fuse them differently), same noise: float64 rounding apart, while
    # noise drawn from another key would be off by O(1).
    assert_trees_close(ours(keys[0]), theirs(keys[0]), rtol=1e-12, what="same key")
    assert rel_error(theirs(keys[0]), theirs(keys[1])) > 1e-3, "the noise should follow the key"


def test_stats_are_norms_per_layer_and_json_ready(x64):
    model, loss, params, x, y = _problem(_tanh_sigmoid_mse)
    _, grads, signals = backprop_with_signals(model, loss, params, x, y)
    stats = jax.jit(signal_stats)(signals, grads)
    assert len(stats) == len(model.layers)
    for i, (layer_stats, s) in enumerate(zip(stats.values(), signals.values(), strict=True)):
        np.testing.assert_allclose(layer_stats["delta_norm"], np.linalg.norm(s.delta), rtol=1e-12)
        np.testing.assert_allclose(
            layer_stats["output_rms"], np.sqrt(np.mean(np.square(s.output))), rtol=1e-12
        )
        assert ("grad_norm" in layer_stats) == isinstance(model.layers[i], L.Dense)
    W, b = grads[2]["W"], grads[2]["b"]
    expected = np.sqrt(np.sum(np.square(W)) + np.sum(np.square(b)))
    np.testing.assert_allclose(stats[2]["grad_norm"], expected, rtol=1e-12)
    np.testing.assert_allclose(stats[2]["grad_rms"], expected / np.sqrt(W.size + b.size))
    plain = to_floats(stats)
    assert isinstance(plain["[0]"]["delta_rms"], float)
    assert json.loads(json.dumps(plain))["[4]"]["grad_norm"] == plain["[4]"]["grad_norm"]


def test_to_floats_turns_non_finite_into_none():
    assert to_floats({"a": jnp.float32(2.0), "b": (jnp.nan, jnp.inf)}) == {
        "a": 2.0,
        "b": (None,) * 2,
    }


def test_any_layer_and_params_of_the_wrong_structure():
    _, params = L.Dense(2).init(jax.random.PRNGKey(0), (2,))
    _, _, signals = backprop_with_signals(
        L.Dense(2), losses.mse, params, jnp.ones((1, 2)), jnp.ones((1, 2))
    )
    assert list(signals) == [()]
    with pytest.raises(ValueError, match=r"^Dense\(features=2\): params must be"):
        backprop_with_signals(L.Dense(2), losses.mse, {}, jnp.ones((1, 2)), jnp.ones((1, 2)))
    model = L.mlp([2])
    with pytest.raises(ValueError, match="1 params"):
        backprop_with_signals(model, losses.mse, (), jnp.ones((1, 2)), jnp.ones((1, 2)))
