"""Every layer's hand-written rule against jax.vjp, extreme inputs, and its errors."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close, cast, np_activation, np_forward
from scipy import special

from jaxbp import layers as L

# (layer, per-example input shape); options and both Gelu forms are covered.
LAYERS = [
    (L.Dense(3), (4,)),
    (L.Sigmoid(), (5,)),
    (L.Tanh(), (5,)),
    (L.Relu(), (5,)),
    (L.LeakyRelu(), (5,)),
    (L.LeakyRelu(negative_slope=0.3), (5,)),
    (L.Elu(), (5,)),
    (L.Elu(alpha=0.5), (5,)),
    (L.Gelu(), (5,)),
    (L.Gelu(approximate=False), (5,)),
    (L.Softplus(), (5,)),
    (L.Silu(), (5,)),
    (L.Identity(), (5,)),
    (L.Softmax(), (5,)),
    (L.LogSoftmax(), (5,)),
    (L.Flatten(), (2, 3)),
    (L.serial(L.Flatten(), L.Dense(4), L.Tanh(), L.Dense(2)), (2, 3)),
    (L.mlp([4, 3, 2], "elu", "log_softmax"), (3,)),
]
IDS = [repr(layer) for layer, _ in LAYERS]

# jax.nn's reference for each elementwise activation and the last-axis ones.
REFERENCE = {
    "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.01), "elu": jax.nn.elu, "gelu": jax.nn.gelu,
    "softplus": jax.nn.softplus, "silu": jax.nn.silu, "identity": lambda x: x,
    "softmax": jax.nn.softmax, "log_softmax": jax.nn.log_softmax,
}  # fmt: skip


def _setup(layer, shape, key, dtype):
    k1, k2, k3 = jax.random.split(key, 3)
    out_shape, params = layer.init(k1, shape)
    # Biases start at zero: move every param off init, so a dropped bias or db shows.
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: np.asarray(a) + 0.1 * rng.standard_normal(a.shape), params)
    # Scale 3 puts inputs on both sides of every kink and into the tails of the saturating ones.
    x = 3 * jax.random.normal(k2, (6, *shape), dtype)
    dy = jax.random.normal(k3, (6, *out_shape), dtype)
    return out_shape, cast(params, dtype), x, dy


@pytest.mark.parametrize("layer, shape", LAYERS, ids=IDS)
def test_backward_matches_jax_vjp_float64(layer, shape, key, x64):
    out_shape, params, x, dy = _setup(layer, shape, key, jnp.float64)
    y, residuals = layer.forward(params, x)
    assert y.shape == (6, *out_shape)
    dparams, dx = layer.backward(params, residuals, dy)
    _, vjp = jax.vjp(lambda p, x: layer.apply(p, x), params, x)
    dparams_ref, dx_ref = vjp(dy)
    # The forward against NumPy/SciPy's formulas: float64 ulps of a few operations per layer.
    assert_trees_close(y, jnp.asarray(np_forward(layer, params, x)), rtol=1e-13, what="forward")
    # 1e-12: both sides are exact formulas in float64; only rounding order differs.
    assert_trees_close(dparams, dparams_ref, rtol=1e-12, what="dparams")
    assert_trees_close(dx, dx_ref, rtol=1e-12, what="dx")


@pytest.mark.parametrize("layer, shape", LAYERS, ids=IDS)
def test_backward_under_jit_float32(layer, shape, key):
    _, params, x, dy = _setup(layer, shape, key, jnp.float32)

    @jax.jit
    def rule(params, x, dy):
        y, residuals = layer.forward(params, x)
        return layer.backward(params, residuals, dy)

    _, vjp = jax.vjp(lambda p, x: layer.apply(p, x), params, x)
    # float32: agreement to a few ulps of the largest terms; XLA may fuse differently under jit.
    assert_trees_close(rule(params, x, dy), vjp(dy), rtol=1e-5, what="float32 under jit")


def test_saturating_rules_keep_only_the_output(key):
    x = jax.random.normal(key, (3, 4))
    for layer in (L.Sigmoid(), L.Tanh(), L.Relu(), L.Softmax(), L.LogSoftmax()):
        y, residuals = layer.forward((), x)
        assert residuals is y, f"{layer!r} should keep only its output"
    for layer in (L.Identity(), L.Flatten()):  # nothing but (at most) a zero-size shape carrier
        _, residuals = layer.forward((), x)
        assert sum(leaf.size for leaf in jax.tree.leaves(residuals)) == 0, layer


# Every scale the README names (|x| = 1e4) and the tails between: 100 puts sigmoid' at 1e-44,
# below float32's normal range. The second row has ties and both signs for the last-axis layers.
EXTREME = np.array(
    [[-1e4, -100.0, -20.0, -1.0, 0.0, 1.0, 20.0, 100.0, 1e4],
     [1e4, 1e4, -1e4, -1e4, 30.0, -30.0, 1e3, -1e3, 1e4]], np.float32
)  # fmt: skip
DY = np.linspace(-2, 2, EXTREME.size, dtype=np.float32).reshape(EXTREME.shape)  # no cancelling
EPS32 = float(np.finfo(np.float32).eps)
TINY32 = float(np.finfo(np.float32).tiny)  # XLA on CPU may flush results below it to zero


@functools.cache
def xla_primitive_error() -> float:
    """The largest error of XLA's float32 exp, expm1, log1p, tanh, logistic and erf, in eps of
    the float64 value, over 200,000 inputs from 1e-6 to 1e4 in size, both signs, and EXTREME.

    XLA documents no accuracy for them: they are polynomial and rational approximations that
    change with its version and the ISA, so the bounds below are built from this build's own
    (<= 3 eps measured on jax 0.10, AVX-512 and AVX2 alike) rather than from a fixed ulp count.
    """
    x = np.geomspace(1e-6, 1e4, 100_000, dtype=np.float32)
    x = np.concatenate([x, -x, EXTREME.ravel()])
    pairs = [
        (jnp.exp, np.exp), (jnp.expm1, np.expm1), (jnp.log1p, np.log1p), (jnp.tanh, np.tanh),
        (jax.nn.sigmoid, special.expit), (jax.scipy.special.erf, special.erf),
    ]  # fmt: skip
    worst = 0.0
    with np.errstate(all="ignore"):
        for f, truth in pairs:
            got, want = np.asarray(jax.jit(f)(x), np.float64), truth(x.astype(np.float64))
            normal = (np.abs(want) >= TINY32) & (np.abs(want) <= np.finfo(np.float32).max)
            error = np.abs(got[normal] - want[normal]) / (EPS32 * np.abs(want[normal]))
            worst = max(worst, float(error.max()))
    return worst


def assert_within(got, want, bound, what: str) -> None:
    """|got - want| <= bound, elementwise; on failure, the worst entry."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    excess = np.abs(got - want) - bound
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    assert np.all(excess <= 0), f"{what}: at {worst} {got[worst]!r} vs {want[worst]!r}"


