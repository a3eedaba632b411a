"""GroupNorm: the checker over many keys, a NumPy forward and jax.vjp of a plain-jnp GroupNorm,
every engine and quantity on a model that holds it, extreme float32 inputs, and its errors."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close, rel_error
from jax.flatten_util import ravel_pytree

import jaxbp
from jaxbp import layers as L
from jaxbp import losses
from jaxbp.check import check_backprop, check_layer
from jaxbp.layers import GroupNorm
from jaxbp.quantities.dp import dp_sgd

SEEDS = range(200)  # as tests/test_check.py: after one compilation a check costs ~2 ms
# (layer, per-example input shape): groups of several channels, G = 1 (LayerNorm over every
# axis), G = C (InstanceNorm), no spatial axis, one and two spatial axes, another eps.
CASES = [
    (GroupNorm(2), (4, 6)), (GroupNorm(4), (3, 3, 8)), (GroupNorm(1), (3, 4)),
    (GroupNorm(4), (5, 4)), (GroupNorm(3, eps=1e-3), (6,)),
]  # fmt: skip
# float64, the rules against jax's: the same formulas summed in another order, ~1e-15 each.
EXACT = 1e-12
CE = losses.softmax_cross_entropy


def _setup(layer, shape, key, dtype):
    """Random params (ones and zeros would hide a missing scale or bias) and an input with a
    different offset per channel, which each group must remove."""
    k1, k2, kx, kd = jax.random.split(key, 4)
    C = shape[-1]
    params = {"scale": 1 + 0.5 * jax.random.normal(k1, (C,), dtype),
              "bias": jax.random.normal(k2, (C,), dtype)}  # fmt: skip
    x = 3 * jax.random.normal(kx, shape, dtype) + jnp.arange(C, dtype=dtype)
    return params, x, jax.random.normal(kd, shape, dtype)


def _numpy_forward(layer, params, x):
    """y in float64, group by group, example by example, written from the definition."""
    x, G = np.asarray(x, np.float64), layer.num_groups
    xhat, width = np.empty_like(x), x.shape[-1] // G
    for b in range(x.shape[0]):
        for g in range(G):
            block = x[b, ..., g * width : (g + 1) * width]
            xhat[b, ..., g * width : (g + 1) * width] = (block - block.mean()) / np.sqrt(
                block.var() + layer.eps
            )
    return xhat * np.asarray(params["scale"], np.float64) + np.asarray(params["bias"], np.float64)


def _plain_jnp(layer, params, x):
    """GroupNorm in plain jnp, the way one would write it for jax.grad: the vjp's referee."""
    G, C = layer.num_groups, x.shape[-1]
    xg = x.reshape(x.shape[0], -1, G, C // G)
    mean = xg.mean(axis=(1, 3), keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    xhat = ((xg - mean) / jnp.sqrt(var + layer.eps)).reshape(x.shape)
    return xhat * params["scale"] + params["bias"]


# ---------------------------------------------------------------------------------------------
# The rule, layer by layer


@pytest.mark.parametrize("layer, shape", CASES, ids=str)
def test_check_layer_passes_over_many_keys(layer, shape):
    worst = 0.0
    for seed in SEEDS:
        report = check_layer(layer, shape, key=seed)
        assert report.ok, f"seed {seed}\n{report}"
        worst = max(worst, *(row.errors["vjp"] for row in report.rows))
    assert worst <= EXACT, worst


@pytest.mark.parametrize("layer, shape", CASES, ids=str)
def test_forward_matches_numpy_and_backward_matches_plain_jnp_vjp(layer, shape, key, x64):
    params, x, dy = _setup(layer, (5, *shape), key, jnp.float64)

    @jax.jit  # one program per case: eagerly, each small op would compile on its own
    def run(params, x, dy):
        y, residuals = layer.forward(params, x)
        _, vjp = jax.vjp(lambda p, x: _plain_jnp(layer, p, x), params, x)
        return y, residuals, layer.backward(params, residuals, dy), vjp(dy)

    y, residuals, (dparams, dx), (dparams_ref, dx_ref) = run(params, x, dy)
    # 1e-13: a mean and a variance of at most 18 values, in float64.
    assert rel_error(y, _numpy_forward(layer, params, x)) <= 1e-13
    assert_trees_close(dparams, dparams_ref, rtol=EXACT, what="dparams")
    assert_trees_close(dx, dx_ref, rtol=EXACT, what="dx")
    xhat, rstd = residuals  # named and shaped as the docstring says
    assert xhat.shape == x.shape and rstd.shape == (5, layer.num_groups)


def test_one_group_over_channels_alone_is_layernorm(key, x64):
    params, x, dy = _setup(GroupNorm(1), (6, 5), key, jnp.float64)
    ours, theirs = GroupNorm(1, eps=1e-3), L.LayerNorm(eps=1e-3)
    (y, r), (y_ln, r_ln) = ours.forward(params, x), theirs.forward(params, x)
    assert rel_error(y, y_ln) <= 1e-14  # the same float64 sums
    assert_trees_close(ours.backward(params, r, dy), theirs.backward(params, r_ln, dy),
                       rtol=1e-14, what="LayerNorm's backward")  # fmt: skip


def test_backward_under_jit_float32(key):
    layer = GroupNorm(2)
    params, x, dy = _setup(layer, (4, 3, 6), key, jnp.float32)

    @jax.jit
    def rule(params, x, dy):
        return layer.backward(params, layer.forward(params, x)[1], dy)

    _, vjp = jax.vjp(layer.apply, params, x)
    # float32: dx is a difference of terms of size |g|; 1e-5 is a few hundred ulps of it.
    assert_trees_close(rule(params, x, dy), vjp(dy), rtol=1e-5, what="float32 under jit")


def test_per_example_rule_is_each_examples_backward(key):
    layer = GroupNorm(2)
    params, x, dy = _setup(layer, (4, 3, 6), key, jnp.float32)
    fast = layer.per_example_grads(params, layer.forward(params, x)[1], dy)

    def one(xi, di):  # example i alone: its statistics are its own
        return layer.backward(params, layer.forward(params, xi[None])[1], di[None])[0]

    # float32 sums of 18 products in another order: a few ulps.
    assert_trees_close(fast, jax.vmap(one)(x, dy), rtol=1e-6, what="per-example grads")


# ---------------------------------------------------------------------------------------------
# In a model: every engine and quantity against jax.grad of one example's loss


MODEL = L.serial(L.Conv(8, (3, 3)), GroupNorm(4), L.Relu(), L.GlobalAvgPool(), L.Dense(3))
M = 6  # examples
SHARED = pytest.mark.xdist_group("group_norm_model")  # one worker compiles _results for all
W, B = np.array([1, 0, 1, 1, 0, 1], np.float64), 4.0  # DP-SGD's Poisson mask and expected size


def _problem():
    """float64 params nudged off init (GroupNorm's ones and zeros would hide a term), inputs
    and labels, by NumPy: no compilation per shape."""
    rng = np.random.default_rng(0)
    _, params = MODEL.init(jax.random.PRNGKey(0), (5, 5, 2))
    params = jax.tree.map(lambda a: jnp.asarray(a + 0.3 * rng.normal(size=a.shape)), params)
    return params, jnp.asarray(rng.normal(size=(M, 5, 5, 2))), jnp.asarray(rng.integers(0, 3, M))


def _references(params, x, y):
    """g_i = jax.grad of L_i on example i alone; diag(J^T H J) from the whole batch's Jacobian."""
    flat, unravel = ravel_pytree(params)

    def run(params, flat):
        loss_i = lambda p, xi, yi: CE.apply(MODEL.apply(p, xi[None]), yi[None])  # noqa: E731
        g = jax.vmap(jax.grad(loss_i), in_axes=(None, 0, 0))(params, x, y)
        J = jax.jacobian(lambda f: MODEL.apply(unravel(f), x).reshape(-1))(flat)
        z = MODEL.apply(params, x)
        H = jax.hessian(lambda v: CE.apply(v.reshape(z.shape), y))(z.reshape(-1))
        return g, unravel(jnp.einsum("ak,ab,bk->k", J, H, J))

    return jax.jit(run)(params, flat)


@functools.cache
def _results():
    """Ours and the references, each in one compiled program, shared by the tests below."""
    params, x, y = _problem()
    g, diag = _references(params, x, y)
    norms = jnp.sqrt(sum(jnp.sum(a.reshape(M, -1) ** 2, 1) for a in jax.tree.leaves(g)))
    clip = float(jnp.mean(jnp.sort(norms)[2:4]))  # between two norms: some clipped, some not
    engine = dp_sgd(clip, 0.0, delta=None)

    def ours(p):
        args = (MODEL, CE, p, x, y)
        return {
            "backprop": jaxbp.backprop(*args), "autodiff": jaxbp.autodiff(*args),
            "per_example_grads": jaxbp.per_example_grads(*args),
            "norms": jaxbp.per_example_norms(*args),
            "per_leaf": jaxbp.per_example_norms(*args, per_leaf=True),
            "variance": jaxbp.grad_variance(*args), "squares": jaxbp.sum_grad_squared(*args),
            "diag_ggn": jaxbp.diag_ggn(*args),
            "dp": engine(*args), "dp_weighted": engine(*args, weights=W, expected_size=B),
            "kfac": jaxbp.kfac_factors(*args, unsupported="skip"),
        }  # fmt: skip

    return params, x, y, jax.jit(ours)(params), g, diag, norms, clip


@SHARED
def test_backprop_equals_autodiff_and_passes_the_checker(x64):
    params, x, y, got, *_ = _results()
    (value, grads), (value_ad, grads_ad) = got["backprop"], got["autodiff"]
    assert abs(value - value_ad) <= 1e-14 * abs(value_ad)
    assert_trees_close(grads, grads_ad, rtol=EXACT, what="backprop against autodiff")
    report = check_backprop(MODEL, CE, params, x, y)
    assert report.ok, str(report)


@SHARED
def test_per_example_quantities_match_vmap_of_jax_grad(x64):
    params, _, _, got, g, _, norms, _ = _results()
    # RTOL as tests/test_quantities.py: the same float64 terms summed in another order
    # (~1e-14), with room for the variance's cancellation; a missing term or factor m >= 1e-3.
    rtol = 1e-10
    assert rel_error(got["per_example_grads"], g) <= rtol
    assert rel_error(got["norms"], norms) <= rtol
    assert set(got["per_leaf"]) == {(0,), (1,), (4,)}  # the leaves with params, GroupNorm's too
    for path, n in got["per_leaf"].items():
        leaf = jnp.concatenate([a.reshape(M, -1) for a in jax.tree.leaves(g[path[0]])], 1)
        assert rel_error(n, jnp.linalg.norm(leaf, axis=1)) <= rtol, path
    assert rel_error(got["variance"], jax.tree.map(lambda a: jnp.var(a, 0), g)) <= rtol
    assert rel_error(got["squares"], jax.tree.map(lambda a: jnp.sum(a * a, 0), g)) <= rtol


@SHARED
def test_diag_ggn_matches_the_explicit_jacobian(x64):
    _, _, _, got, _, diag, _, _ = _results()
    # 1e-10 as tests/test_curvature.py: sums of the same products in another order.
    assert rel_error(got["diag_ggn"], diag) <= 1e-10


@SHARED
def test_dp_sgd_without_noise_is_the_clipped_mean(x64):
    _, _, _, got, g, _, norms, clip = _results()
    c = jnp.minimum(1.0, clip / norms)
    assert 0 < jnp.sum(c < 1) < M  # C at the median: both sides of the min are exercised
    mean = jax.tree.map(lambda a: jnp.tensordot(c, a, 1) / M, g)
    weighted = jax.tree.map(lambda a: jnp.tensordot(W * c, a, 1) / B, g)
    assert rel_error(got["dp"][1], mean) <= 1e-10  # as tests/test_dp.py
    assert rel_error(got["dp_weighted"][1], weighted) <= 1e-10


@SHARED
def test_kfac_factors_name_groupnorm_and_skip_it(x64):
    params, x, y, got, *_ = _results()
    with pytest.raises(NotImplementedError, match=r"layer \[1\] GroupNorm\(num_groups=4.*"
                       r"no K-FAC rule.*unsupported='skip'"):  # fmt: skip
        jax.eval_shape(lambda p: jaxbp.kfac_factors(MODEL, CE, p, x, y), params)  # traced only
    assert set(got["kfac"]) == {(0,), (4,)}  # Conv and Dense; GroupNorm left out


# ---------------------------------------------------------------------------------------------
# Extreme float32 inputs


def test_large_inputs_stay_finite_and_accurate_in_float32(key):
    layer = GroupNorm(2)
    params, noise, dy = _setup(layer, (4, 3, 6), key, jnp.float32)
    signs = jnp.sign(noise)
    for name, x in {"|x| = 1e4": 1e4 * signs, "offset 1e4": 1e4 + noise}.items():
        y, residuals = layer.forward(params, x)
        for what, tree in (("y", y), ("backward", layer.backward(params, residuals, dy))):
            assert all(jnp.isfinite(a).all() for a in jax.tree.leaves(tree)), (name, what)
        # 1e-5: x - shift is exact near 1e4, so only the statistics' own rounding is left;
        # without the shift the mean's rounding (1e4 ulps ~ 1e-3) would reach xhat.
        assert rel_error(y, _numpy_forward(layer, params, x)) <= 1e-5, name


def test_a_constant_group_normalises_to_zero(key):
    layer = GroupNorm(2)
    params, x, dy = _setup(layer, (4, 3, 6), key, jnp.float32)
    x = x.at[1, :, :3].set(1234.5678)  # example 1's first group: variance 0
    y, (xhat, rstd) = layer.forward(params, x)
    dparams, dx = layer.backward(params, (xhat, rstd), dy)
    for tree in (y, xhat, rstd, dparams, dx):
        assert all(jnp.isfinite(a).all() for a in jax.tree.leaves(tree))
    assert (xhat[1, :, :3] == 0).all()  # exactly: the shift centres a constant to 0
    np.testing.assert_array_equal(y[1, :, :3], jnp.broadcast_to(params["bias"][:3], (3, 3)))


# ---------------------------------------------------------------------------------------------
# Errors


def test_channels_not_divisible_by_the_groups_are_named(key):
    layer = GroupNorm(4)
    with pytest.raises(ValueError, match=r"GroupNorm\(.*C = 6 .*num_groups = 4"):
        layer.init(key, (3, 6))
    params = GroupNorm(2).init(key, (3, 6))[1]
    with pytest.raises(ValueError, match=r"GroupNorm\(.*C = 6 .*num_groups = 4"):
        jax.jit(layer.apply)(params, jnp.ones((2, 3, 6)))  # at trace time
    with pytest.raises(ValueError, match=r"input shape must be \(\.\.\., C\)"):
        layer.init(key, ())


def test_bad_params_and_inputs_are_rejected(key):
    layer = GroupNorm(2)
    params, x, _ = _setup(layer, (4, 3, 6), key, jnp.float32)
    want = r"GroupNorm\(.*params (must be \{'scale': \(C,\), 'bias': \(C,\)\}|hold C = 4)"
    bad = [
        {"scale": params["scale"]},
        tuple(params.values()),
        {**params, "scale": jnp.ones((6, 1))},
        {"scale": jnp.ones(4), "bias": jnp.zeros(4)},  # C = 4, x has 6
    ]
    for p in bad:
        with pytest.raises(ValueError, match=want):
            jax.jit(layer.apply)(p, x)
    with pytest.raises(ValueError, match=r"GroupNorm\(.*batch axis"):
        layer.apply(params, x[0, 0])
    with pytest.raises(TypeError, match="floating point"):
        layer.apply(params, x.astype(jnp.int32))


@pytest.mark.parametrize("num_groups", [0, -2, True, 2.0, "2", None])
def test_num_groups_must_be_a_positive_int(num_groups):
    with pytest.raises(ValueError, match=r"num_groups must be a positive int, got"):
        GroupNorm(num_groups)


def test_eps_must_be_a_positive_number():
    with pytest.raises(ValueError, match="eps must be positive"):
        GroupNorm(2, eps=0.0)
    with pytest.raises(TypeError, match="eps must be a number"):
        GroupNorm(2, eps="1e-5")
    assert GroupNorm(np.int64(2)).init(jax.random.PRNGKey(0), (4,))[0] == (4,)
