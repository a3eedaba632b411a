"""MaxPool, AvgPool and GlobalAvgPool: the hand-written rules against jax.vjp over 1-3 spatial
axes, strides and paddings; the forward against NumPy; ties; the divisor at padded edges;
extreme inputs; errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close, cast, rel_error
from jax import lax

from jaxbp._compat import enable_x64
from jaxbp.layers.pool import AvgPool, GlobalAvgPool, MaxPool


def _windows(cls, **options):
    """(layer, x's shape): strides by default (the window), 1 and 2; SAME, VALID and asymmetric
    pairs; sizes the strides do not divide (7, 5), so trailing positions go unread."""
    return [
        (cls((2,), **options), (2, 7, 3)),
        (cls((3,), strides=2, padding="SAME", **options), (2, 8, 2)),
        (cls((3, 3), strides=1, padding="SAME", **options), (2, 5, 6, 2)),
        (cls((2, 3), strides=(2, 1), padding=((0, 1), (2, 0)), **options), (2, 7, 6, 3)),
        (cls((3, 2), strides=2, padding="VALID", **options), (1, 7, 5, 2)),
        (cls((2, 2, 2), padding="SAME", **options), (1, 5, 4, 3, 2)),
        (
            cls((3, 1, 2), strides=(2, 1, 1), padding=((1, 0), (0, 0), (0, 1)), **options),
            (1, 6, 3, 4, 2),
        ),  # fmt: skip
    ]


CASES = [
    *_windows(MaxPool),
    *_windows(AvgPool),
    *_windows(AvgPool, count_include_pad=False),
    (GlobalAvgPool(), (2, 7, 3)),
    (GlobalAvgPool(), (2, 3, 4, 5)),
    (GlobalAvgPool(), (1, 2, 3, 4, 2)),
]


def _id(case):
    layer, shape = case
    return f"{layer!r}-x{shape}".replace(" ", "")


def _normal(seed, shape, dtype):
    """Fixed NumPy draws: eager jax.random compiles once per shape, which costs seconds here."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def _setup(layer, shape, dtype):
    x = _normal(0, shape, dtype)
    return x, _normal(1, jax.eval_shape(lambda x: layer.apply((), x), x).shape, dtype)


def _rule_and_reference(layer):
    """One compiled function per layer: y, the residuals, the hand-written dx, jax.vjp's dx,
    and init's output shape (carried by a zero-size array)."""

    @jax.jit
    def both(x, dy):
        y, residuals = layer.forward((), x)
        _, vjp = jax.vjp(lambda x: layer.apply((), x), x)
        dparams, dx = layer.backward((), residuals, dy)
        out_shape, params = layer.init(jax.random.PRNGKey(0), x.shape[1:])
        assert dparams == () and params == ()
        return y, residuals, dx, vjp(dy)[0], jnp.zeros((*out_shape, 0))

    return both


def _np_pool(layer, x):
    """The forward in NumPy float64: every window, in full, from a padded copy of x."""
    x = np.asarray(x, np.float64)
    if isinstance(layer, GlobalAvgPool):
        return x.mean(axis=tuple(range(1, x.ndim - 1)))
    w, s, pads = layer.window, layer.strides, layer.padding
    if isinstance(pads, str):  # what SAME and VALID mean in JAX, as lax states it
        pads = lax.padtype_to_pads(x.shape[1:-1], w, s, pads)
    fill = -np.inf if isinstance(layer, MaxPool) else 0.0
    xp = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=fill)
    real = np.pad(np.ones(x.shape[1:-1]), pads)  # 1 at input positions, 0 at padding
    out = [(n - wi) // si + 1 for n, wi, si in zip(xp.shape[1:-1], w, s)]
    y = np.zeros((x.shape[0], *out, x.shape[-1]))
    for o in np.ndindex(*out):
        box = tuple(slice(oi * si, oi * si + wi) for oi, si, wi in zip(o, s, w))
        patch = xp[(slice(None), *box, slice(None))].reshape(x.shape[0], -1, x.shape[-1])
        if isinstance(layer, MaxPool):
            y[(slice(None), *o)] = patch.max(1)
        else:
            divisor = np.prod(w) if layer.count_include_pad else real[box].sum()
            y[(slice(None), *o)] = patch.sum(1) / divisor
    return y


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_backward_matches_jax_vjp_float64(case, x64):
    layer, shape = case
    x, dy = _setup(layer, shape, jnp.float64)
    y, residuals, dx, dx_ref, out = _rule_and_reference(layer)(x, dy)
    # 1e-12: both sides add the same float64 terms (at most prod(window) per input); only the
    # order of rounding may differ.
    assert_trees_close(dx, dx_ref, rtol=1e-12, what="dx")
    # The forward itself, against NumPy: jax.vjp only referees the backward of this forward.
    assert rel_error(y, _np_pool(layer, x)) <= 1e-14
    assert y.shape[1:] == out.shape[:-1]  # init computes the output shape
    if isinstance(layer, MaxPool):
        won, carrier = residuals  # the winning offset of every window, and x's shape
        assert won.shape == y.shape and won.dtype == jnp.int32 and carrier.shape == (*x.shape, 0)
    else:
        assert residuals.shape == (*x.shape, 0)  # x's shape only


# ---------------------------------------------------------------------------------------------
# MaxPool's ties, AvgPool's divisor


def _dx_and_reference(layer, x, dy):
    return _rule_and_reference(layer)(x, dy)[2:4]


@pytest.mark.parametrize(
    "layer, shape",
    [
        (MaxPool((3, 3), strides=1, padding="SAME"), (1, 4, 5, 2)),  # overlapping windows
        (MaxPool((2, 2)), (1, 4, 4, 1)),
        (MaxPool((2, 2, 2), strides=1, padding=((1, 0), (0, 1), (1, 1))), (1, 3, 3, 3, 1)),
    ],
    ids=repr,
)
def test_maxpool_ties_on_a_constant_input_agree_with_jax_grad_exactly(layer, shape):
    # 0, as after a ReLU: all-zero windows tie everywhere, and must never tie with the padding.
    x = jnp.zeros(shape)
    out = jax.eval_shape(lambda x: layer.apply((), x), x).shape
    # Integer cotangents: every sum is exact, so the two must agree bit for bit.
    dy = jnp.arange(1.0, 1 + np.prod(out)).reshape(out)
    dx, dx_ref = _dx_and_reference(layer, x, dy)
    np.testing.assert_array_equal(dx, dx_ref)


def test_maxpool_two_equal_maxima_go_to_the_first_in_row_major_order():
    layer = MaxPool((2, 2))
    # One window; maxima at (0, 1) and (1, 0): row-major order meets (0, 1) first.
    x = jnp.array([[0.0, 3.0], [3.0, 1.0]])[None, :, :, None]
    dy = jnp.full((1, 1, 1, 1), 7.0)
    dx, dx_ref = _dx_and_reference(layer, x, dy)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[0.0, 7.0], [0.0, 0.0]])
    np.testing.assert_array_equal(dx, dx_ref)
    # Overlapping windows sharing their tied maxima, against jax.grad, exactly.
    layer = MaxPool((2, 2), strides=1, padding="SAME")
    x = jnp.array([[1.0, 4.0, 4.0], [4.0, 0.0, 4.0], [2.0, 4.0, 1.0]])[None, :, :, None]
    dy = jnp.arange(1.0, 10.0).reshape(1, 3, 3, 1)
    np.testing.assert_array_equal(*_dx_and_reference(layer, x, dy))


