"""SelfAttention: the hand-written rule against jax.vjp in both residual modes, causality by
Jacobian, extreme float32 logits, and its errors."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close, cast, rel_error
from scipy import special

from jaxbp.layers.attention import SelfAttention

B, T, C, H = 2, 5, 8, 2  # d = 4: no residual but p is (T, T)
MODES = list(itertools.product([True, False], [False, True]))  # (causal, recompute)
MODE_IDS = [f"causal={c}-recompute={r}" for c, r in MODES]


def _setup(dtype, x_scale=1.0, w_scale=1.0):
    """(params, x, dy) from NumPy (no eager jax op to compile). The params are off init: nonzero
    biases, so a dropped bias term or a wrong db shows."""
    rng = np.random.default_rng(0)
    params = {
        "W_qkv": w_scale * rng.normal(size=(C, 3 * C)) / np.sqrt(C),
        "b_qkv": 0.5 * rng.normal(size=(3 * C,)),
        "W_out": rng.normal(size=(C, C)) / np.sqrt(C),
        "b_out": 0.5 * rng.normal(size=(C,)),
    }
    x, dy = x_scale * rng.normal(size=(B, T, C)), rng.normal(size=(B, T, C))
    return cast(params, dtype), jnp.asarray(x, dtype), jnp.asarray(dy, dtype)


def _rule(layer):
    """(y, residuals, dparams, dx) in one jitted function."""

    @jax.jit
    def f(params, x, dy):
        y, residuals = layer.forward(params, x)
        return y, residuals, *layer.backward(params, residuals, dy)

    return f


def _reference_vjp(layer):
    @jax.jit
    def f(params, x, dy):
        return jax.vjp(lambda p, x: layer.forward(p, x)[0], params, x)[1](dy)

    return f


def _np_forward(layer, params, x):
    """The forward in NumPy float64, from the formulas, sharing no code with the layer."""
    p = {n: np.asarray(a, np.float64) for n, a in params.items()}
    qkv = np.asarray(x, np.float64) @ p["W_qkv"] + p["b_qkv"]
    d = C // layer.num_heads
    q, k, v = (
        a.reshape(B, T, layer.num_heads, d).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, -1)
    )
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    if layer.causal:
        s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    o = (special.softmax(s, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
    return o @ p["W_out"] + p["b_out"]


@pytest.mark.parametrize(("causal", "recompute"), MODES, ids=MODE_IDS)
def test_backward_matches_jax_vjp_float64(causal, recompute, x64):
    layer = SelfAttention(H, causal=causal, recompute=recompute)
    params, x, dy = _setup(jnp.float64)
    y, _, dparams, dx = _rule(layer)(params, x, dy)
    dparams_ref, dx_ref = _reference_vjp(layer)(params, x, dy)
    # 1e-12: both sides are exact formulas in float64; only the rounding order differs.
    assert_trees_close(dparams, dparams_ref, rtol=1e-12, what="dparams")
    assert_trees_close(dx, dx_ref, rtol=1e-12, what="dx")
    # jax.vjp only referees the backward of this forward: the forward itself against NumPy.
    assert rel_error(y, _np_forward(layer, params, x)) <= 1e-13


@pytest.mark.parametrize("causal", [True, False])
def test_both_modes_agree_and_recompute_keeps_no_t_by_t_residual(causal, x64):
    params, x, dy = _setup(jnp.float64)
    saved, recomputed = (_rule(SelfAttention(H, causal=causal, recompute=r)) for r in (False, True))
    y0, res0, dparams0, dx0 = saved(params, x, dy)
    y1, res1, dparams1, dx1 = recomputed(params, x, dy)
    assert_trees_close((y1, dparams1, dx1), (y0, dparams0, dx0), rtol=1e-12, what="modes")
    assert res0["p"].shape == (B, H, T, T)
    assert res1["lse"].shape == (B, H, T)
    assert set(res1) == {"x", "q", "k", "v", "o", "lse"}
    assert not any(a.shape[-2:] == (T, T) for a in jax.tree.leaves(res1)), jax.tree.map(
        jnp.shape, res1
    )


def _future_blocks(J):
    """J: (B, T, C, B, T, C), d y[b, t] / d x[b', t']; norms of the blocks b' = b, t' > t."""
    same_example = np.stack([J[b, :, :, b] for b in range(B)])  # (B, T, C, T, C)
    norms = np.sqrt(np.sum(same_example**2, axis=(0, 2, 4)))  # (T, T')
    return norms[np.triu_indices(T, k=1)]


def _jacobians(layer, params, x):
    """(autodiff's, the hand-written rule's) Jacobian of y with respect to x, both jitted."""
    J_autodiff = jax.jit(jax.jacobian(lambda x: layer.apply(params, x)))(x)

    @jax.jit
    def J_rule(x):
        residuals = layer.forward(params, x)[1]  # one backward per one-hot cotangent
        basis = jnp.eye(B * T * C, dtype=x.dtype).reshape(-1, B, T, C)
        dx = jax.vmap(lambda dy: layer.backward(params, residuals, dy)[1])(basis)
        return dx.reshape(B, T, C, B, T, C)

    return J_autodiff, J_rule(x)


@pytest.mark.parametrize("recompute", [False, True])
def test_causal_output_ignores_future_inputs_by_jacobian(recompute, x64):
    params, x, _ = _setup(jnp.float64)
    for causal in (True, False):
        J_autodiff, J = _jacobians(SelfAttention(H, causal=causal, recompute=recompute), params, x)
        assert rel_error(J, J_autodiff) <= 1e-12
        if causal:  # exactly zero, not just small: the mask leaves no path from the future
            assert not _future_blocks(J_autodiff).any()
            assert not _future_blocks(J).any()
        else:  # the check can fail: without the mask every future block reaches y
            assert _future_blocks(J).min() > 1e-3


@pytest.mark.parametrize(("causal", "recompute"), MODES, ids=MODE_IDS)
def test_extreme_float32_logits_stay_finite(causal, recompute):
    rule = _rule(SelfAttention(H, causal=causal, recompute=recompute))
    for x_scale, w_scale in ((1e4, 1.0), (1.0, 60.0)):  # |x| = 1e4; logits ~ 1e4 from the weights
        params, x, dy = _setup(jnp.float32, x_scale, w_scale)
        y, residuals, dparams, dx = rule(params, x, dy)
        q, k = np.asarray(residuals["q"]), np.asarray(residuals["k"])
        assert np.abs(q @ k.swapaxes(-1, -2)).max() / np.sqrt(C // H) > 1e3  # logits this large
        for what, tree in (("y", y), ("residuals", residuals), ("dparams", dparams), ("dx", dx)):
            assert all(np.isfinite(a).all() for a in jax.tree.leaves(tree)), (x_scale, what)


def test_init_shapes_and_defaults(key):
    layer = SelfAttention(H)
    assert (layer.causal, layer.recompute) == (True, False)
    out_shape, params = layer.init(key, (T, C))
    assert out_shape == (T, C)
    assert jax.tree.map(jnp.shape, params) == {
        "W_qkv": (C, 3 * C), "b_qkv": (3 * C,), "W_out": (C, C), "b_out": (C,),
    }  # fmt: skip
    assert not params["b_qkv"].any() and not params["b_out"].any()
    assert 0.5 < float(jnp.std(params["W_qkv"]) * np.sqrt(C)) < 1.5  # LeCun: variance 1/C
    y = jax.jit(layer.apply)(params, jnp.ones((B, T, C)))
    assert y.shape == (B, T, C) and y.dtype == jnp.float32


# ---------------------------------------------------------------------------------------------
# Errors


def test_bad_inputs_are_rejected(key):
    layer = SelfAttention(H)
    params, x, _ = _setup(jnp.float32)
    with pytest.raises(ValueError, match=r"SelfAttention\(num_heads=2.*\(batch, T, C\).*\(5, 8\)"):
        layer.forward(params, x[0])  # no batch axis
    with pytest.raises(ValueError, match=r"\(batch, T, C\).*\(2, 5, 8, 1\)"):
        layer.forward(params, x[..., None])
    with pytest.raises(TypeError, match="floating point.*int32"):
        layer.forward(params, x.astype(jnp.int32))
    with pytest.raises(ValueError, match=r"C = 9 channels do not split into 2 heads.*\(2, 5, 9\)"):
        layer.forward(params, jnp.ones((B, T, 9)))
    with pytest.raises(ValueError, match=r"C = 9 channels do not split into 2 heads.*\(5, 9\)"):
        layer.init(key, (T, 9))
    with pytest.raises(ValueError, match=r"input shape must be \(T, C\)"):
        layer.init(key, (C,))


def test_params_of_the_wrong_structure_name_the_expected_keys():
    layer = SelfAttention(H)
    params, x, _ = _setup(jnp.float32)
    missing = {n: a for n, a in params.items() if n != "b_out"}
    for bad in (missing, tuple(params.values()), {**params, "W_out": jnp.ones((C, 3 * C))}):
        with pytest.raises(ValueError, match=r"SelfAttention\(.*params must be \{'W_qkv': \(C, "
                           r"3C\).*C = 8.*got"):  # fmt: skip
            jax.jit(layer.forward)(bad, x)  # at trace time
    with pytest.raises(ValueError, match=r"C = 4, the input.*'W_out': \(8, 8\)"):
        layer.forward(params, jnp.ones((B, T, 4)))  # params for C = 8, input C = 4


def test_bad_options():
    for bad in (0, -2):
        with pytest.raises(ValueError, match="num_heads must be positive"):
            SelfAttention(bad)
    for bad in (2.0, True, "2"):
        with pytest.raises(TypeError, match="num_heads must be an int"):
            SelfAttention(bad)
    with pytest.raises(TypeError, match="causal must be a bool"):
        SelfAttention(H, causal=1)
    with pytest.raises(TypeError, match="recompute must be a bool"):
        SelfAttention(H, recompute="yes")
