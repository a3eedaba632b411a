"""LayerNorm, RMSNorm and BatchNorm: hand-written rules against jax.vjp, running statistics,
extreme inputs, and their errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close, cast, rel_error

from jaxbp.layers.norm import BatchNorm, LayerNorm, RMSNorm

LAYERS = [LayerNorm(), LayerNorm(eps=1e-3), RMSNorm(), BatchNorm(), BatchNorm(train=False)]
SHAPES = [(6, 5), (4, 3, 5)]  # (batch, C) and (batch, T, C)
MOMENTUM = 0.8  # not the default, so a swapped momentum and 1 - momentum would show


def _params(layer, C, key, dtype=jnp.float32):
    """Random params: ones and zeros would hide a missing scale or bias term."""
    k1, k2 = jax.random.split(key)
    params = {"scale": 1 + 0.5 * jax.random.normal(k1, (C,)), "bias": jax.random.normal(k2, (C,))}
    params = {"scale": params["scale"]} if isinstance(layer, RMSNorm) else params
    return cast(params, dtype)


def _state(C, key, dtype=jnp.float32):
    """A running state far from its init (zeros, ones), so evaluation visibly reads it."""
    k1, k2 = jax.random.split(key)
    state = {"mean": jax.random.normal(k1, (C,)), "var": 0.5 + jax.random.uniform(k2, (C,))}
    return cast(state, dtype)


def _setup(layer, shape, key, dtype):
    kp, ks, kx, kd = jax.random.split(key, 4)
    # Offset 1 and scale 3: a non-zero mean (per channel for BatchNorm) that must be removed.
    x = 3 * jax.random.normal(kx, shape, dtype) + jnp.arange(shape[-1], dtype=dtype)
    dy = jax.random.normal(kd, shape, dtype)
    return _params(layer, shape[-1], kp, dtype), _state(shape[-1], ks, dtype), x, dy


def _train(layer):
    return getattr(layer, "train", True)


def _forward(layer, params, state, x):
    """(y, residuals): BatchNorm through forward_state (evaluation needs the state)."""
    if isinstance(layer, BatchNorm):
        return layer.forward_state(params, state, x)[:2]
    return layer.forward(params, x)


def _reference(layer, params, state, x):
    """The forward pass in numpy float64, written from the formulas, not from the layer."""
    x = np.asarray(x, np.float64)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    if isinstance(layer, RMSNorm):
        return x / np.sqrt(np.mean(x**2, -1, keepdims=True) + layer.eps) * p["scale"]
    if isinstance(layer, LayerNorm):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    elif layer.train:
        axes = tuple(range(x.ndim - 1))
        mean, var = x.mean(axes), x.var(axes)
    else:
        mean, var = np.asarray(state["mean"]), np.asarray(state["var"])
    return (x - mean) / np.sqrt(var + layer.eps) * p["scale"] + p["bias"]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layer", LAYERS, ids=repr)
def test_backward_matches_jax_vjp_float64(layer, shape, key, x64):
    params, state, x, dy = _setup(layer, shape, key, jnp.float64)
    y, residuals = _forward(layer, params, state, x)
    dparams, dx = layer.backward(params, residuals, dy)
    _, vjp = jax.vjp(lambda p, x: _forward(layer, p, state, x)[0], params, x)
    dparams_ref, dx_ref = vjp(dy)
    # 1e-12: both sides are exact formulas in float64; only rounding order differs. (The forward
    # itself is checked against NumPy in its own test.)
    assert_trees_close(dparams, dparams_ref, rtol=1e-12, what="dparams")
    assert_trees_close(dx, dx_ref, rtol=1e-12, what="dx")
    # The forward itself, against numpy: jax.vjp only referees the backward of this forward.
    assert rel_error(y, _reference(layer, params, state, x)) <= 1e-13


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layer", LAYERS, ids=repr)
def test_residuals_are_named_and_shaped(layer, shape, key):
    params, state, x, _ = _setup(layer, shape, key, jnp.float32)
    xhat, rstd = _forward(layer, params, state, x)[1]
    assert xhat.shape == x.shape
    assert rstd.shape == ((shape[-1],) if isinstance(layer, BatchNorm) else (*shape[:-1], 1))


@pytest.mark.parametrize("layer", LAYERS, ids=repr)
def test_backward_under_jit_float32(layer, key):
    params, state, x, dy = _setup(layer, (4, 3, 5), key, jnp.float32)

    @jax.jit
    def rule(params, state, x, dy):
        _, residuals = _forward(layer, params, state, x)
        return layer.backward(params, residuals, dy)

    _, vjp = jax.vjp(lambda p, x: _forward(layer, p, state, x)[0], params, x)
    # float32: the backward subtracts terms of size |g| to leave a smaller dx; 1e-5 is a few
    # hundred ulps of that difference, and XLA may fuse differently under jit.
    assert_trees_close(rule(params, state, x, dy), vjp(dy), rtol=1e-5, what="float32 under jit")


# ---------------------------------------------------------------------------------------------
# BatchNorm's state and modes


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_batchnorm_running_statistics_follow_the_formula(shape, key, x64):
    layer = BatchNorm(momentum=MOMENTUM)
    params, state, x, _ = _setup(layer, shape, key, jnp.float64)
    _, _, new_state = jax.jit(layer.forward_state)(params, state, x)
    xs = np.asarray(x).reshape(-1, shape[-1])
    # Flax's convention: the biased variance (ddof=0), the one that normalised the batch.
    want = {
        "mean": MOMENTUM * np.asarray(state["mean"]) + (1 - MOMENTUM) * xs.mean(0),
        "var": MOMENTUM * np.asarray(state["var"]) + (1 - MOMENTUM) * xs.var(0, ddof=0),
    }
    assert set(new_state) == {"mean", "var"}
    for k in want:
        # 1e-13: a mean and a variance of at most 12 values in float64.
        assert rel_error(new_state[k], want[k]) <= 1e-13, k


def test_batchnorm_evaluation_reads_the_state_and_keeps_it(key):
    layer = BatchNorm(momentum=MOMENTUM, train=False)
    params, state, x, _ = _setup(layer, (6, 5), key, jnp.float32)
    y, _, new_state = jax.jit(layer.forward_state)(params, state, x)
    assert_trees_close(new_state, state, rtol=0, what="state in evaluation")
    want = (x - state["mean"]) / jnp.sqrt(state["var"] + layer.eps) * params["scale"]
    # float32: a handful of ulps of |y| ~ 10.
    np.testing.assert_allclose(y, want + params["bias"], rtol=1e-5, atol=1e-5)
    # The output depends on the state: a different state gives a different y.
    other = jax.tree.map(lambda s: s + 1, state)
    assert not np.allclose(layer.forward_state(params, other, x)[0], y)


def test_batchnorm_init_state_and_training_forward(key):
    layer = BatchNorm()
    _, params = layer.init(key, (3, 5))
    state = layer.init_state(params)
    assert_trees_close(state, {"mean": jnp.zeros(5), "var": jnp.ones(5)}, rtol=0, what="state")
    params, state, x, _ = _setup(layer, (4, 3, 5), key, jnp.float32)
    # forward in training is forward_state with the new state dropped: y does not need it.
    y, _ = jax.jit(layer.forward)(params, x)
    # 1e-6: the jitted forward and the eager one may round in a different order (float32).
    assert_trees_close(y, layer.forward_state(params, state, x)[0], rtol=1e-6, what="y")


def test_batchnorm_forward_in_evaluation_points_to_forward_state(key):
    layer = BatchNorm(train=False)
    _, params = layer.init(key, (5,))
    with pytest.raises(TypeError, match=r"BatchNorm\(.*train=False\).*running statistics.*"
                       r"forward_state"):  # fmt: skip
        layer.forward(params, jnp.ones((2, 5)))


def test_batchnorm_state_keeps_its_dtype_under_a_float64_input(key, x64):
    layer = BatchNorm()
    params, _, x, _ = _setup(layer, (6, 5), key, jnp.float64)
    state = _state(5, key, jnp.float32)
    new_state = layer.forward_state(params, state, x)[2]
    assert all(v.dtype == jnp.float32 for v in new_state.values())  # a scan's carry keeps its type


# ---------------------------------------------------------------------------------------------
# Extreme float32 inputs


def _extreme_inputs(key):
    signs = jnp.sign(jax.random.normal(key, (4, 6)))
    return {
        "|x| = 1e4": 1e4 * signs,
        "constant rows": jnp.full((4, 6), 1234.5678),
        "huge scale differences": jnp.array(
            [[1e4, 1e-4, -1e4, 1e-3, 0.0, 3.0], [1e-4, -1e-4, 2e-4, 0.0, 1e-4, -3e-4]] * 2
        ),
        "rows of different magnitude": signs * jnp.array([[1e-4], [1.0], [1e2], [1e4]]),
    }


@pytest.mark.parametrize("layer", LAYERS, ids=repr)
def test_extreme_float32_inputs_stay_finite(layer, key):
    for name, x in _extreme_inputs(key).items():
        x = x.astype(jnp.float32)
        params, state, _, _ = _setup(layer, x.shape, key, jnp.float32)
        (y, residuals), dy = _forward(layer, params, state, x), jnp.ones_like(x)
        dparams, dx = layer.backward(params, residuals, dy)
        for what, tree in (("y", y), ("dparams", dparams), ("dx", dx)):
            assert all(jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(tree)), (name, what)
        if name == "constant rows" and isinstance(layer, LayerNorm | BatchNorm) and _train(layer):
            # Variance 0: eps keeps rstd finite; the row is its own mean, so y is the bias.
            np.testing.assert_allclose(y, jnp.broadcast_to(params["bias"], y.shape), atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 5), (1, 3, 5)], ids=str)
def test_batchnorm_batch_of_one_in_training_stays_finite(shape, key):
    layer = BatchNorm()
    params, state, x, dy = _setup(layer, shape, key, jnp.float32)
    x = x[:, :1] if len(shape) == 3 else x  # (1, 1, 5): one value per channel, variance 0
    dy = dy[:, :1] if len(shape) == 3 else dy
    y, residuals, new_state = layer.forward_state(params, state, x)
    dparams, dx = layer.backward(params, residuals, dy)
    for tree in (y, residuals, new_state, dparams, dx):
        assert all(jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(tree))
    # One value per channel is its own mean: y is the bias and nothing flows back to x.
    np.testing.assert_allclose(y.reshape(-1, 5), params["bias"][None], atol=1e-6)
    np.testing.assert_allclose(dx, 0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("layer", LAYERS, ids=repr)
def test_bad_inputs_are_rejected(layer, key):
    params, state, x, _ = _setup(layer, (6, 5), key, jnp.float32)
    name = type(layer).__name__
    with pytest.raises(ValueError, match=rf"{name}\(.*batch axis"):
        _forward(layer, params, state, x[0])  # no batch axis
    with pytest.raises(ValueError, match=rf"{name}\(.*C = 5.*\(batch, \.\.\., 5\).*\(6, 4\)"):
        _forward(layer, params, state, x[:, :4])
    with pytest.raises(TypeError, match="floating point"):
        _forward(layer, params, state, x.astype(jnp.int32))


@pytest.mark.parametrize("layer", LAYERS, ids=repr)
def test_params_of_the_wrong_structure_name_the_expected_keys(layer, key):
    params, state, x, _ = _setup(layer, (6, 5), key, jnp.float32)
    want = r"\{'scale': \(C,\)\}" if isinstance(layer, RMSNorm) else r"\{'scale': \(C,\), 'bias'"
    missing = {k: v for k, v in params.items() if k != "scale"} or {"bias": params["scale"]}
    for bad in (missing, tuple(params.values()), {**params, "scale": jnp.ones((5, 1))}):
        with pytest.raises(ValueError, match=rf"{type(layer).__name__}\(.*params must be {want}"):
            jax.jit(lambda p, x: _forward(layer, p, state, x))(bad, x)  # at trace time


def test_batchnorm_state_of_the_wrong_structure_is_named(key):
    layer = BatchNorm()
    params, state, x, _ = _setup(layer, (6, 5), key, jnp.float32)
    for bad in ((), {"mean": state["mean"]}, {"mean": state["mean"], "var": jnp.ones(4)}):
        with pytest.raises(ValueError, match=r"state must be \{'mean': \(C,\), 'var': \(C,\)\}"):
            layer.forward_state(params, bad, x)
    with pytest.raises(ValueError, match=r"state hold C = 4.*\(batch, \.\.\., 4\)"):
        layer.forward_state(params, {"mean": jnp.zeros(4), "var": jnp.ones(4)}, x)
    with pytest.raises(ValueError, match="params must be"):
        layer.init_state({"scale": jnp.ones(5)})


def test_bad_options_and_shapes(key):
    for make in (lambda: LayerNorm(eps=0.0), lambda: RMSNorm(eps=-1e-6)):
        with pytest.raises(ValueError, match="eps must be positive"):
            make()
    for momentum in (-0.1, 1.5):
        with pytest.raises(ValueError, match="momentum must lie in"):
            BatchNorm(momentum=momentum)
    with pytest.raises(TypeError, match="eps must be a number"):
        LayerNorm(eps="1e-5")
    with pytest.raises(ValueError, match=r"input shape must be \(\.\.\., C\)"):
        LayerNorm().init(key, ())
    assert LayerNorm().init(key, (3, 5))[0] == (3, 5)
    assert RMSNorm().init(key, (5,))[1]["scale"].shape == (5,)
