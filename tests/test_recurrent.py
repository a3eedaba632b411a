"""RNN, LSTM and GRU: BPTT rules against jax.vjp, forwards against a NumPy loop, init, extreme
inputs, and their errors."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close, cast, rel_error
from scipy.special import expit

from jaxbp.layers.recurrent import GRU, LSTM, RNN

BATCH, T, IN, F = 3, 6, 4, 5
LAYERS = [LSTM(F), GRU(F), RNN(F), RNN(F, activation="relu")]


def _setup(layer, dtype):
    """Params off init (a random bias, U large enough that h_{t-1} matters), x and dy. NumPy's
    generator, not jax.random: no eager XLA compiles before the jitted ones."""
    rng = np.random.default_rng(0)
    k = {LSTM: 4, GRU: 3, RNN: 1}[type(layer)]
    params = {
        "W": rng.normal(size=(IN, k * F)) / np.sqrt(IN),
        "U": 1.5 * rng.normal(size=(F, k * F)) / np.sqrt(F),
        "b": 0.5 * rng.normal(size=(k * F,)),
    }
    x, dy = rng.normal(size=(BATCH, T, IN)), rng.normal(size=(BATCH, T, F))
    return cast(params, dtype), jnp.asarray(x, dtype), jnp.asarray(dy, dtype)


@functools.cache
def _rule(layer):
    """forward then the hand-written backward, jitted once per layer (and dtype)."""

    @jax.jit
    def rule(params, x, dy):
        y, residuals = layer.forward(params, x)
        return y, layer.backward(params, residuals, dy)

    return rule


@functools.cache
def _vjp(layer):
    """The referee: jax.vjp of the layer's own forward, jitted once per layer (and dtype)."""
    return jax.jit(lambda p, x, dy: jax.vjp(layer.apply, p, x)[1](dy))


def _reference_vjp(layer, params, x, dy):
    return _vjp(layer)(params, x, dy)


def _np_reference(layer, params, x) -> np.ndarray:
    """The forward pass as a plain loop over time in NumPy float64, from the formulas."""
    W, U, b = (np.asarray(params[k], np.float64) for k in ("W", "U", "b"))
    x = np.asarray(x, np.float64)
    h, c, out = np.zeros((len(x), F)), np.zeros((len(x), F)), []
    for t in range(x.shape[1]):
        if isinstance(layer, LSTM):
            z = x[:, t] @ W + h @ U + b
            i, f, g, o = np.split(z, 4, axis=1)
            i, f, g, o = expit(i), expit(f), np.tanh(g), expit(o)
            c = f * c + i * g
            h = o * np.tanh(c)
        elif isinstance(layer, GRU):
            a, u = x[:, t] @ W + b, h @ U
            r, z = expit(a[:, :F] + u[:, :F]), expit(a[:, F : 2 * F] + u[:, F : 2 * F])
            n = np.tanh(a[:, 2 * F :] + r * u[:, 2 * F :])
            h = (1 - z) * n + z * h
        else:
            z = x[:, t] @ W + h @ U + b
            h = np.tanh(z) if layer.activation == "tanh" else np.maximum(z, 0)
        out.append(h)
    return np.stack(out, axis=1)


@pytest.mark.parametrize("layer", LAYERS, ids=repr)
def test_backward_matches_jax_vjp_float64(layer, x64):
    params, x, dy = _setup(layer, jnp.float64)
    y, (dparams, dx) = _rule(layer)(params, x, dy)
    dparams_ref, dx_ref = _reference_vjp(layer, params, x, dy)
    # 1e-12: both sides are exact formulas in float64; only the rounding order differs.
    assert_trees_close(dparams, dparams_ref, rtol=1e-12, what="dparams")
    assert_trees_close(dx, dx_ref, rtol=1e-12, what="dx")
    # jax.vjp only referees the backward of this forward: the forward against a NumPy loop.
    assert rel_error(y, _np_reference(layer, params, x)) <= 1e-12


@pytest.mark.parametrize("layer", LAYERS[:2], ids=repr)
def test_gradient_reaches_the_first_step(layer, x64):
    """A cotangent at the last step only must reach x_0 (through h and, for LSTM, c)."""
    params, x, _ = _setup(layer, jnp.float64)
    dy = np.zeros((BATCH, T, F))
    dy[:, -1] = 1.0
    _, (_, dx) = _rule(layer)(params, x, dy)
    _, dx_ref = _reference_vjp(layer, params, x, dy)
    assert float(jnp.abs(dx_ref[:, 0]).max()) > 1e-6  # the check below is not vacuous
    assert_trees_close(dx, dx_ref, rtol=1e-12, what="dx from the last step")