@pytest.mark.parametrize("include", [True, False], ids=["count_include_pad", "count_real"])
def test_avgpool_divisor_at_padded_edges_agrees_with_jax_grad(include):
    layer = AvgPool((3, 3), strides=1, padding="SAME", count_include_pad=include)
    x, dy = jnp.ones((1, 4, 5, 1)), jnp.ones((1, 4, 5, 1))
    y, _, dx, dx_ref, _ = _rule_and_reference(layer)(x, dy)
    # A corner window holds 4 real ones among 9 positions; an inner one 9 (float32: 1e-6).
    np.testing.assert_allclose(y[0, 0, 0, 0], 4 / 9 if include else 1.0, rtol=1e-6)
    np.testing.assert_allclose(y[0, 1, 1, 0], 1.0, rtol=1e-6)
    # float32: sums of at most 9 quotients; 1e-6 is a few ulps.
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-6)
    # The corner input lies in 4 windows: the corner (4 real), two edges (6 real), an inner (9).
    want = 4 / 9 if include else 1 / 4 + 2 / 6 + 1 / 9
    np.testing.assert_allclose(dx[0, 0, 0, 0], want, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Extreme float32 inputs


@pytest.mark.parametrize("case", [CASES[3], CASES[9], CASES[19], CASES[-2]], ids=_id)
def test_extreme_float32_inputs_stay_finite_and_accurate(case):
    layer, shape = case
    x, dy = _setup(layer, shape, jnp.float32)
    x = 1e4 * jnp.sign(x)
    y, _, dx, _, _ = _rule_and_reference(layer)(x, dy)
    assert jnp.isfinite(y).all() and jnp.isfinite(dx).all()
    # Against jax.vjp in float64 at the same inputs: sums of at most 12 float32 terms; 1e-6 is
    # a few ulps.
    with enable_x64():
        reference = _rule_and_reference(layer)(*cast((x, dy), jnp.float64))[3]
        assert rel_error(dx, reference) <= 1e-6


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("cls", [MaxPool, AvgPool])
def test_bad_options_are_rejected(cls):
    name = cls.__name__
    for window in (2, (2,) * 4, ()):
        with pytest.raises(TypeError, match=rf"{name}: window must be a tuple of 1 to 3 ints"):
            cls(window)
    with pytest.raises(ValueError, match=rf"{name}: window must be at least 1"):
        cls((2, 0))
    with pytest.raises(ValueError, match=rf"{name}: strides must be at least 1"):
        cls((2, 2), strides=(1, 0))
    with pytest.raises(ValueError, match=rf"{name}: strides needs one entry per spatial axis"):
        cls((2, 2), strides=(1, 1, 1))
    for padding in ("FULL", ((1, 1),), ((0, -1), (0, 0)), [1, 1]):
        with pytest.raises(ValueError, match=rf"{name}: padding must be 'SAME', 'VALID' or 2"):
            cls((2, 2), padding=padding)
    with pytest.raises(ValueError, match=rf"{name}: padding must be smaller than the window"):
        cls((2, 2), padding=((0, 2), (0, 0)))


@pytest.mark.parametrize("layer", [MaxPool((3, 3)), AvgPool((3, 3), padding=((1, 1), (0, 0)))])
def test_bad_inputs_are_rejected(layer, key):
    name = type(layer).__name__
    with pytest.raises(ValueError, match=rf"{name}\(.*with 2 spatial axes \(rank 4\).*\(2, 5, 4\)"):
        layer.forward((), jnp.ones((2, 5, 4)))
    with pytest.raises(ValueError, match=rf"{name}\(.*spans 3 positions along spatial axis 1"):
        jax.jit(layer.apply)((), jnp.ones((2, 5, 1, 4)))
    with pytest.raises(TypeError, match="floating point"):
        layer.forward((), jnp.ones((2, 5, 5, 4), jnp.int32))
    with pytest.raises(ValueError, match=r"input shape must be \(\*spatial, channels\) with 2"):
        layer.init(key, (5, 4))
    with pytest.raises(ValueError, match=r"spans 3 positions along spatial axis 1"):
        layer.init(key, (5, 1, 4))


def test_global_avg_pool_shapes_and_errors(key):
    layer = GlobalAvgPool()
    assert layer.init(key, (4, 5, 3)) == ((3,), ())
    with pytest.raises(ValueError, match=r"GlobalAvgPool\(\).*at least one spatial axis.*\(2, 3\)"):
        layer.forward((), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"GlobalAvgPool\(\): input shape.*at least one spatial"):
        layer.init(key, (3,))


def test_max_pool_after_batchnorm_and_relu_matches_jax_grad_under_jit(x64):
    """Ties at zero after a ReLU, x computed by a fusion XLA may repeat: the winner comes from
    the forward's own pass, so backprop agrees with jax.grad through the whole chain."""
    from jaxbp import autodiff, backprop, softmax_cross_entropy
    from jaxbp import layers as L

    model = L.serial(L.Conv(4, (3, 3)), L.BatchNorm(), L.Relu(), MaxPool((2, 2)), L.Flatten(),
                     L.Dense(3))  # fmt: skip
    _, params = model.init(jax.random.PRNGKey(3), (8, 8, 1))
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    state = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), L.init_state(model, params))
    x = jax.random.normal(jax.random.PRNGKey(3), (5, 8, 8, 1), jnp.float64)
    y = jnp.arange(5) % 3
    run = jax.jit(lambda f, p: f(model, softmax_cross_entropy, p, x, y, state=state)[1],
                  static_argnums=0)  # fmt: skip
    ours, ref = (jnp.concatenate([g.ravel() for g in jax.tree.leaves(run(f, params))])
                 for f in (backprop, autodiff))  # fmt: skip
    # 1e-12 of the whole gradient: float64 formulas in another order (the bias before BatchNorm
    # has an exactly-zero gradient, so per-leaf ratios would compare noise with noise).
    assert float(jnp.linalg.norm(ours - ref)) <= 1e-12 * float(jnp.linalg.norm(ref))