@pytest.mark.parametrize("name", list(L.ACTIVATIONS))
def test_extreme_float32_inputs_stay_finite_and_match_the_truth_and_jax_nn(name):
    layer = L.activation(name)
    x, dy = jnp.asarray(EXTREME), jnp.asarray(DY)
    y, residuals = layer.forward((), x)
    _, dx = layer.backward((), residuals, dy)
    assert jnp.all(jnp.isfinite(y)) and jnp.all(jnp.isfinite(dx)), (name, y, dx)
    y64, dx64 = np_activation(layer, EXTREME, DY)
    # y: one evaluation of an XLA primitive, within k eps of its value (k measured on this build),
    # times at most 2.2 where GELU's 1 + tanh or 1 + erf cancels (x = -1), hence 3k; then a
    # product or sum or two, 4 eps; below float32's normal range, absolute. dx: the same relative
    # error, plus eps of the cotangent that reaches the entry, absolutely: derivatives taken from
    # a saved y lose its absolute error in 1 - y (or 1 - y^2, twice it) where y is near +-1, so
    # 2k + 2 eps; the last-axis rules' sum(dy y) brings every dy of the row.
    k = xla_primitive_error()
    assert k < 64, f"XLA's float32 primitives err by {k:.0f} eps here: the bounds would say little"
    reach = np.abs(DY) + (np.abs(DY).sum(-1, keepdims=True) if name.endswith("softmax") else 0)
    y_bound = (3 * k + 4) * EPS32 * np.abs(y64) + TINY32
    dx_bound = (3 * k + 4) * EPS32 * np.abs(dx64) + (2 * k + 2) * EPS32 * reach
    assert_within(y, y64, y_bound, f"{name}: y against float64")
    assert_within(dx, dx64, dx_bound, f"{name}: dx against float64")
    # jax.nn (and jax.vjp of it), where those are finite: each is within the bound of the truth.
    y_ref, vjp = jax.vjp(REFERENCE[name], x)
    (dx_ref,) = vjp(dy)
    finite = np.asarray(jnp.isfinite(y_ref) & jnp.isfinite(dx_ref))
    assert_within(y[finite], y_ref[finite], 2 * y_bound[finite], f"{name}: y against jax.nn")
    assert_within(dx[finite], dx_ref[finite], 2 * dx_bound[finite], f"{name}: dx against jax.vjp")


