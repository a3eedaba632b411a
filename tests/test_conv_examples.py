"""Conv's per-example rules (layers/_conv_examples.py) against its own backward run on one example
at a time, in float64, over 1-3 spatial axes, strides, dilation, padding of every kind and groups,
each norm by both of its routes (dW_i itself and the ghost Gram form).

Tolerance 1e-12 relative: the window views are copies of x (exact), and dW_i sums the same
P products per entry as backward's weight-gradient conv in another order, a few float64
roundings (~1e-15) per entry.
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


@pytest.mark.parametrize("ghost", [True, False])
def test_both_norm_routes_agree(ghost, x64, monkeypatch):
    """The same layer's norms and weighted sums with the route forced each way."""
    layer, in_shape = CASES["2d strided dilated uneven"]
    params, x, dy, ref = _setup(layer, in_shape)
    monkeypatch.setattr(_conv_examples, "ghost_cheaper", lambda *a: ghost)
    assert rel_error(layer.per_example_sq_norms(params, x, dy), _sq(ref)) <= RTOL
    w = jnp.linspace(-1.0, 2.0, x.shape[0])
    weighted = jax.tree.map(lambda a: jnp.tensordot(w, a, axes=1), ref)
    assert rel_error(layer.weighted_grad(params, x, dy, w), weighted) <= RTOL


def test_patches_are_the_windows_read():
    """patches(x)[i, p, j, c] is the padded input the forward's window p reads at entry j: the
    forward equals the windows contracted with W (exact integers, float32)."""
    layer = L.Conv(3, (3, 2), strides=(2, 1), padding=((1, 2), (0, 1)), dilation=(2, 1))
    x = jnp.arange(2 * 7 * 5 * 2, dtype=jnp.float32).reshape(2, 7, 5, 2) % 7
    _, params = layer.init(jax.random.PRNGKey(0), (7, 5, 2))
    params = {"W": jnp.round(params["W"] * 4), "b": jnp.zeros(3)}
    y = layer.forward(params, x)[0]
    windows = _conv_examples.patches(x, (3, 2), (2, 1), (2, 1), ((1, 2), (0, 1)))
    assert windows.shape == (2, y.shape[1] * y.shape[2], 6, 2)
    via = jnp.einsum("bpjc,jcf->bpf", windows, params["W"].reshape(6, 2, 3))
    assert jnp.array_equal(via.reshape(y.shape), y)
