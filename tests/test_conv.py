"""Conv: the hand-written rule against jax.vjp over 1-3 spatial axes, strides, paddings,
dilations and groups; the forward against a NumPy loop; init; extreme inputs; errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close, cast, rel_error
from jax import lax

from jaxbp._compat import enable_x64
from jaxbp.layers.conv import Conv

# (layer, x's shape). Sizes that the strides do not divide (7, 9, 5...) leave trailing positions
# no window reads; ((3, 0),) pads more than the kernel spans, so the backward's padding is < 0.
CASES = [
    (Conv(3, (3,)), (2, 7, 2)),
    (Conv(4, (3,), strides=2, padding="VALID", dilation=2), (2, 10, 3)),
    (Conv(6, (2,), strides=2, padding=((0, 2),), groups=2), (2, 8, 4)),
    (Conv(3, (2,), padding=((3, 0),)), (2, 5, 2)),
    (Conv(5, (3, 3)), (2, 6, 5, 3)),
    (Conv(6, (3, 3), strides=2, groups=2), (2, 7, 6, 4)),
    (Conv(4, (3, 2), strides=(2, 1), padding=((0, 2), (1, 0)), dilation=(1, 2)), (2, 8, 7, 3)),
    (Conv(4, (3, 3), strides=2, padding="VALID", dilation=2, groups=4), (2, 9, 10, 4)),  # depthwise
    (Conv(8, (2, 2), strides=(1, 2), padding="SAME", groups=4), (1, 5, 7, 4)),  # depthwise, x2
    (Conv(4, (2, 3, 2), strides=(2, 1, 2), dilation=(1, 2, 1)), (2, 5, 6, 5, 2)),
    (Conv(6, (3, 3, 3), strides=2, padding=((0, 2), (1, 1), (2, 0)), groups=3), (1, 6, 5, 7, 3)),
]


def _id(case):
    layer, shape = case
    k, s, d = layer.kernel_size, layer.strides, layer.dilation
    return f"{len(k)}d-k{k}-s{s}-{layer.padding}-d{d}-g{layer.groups}-x{shape}".replace(" ", "")


def _normal(seed, shape, dtype):
    """Fixed NumPy draws: eager jax.random compiles once per shape, which costs seconds here."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def _setup(layer, shape, dtype):
    """Random params (b too: zero would hide a missing bias), x, and dy of y's shape."""
    w_shape = (*layer.kernel_size, shape[-1] // layer.groups, layer.features)
    W = _normal(0, w_shape, dtype) / math.sqrt(math.prod(w_shape[:-1]))
    params, x = {"W": W, "b": _normal(1, (layer.features,), dtype)}, _normal(2, shape, dtype)
    return params, x, _normal(3, jax.eval_shape(layer.apply, params, x).shape, dtype)


def _rule_and_reference(layer):
    """One compiled function per layer: y, the residual, the hand-written rule, jax.vjp of the
    forward, and init's output shape (carried by a zero-size array; traced, so W is not drawn)."""

    @jax.jit
    def both(params, x, dy):
        y, residual = layer.forward(params, x)
        _, vjp = jax.vjp(layer.apply, params, x)
        out_shape, _ = layer.init(jax.random.PRNGKey(0), x.shape[1:])
        return (
            y,
            residual,
            layer.backward(params, residual, dy),
            vjp(dy),
            jnp.zeros((*out_shape, 0)),
        )

    return both


def _np_conv(layer, params, x):
    """The forward in NumPy float64, one kernel offset and one group at a time."""
    x, W, b = (np.asarray(a, np.float64) for a in (x, params["W"], params["b"]))
    k, s, d, g = layer.kernel_size, layer.strides, layer.dilation, layer.groups
    spans = [(ki - 1) * di + 1 for ki, di in zip(k, d)]
    pads = layer.padding
    if isinstance(pads, str):  # what SAME and VALID mean in JAX, as lax states it
        pads = lax.padtype_to_pads(x.shape[1:-1], spans, s, pads)
    xp = np.pad(x, [(0, 0), *pads, (0, 0)])
    out = [(n - e) // si + 1 for n, e, si in zip(xp.shape[1:-1], spans, s)]
    cg, fg = x.shape[-1] // g, layer.features // g
    y = np.zeros((x.shape[0], *out, layer.features))
    for j in np.ndindex(*k):
        starts = [ji * di for ji, di in zip(j, d)]
        rows = (slice(a, a + si * (o - 1) + 1, si) for a, si, o in zip(starts, s, out))
        patch = xp[(slice(None), *rows, slice(None))]  # x_pad[o s + j d] for every o
        for i in range(g):
            c, f = slice(i * cg, (i + 1) * cg), slice(i * fg, (i + 1) * fg)
            y[..., f] += patch[..., c] @ W[j][:, f]  # W[j]: (in // groups, features)
    return y + b


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_backward_matches_jax_vjp_float64(case, key, x64):
    layer, shape = case
    params, x, dy = _setup(layer, shape, jnp.float64)
    y, residual, mine, (dparams_ref, dx_ref), out = _rule_and_reference(layer)(params, x, dy)
    # 1e-12: both sides are sums of products in float64; only the order of rounding may differ.
    assert_trees_close(mine[0], dparams_ref, rtol=1e-12, what="dparams")
    assert_trees_close(mine[1], dx_ref, rtol=1e-12, what="dx")
    # The forward itself, against NumPy: jax.vjp only referees the backward of this forward.
    assert rel_error(y, _np_conv(layer, params, x)) <= 1e-13
    assert y.shape[1:] == out.shape[:-1]  # init computes the output shape
    assert residual.shape == x.shape  # the one residual is x


@pytest.mark.parametrize("case", [CASES[2], CASES[6], CASES[10]], ids=_id)
def test_extreme_float32_inputs_stay_finite_and_accurate(case):
    layer, shape = case
    params, x, dy = _setup(layer, shape, jnp.float32)
    x = 1e4 * jnp.sign(x)
    y, _, (dparams, dx), _, _ = _rule_and_reference(layer)(params, x, dy)
    for what, tree in (("y", y), ("dparams", dparams), ("dx", dx)):
        assert all(jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(tree)), what
    # Against jax.vjp in float64 at the same inputs: sums of at most a few hundred float32
    # products, so a norm-wise relative error of 1e-5 (about 100 ulps) holds on any x86 CPU.
    with enable_x64():
        args = cast((params, x, dy), jnp.float64)
        reference = _rule_and_reference(layer)(*args)[3]
        assert rel_error((dparams, dx), reference) <= 1e-5


def test_init_is_lecun_normal_over_the_group_fan_in(key):
    layer = Conv(64, (3, 3), groups=2)
    out, params = layer.init(key, (9, 8, 16))
    assert out == (9, 8, 64)
    assert params["W"].shape == (3, 3, 8, 64) and params["b"].shape == (64,)
    np.testing.assert_array_equal(params["b"], 0)
    # fan_in = 3 * 3 * 16 / 2 = 72; 4608 samples put the sample std within 5% of 1/sqrt(72).
    np.testing.assert_allclose(np.std(params["W"]), 1 / math.sqrt(72), rtol=0.05)
    assert Conv(2, (3,), strides=2, padding="VALID").init(key, (9, 1))[0] == (4, 2)


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: Conv(2.0, (3,)), TypeError, r"Conv: features must be an int"),
        (lambda: Conv(0, (3,)), ValueError, r"Conv: features must be positive"),
        (lambda: Conv(6, (3,), groups=4), ValueError, r"features \(6\).*divisible by groups \(4\)"),
        (lambda: Conv(2, 3), TypeError, r"kernel_size must be a tuple of 1 to 3 ints"),
        (lambda: Conv(2, (3,) * 4), TypeError, r"kernel_size must be a tuple of 1 to 3 ints"),
        (lambda: Conv(2, (3, 0)), ValueError, r"kernel_size must be at least 1"),
        (lambda: Conv(2, (3, 3), strides=0), ValueError, r"strides must be at least 1"),
        (lambda: Conv(2, (3, 3), strides=(1, 2, 1)), ValueError, r"strides needs one entry per"),
        (lambda: Conv(2, (3,), dilation=-1), ValueError, r"dilation must be at least 1"),
        (lambda: Conv(2, (3,), dilation=1.5), TypeError, r"dilation must be an int or a tuple"),
        (lambda: Conv(2, (3,), padding="same"), ValueError, r"padding must be 'SAME', 'VALID'"),
        (lambda: Conv(2, (3, 3), padding=((1, 1),)), ValueError, r"or 2 \(low, high\) pairs"),
        (lambda: Conv(2, (3,), padding=((1, -1),)), ValueError, r"non-negative ints"),
        (lambda: Conv(2, (3,), padding=(1, 1)), ValueError, r"padding must be"),
    ],
)
def test_bad_options_are_rejected(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_bad_inputs_are_rejected(key):
    layer = Conv(6, (3, 3), padding="VALID", groups=2)
    params = _setup(layer, (2, 5, 5, 4), jnp.float32)[0]
    name = r"Conv\(features=6, kernel_size=\(3, 3\)"
    with pytest.raises(ValueError, match=rf"{name}.*with 2 spatial axes \(rank 4\).*\(2, 5, 4\)"):
        layer.forward(params, jnp.ones((2, 5, 4)))
    with pytest.raises(ValueError, match=rf"{name}.*input channels \(3\).*groups \(2\)"):
        layer.forward(params, jnp.ones((2, 5, 5, 3)))
    with pytest.raises(ValueError, match=rf"{name}.*in // groups = 2.*\(batch, \*spatial, 4\)"):
        layer.forward(params, jnp.ones((2, 5, 5, 6)))
    with pytest.raises(ValueError, match=rf"{name}.*spans 3 positions along spatial axis 1.*"
                       r"2 \+ 0 \+ 0 = 2"):  # fmt: skip
        layer.forward(params, jnp.ones((2, 5, 2, 4)))
    with pytest.raises(TypeError, match="floating point"):
        layer.forward(params, jnp.ones((2, 5, 5, 4), jnp.int32))
    # init raises on the same problems, from the per-example shape.
    with pytest.raises(ValueError, match=r"input shape must be \(\*spatial, channels\) with 2"):
        layer.init(key, (5, 4))
    with pytest.raises(ValueError, match=r"input channels \(3\).*groups \(2\)"):
        layer.init(key, (5, 5, 3))
    with pytest.raises(ValueError, match=r"spans 5 positions along spatial axis 0.*4 \+ 0 \+ 0"):
        Conv(2, (3, 3), padding="VALID", dilation=2).init(key, (4, 9, 1))


def test_params_of_the_wrong_structure_name_the_expected_keys(key):
    layer = Conv(6, (3, 3), groups=2)
    params, x, _ = _setup(layer, (2, 5, 5, 4), jnp.float32)
    want = (
        r"params must be \{'W': \(\*kernel_size, in // groups, features\) = "
        r"\(3, 3, in // 2, 6\), 'b': \(6,\)\}"
    )
    for bad in (
        {"W": params["W"]},
        (params["W"], params["b"]),
        {**params, "W": params["W"][:2]},
        {**params, "W": params["W"][None]},
        {**params, "b": params["b"][:5]},
    ):
        with pytest.raises(ValueError, match=rf"Conv\(.*{want}, got"):
            jax.jit(layer.forward)(bad, x)  # at trace time