def test_init_shapes_match_forward(key):
    model = L.serial(L.Flatten(), L.Dense(7), L.Relu(), L.Dense(3), L.Softmax())
    out_shape, params = model.init(key, (2, 4))
    assert out_shape == (3,)
    assert params[1]["W"].shape == (8, 7) and params[3]["b"].shape == (3,)
    assert params[0] == () and params[2] == ()
    assert model.apply(params, jnp.ones((5, 2, 4))).shape == (5, 3)


def test_mlp_is_the_contracts_network():
    model = L.mlp([2, 1], "sigmoid", "sigmoid")
    assert model.layers == (L.Dense(2), L.Sigmoid(), L.Dense(1), L.Sigmoid())
    assert L.mlp([3], "relu").layers == (L.Dense(3),)


def test_activation_by_name_with_options():
    assert L.activation("leaky_relu", negative_slope=0.2) == L.LeakyRelu(0.2)
    assert set(L.ACTIVATIONS) == set(
        "sigmoid tanh relu leaky_relu elu gelu softplus silu identity softmax log_softmax".split()
    )


def test_unknown_activation_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown activation 'sigmod'.*sigmoid.*log_softmax"):
        L.activation("sigmod")
    with pytest.raises(ValueError, match="unknown activation"):
        L.mlp([3, 1], "rectifier")


def test_bad_option_is_a_type_error():
    with pytest.raises(TypeError, match="relu"):
        L.activation("relu", negative_slope=0.1)


def test_wrong_feature_count_names_the_layer_and_both_sizes(key):
    model = L.mlp([4, 1], "tanh")
    _, params = model.init(key, (3,))
    with pytest.raises(
        ValueError, match=r"layer \[0\] Dense\(features=4\).*\(batch, \.\.\., 3\).*\(5, 2\)"
    ):
        model.apply(params, jnp.ones((5, 2)))
    with pytest.raises(ValueError, match=r"layer \[0\]"):
        jax.jit(model.apply)(params, jnp.ones((5, 2)))  # raised while tracing, before any work


def test_bad_inputs_are_rejected(key):
    _, params = L.Dense(2).init(key, (3,))
    with pytest.raises(ValueError, match="batch axis"):
        L.Dense(2).forward(params, jnp.ones(3))
    with pytest.raises(TypeError, match="floating point"):
        L.Dense(2).forward(params, jnp.ones((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="positive"):
        L.Dense(0)
    with pytest.raises(TypeError, match="not a layer"):
        L.serial(L.Dense(2), "relu")
    with pytest.raises(ValueError, match="needs a tuple of 2 params"):
        L.serial(L.Dense(2), L.Relu()).apply(params, jnp.ones((2, 3)))


def test_layers_are_hashable_values():
    assert hash(L.mlp([3, 2], "relu")) == hash(L.mlp([3, 2], "relu"))
    with pytest.raises(AttributeError):
        L.Dense(3).features = 4
