"""Conv's per-example rules (layers/_conv_examples.py) against its own backward run on one example
at a time, in float64, over 1-3 spatial axes, strides, dilation, padding of every kind and groups,
each norm by all three of its routes (dW_i itself, the ghost norm from the window views' Gram,
and from the padded input's Gram).

Tolerance 1e-12 relative: the window views are copies of x (exact), and dW_i sums the same
P products per entry as backward's weight-gradient conv in another order, a few float64
roundings (~1e-15) per entry; the Gram forms sum at most a few hundred such products.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from conftest import rel_error

from jaxbp import layers as L
from jaxbp.layers import _conv_examples

RTOL = 1e-12

CASES = {
    "1d stride 2 valid": (L.Conv(3, (3,), strides=2, padding="VALID"), (9, 2)),
    "1d dilated same": (L.Conv(4, (2,), dilation=3), (7, 3)),
    "2d same": (L.Conv(5, (3, 3)), (6, 5, 2)),
    "2d strided dilated uneven": (
        L.Conv(3, (3, 2), strides=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2)),
        (7, 6, 2),
    ),
    "2d valid, rows no window reads": (L.Conv(2, (2, 2), strides=3, padding="VALID"), (7, 6, 3)),
    "2d groups": (L.Conv(6, (2, 2), groups=3, strides=2), (5, 5, 6)),
    "3d": (L.Conv(2, (2, 1, 2), strides=(1, 2, 1)), (3, 4, 3, 2)),
}


def _setup(layer, in_shape, batch=4):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(3), 3)
    _, params = layer.init(k1, in_shape)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    x = jax.random.normal(k2, (batch, *in_shape), jnp.float64)
    y = layer.forward(params, x)[0]
    dy = jax.random.normal(k3, y.shape, jnp.float64)
    one = jax.jit(jax.vmap(lambda xi, di: layer.backward(params, xi[None], di[None])[0]))
    return params, x, dy, one(x, dy)


def _sq(tree):
    return sum(jnp.sum(jnp.square(a.reshape(len(a), -1)), axis=1) for a in jax.tree.leaves(tree))


@pytest.mark.parametrize("case", CASES)
def test_per_example_rules_match_backward_per_example(case, x64):
    layer, in_shape = CASES[case]
    params, x, dy, ref = _setup(layer, in_shape)
    w = jnp.linspace(0.2, 1.5, x.shape[0])

    @jax.jit  # one compilation for the four rules, not one per eager op
    def rules(params, x, dy, w):
        return (
            layer.per_example_grads(params, x, dy), layer.per_example_sq_norms(params, x, dy),
            layer.sum_grad_squared(params, x, dy), layer.weighted_grad(params, x, dy, w),
        )  # fmt: skip

    grads, sq, squares, weighted = rules(params, x, dy, w)
    assert rel_error(grads, ref) <= RTOL
    assert rel_error(sq, _sq(ref)) <= RTOL
    assert rel_error(squares, jax.tree.map(lambda a: jnp.sum(a * a, axis=0), ref)) <= RTOL
    assert rel_error(weighted, jax.tree.map(lambda a: jnp.tensordot(w, a, axes=1), ref)) <= RTOL


ONE_GROUP = [c for c in CASES if CASES[c][0].groups == 1]


@pytest.mark.parametrize("route", ["direct", "windows", "padded"])
@pytest.mark.parametrize("case", ONE_GROUP)
def test_every_norm_route_agrees(case, route, x64, monkeypatch):
    """The norms and weighted sums with each of the three routes forced, on every one-group case
    (strides, dilation, crops, 1-3 spatial axes)."""
    layer, in_shape = CASES[case]
    params, x, dy, ref = _setup(layer, in_shape)
    monkeypatch.setattr(_conv_examples, "norm_route", lambda *a: route)
    w = jnp.linspace(-1.0, 2.0, x.shape[0])
    sq, weighted = jax.jit(
        lambda p, x, dy, w: (layer.per_example_sq_norms(p, x, dy), layer.weighted_grad(p, x, dy, w))
    )(params, x, dy, w)
    assert rel_error(sq, _sq(ref)) <= RTOL
    assert rel_error(weighted, jax.tree.map(lambda a: jnp.tensordot(w, a, axes=1), ref)) <= RTOL


def test_the_route_is_the_cheapest_for_the_shapes():
    """bench's cnn: the 8x8 convs take dW_i, the 4x4x16 and 4x4x32 ones the padded Gram; a
    strided conv on a large map, whose padded Gram is much larger than its patches', the window
    Gram; groups always dW_i."""
    route = _conv_examples.norm_route
    assert route(64, 100, 9, 1, 16, 1) == "direct"
    assert route(64, 100, 9, 16, 16, 1) == "direct"
    assert route(16, 36, 9, 16, 32, 1) == "padded"
    assert route(16, 36, 9, 32, 32, 1) == "padded"
    assert route(16, 17 * 17, 9, 64, 64, 1) == "windows"  # 16x16 input, stride 4
    assert route(16, 36, 9, 32, 32, 2) == "direct"


def test_patches_are_the_windows_read():
    """patches(x)[i, p, j, c] is the padded input the forward's window p reads at entry j: the
    forward equals the windows contracted with W (exact integers, float32)."""
    layer = L.Conv(3, (3, 2), strides=(2, 1), padding=((1, 2), (0, 1)), dilation=(2, 1))
    x = jnp.arange(2 * 7 * 5 * 2, dtype=jnp.float32).reshape(2, 7, 5, 2) % 7
    _, params = layer.init(jax.random.PRNGKey(0), (7, 5, 2))
    params = {"W": jnp.round(params["W"] * 4), "b": jnp.zeros(3)}
    y = layer.forward(params, x)[0]
    args = (3, 2), (2, 1), (2, 1), ((1, 2), (0, 1))
    windows = _conv_examples.patches(x, *args)
    assert windows.shape == (2, y.shape[1] * y.shape[2], 6, 2)
    via = jnp.einsum("bpjc,jcf->bpf", windows, params["W"].reshape(6, 2, 3))
    assert jnp.array_equal(via.reshape(y.shape), y)