@pytest.mark.parametrize("layer", LAYERS, ids=repr)
def test_residuals_are_named_and_shaped(layer):
    params, x, _ = _setup(layer, jnp.float32)
    residuals = jax.eval_shape(layer.forward, params, x)[1]  # shapes only: no compile
    k = {LSTM: 4, GRU: 3, RNN: 1}[type(layer)]
    want = {
        LSTM: [(BATCH, T, IN), (BATCH, T, k * F), (BATCH, T, F), (BATCH, T, F)],
        GRU: [(BATCH, T, IN), (BATCH, T, k * F), (BATCH, T, F), (BATCH, T, F)],
        RNN: [(BATCH, T, IN), (BATCH, T, F)],
    }[type(layer)]
    assert [r.shape for r in residuals] == want


@pytest.mark.parametrize("layer", LAYERS, ids=repr)
def test_init_shapes_and_biases(layer, key):
    shapes = []

    @jax.jit  # one compile, not one per eager op
    def init(key):
        out_shape, params = layer.init(key, (T, IN))
        shapes.append(out_shape)  # plain ints at trace time
        return params

    params, (out_shape,) = init(key), shapes
    k = {LSTM: 4, GRU: 3, RNN: 1}[type(layer)]
    assert out_shape == (T, F)
    assert {n: p.shape for n, p in params.items()} == {
        "W": (IN, k * F),
        "U": (F, k * F),
        "b": (k * F,),
    }
    forget = np.zeros(k * F)
    if isinstance(layer, LSTM):
        forget[F : 2 * F] = 1.0  # gates i, f, g, o: the forget gate's bias starts at 1
    np.testing.assert_array_equal(params["b"], forget)


@pytest.mark.parametrize("layer", LAYERS, ids=repr)
def test_backward_float32_and_extreme_inputs_stay_finite(layer):
    params, x, dy = _setup(layer, jnp.float32)
    rule = _rule(layer)
    # float32, ordinary inputs: close to jax.vjp at a few hundred ulps.
    assert_trees_close(rule(params, x, dy)[1], _reference_vjp(layer, params, x, dy), rtol=1e-5)
    # |x| = 1e4 saturates every gate: outputs and gradients must stay finite (same jit trace).
    x_big = 1e4 * jnp.sign(x)
    y, grads = rule(params, x_big, dy)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves((y, grads)))
    if not isinstance(layer, RNN) or layer.activation == "tanh":
        assert float(jnp.abs(y).max()) <= 1.0


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("layer", LAYERS[:3], ids=repr)
def test_bad_inputs_raise_clear_errors(layer, key):
    params, x, _ = _setup(layer, jnp.float32)
    with pytest.raises(ValueError, match=r"\(batch, T, 4\).*\(3, 4\)"):
        layer.forward(params, x[:, 0])  # no time axis
    with pytest.raises(ValueError, match=r"\(batch, T, 4\).*\(3, 6, 2\)"):
        layer.forward(params, x[..., :2])  # wrong number of input features
    with pytest.raises(TypeError, match="floating point.*int32"):
        layer.forward(params, jnp.ones((BATCH, T, IN), jnp.int32))
    with pytest.raises(ValueError, match=r"params must be \{'W'.*got \{'W': \(4,"):
        layer.forward({"W": params["W"], "b": params["b"]}, x)  # U missing
    with pytest.raises(ValueError, match="params must be"):
        layer.forward({**params, "U": params["U"][:, :-1]}, x)  # U of the wrong shape
    with pytest.raises(ValueError, match="params must be.*got tuple"):
        layer.forward((params["W"], params["U"], params["b"]), x)
    with pytest.raises(ValueError, match=r"input shape must be \(T, in\)"):
        layer.init(key, (IN,))


@pytest.mark.parametrize("cls", [LSTM, GRU, RNN])
def test_bad_options_raise(cls):
    with pytest.raises(ValueError, match="features must be positive"):
        cls(0)
    for bad in (2.0, True, "5"):
        with pytest.raises(TypeError, match="features must be an int"):
            cls(bad)


def test_rnn_bad_activation_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"\['relu', 'tanh'\].*'gelu'"):
        RNN(F, activation="gelu")
