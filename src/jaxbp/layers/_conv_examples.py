"""Conv's per-example rules, from the windows each output position reads (the quantities).

Example i's weight gradient is dW_i[j, c, f] = sum_o x_pad_i[o s + j d, c] dy_i[o, f]: for each
of the O = prod(kernel) window entries j, the input strided and shifted by j d, contracted with
dy over the P output positions. `patches` lays those O shifted views side by side, (batch, P, O,
in), by strided slices of the padded input: data movement only. (lax.conv_general_dilated_patches
gives the same values as a convolution with an identity kernel of K = O in outputs, K times the
layer's own cost.) Then dW_i is one batched matrix product, dy_i^T (F, P) by patches_i (P, K),
with dy transposed first so that XLA's CPU dot sees its operands in row-major order (a transposed
operand inside the dot ran 2-5x slower here).

Its squared norm is either ||dW_i||^2 from dW_i (P K F multiply-adds per example) or the ghost
norm sum_{o,o'} (patch_o . patch_o')(dy_o . dy_o') from two (P, P) Gram matrices (P^2 (K + F)):
the cheaper one is taken, layer by layer.
"""

from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
from jax import lax

from jaxbp._types import Array

__all__ = ["patches", "per_example_dW", "ghost_cheaper", "dW_layout"]

Pairs = tuple[tuple[int, int], ...]


def patches(x: Array, kernel: tuple, strides: tuple, dilation: tuple, pairs: Pairs) -> Array:
    """(batch, P, O, in): for every output position p (P of them, row-major) and window entry j
    (O = prod(kernel), row-major), the input value the window reads there, zero in the padding.
    pairs: the forward's (low, high) padding per spatial axis (negative crops)."""
    nd, batch, channels = len(kernel), x.shape[0], x.shape[-1]
    config = [(0, 0, 0), *((lo, hi, 0) for lo, hi in pairs), (0, 0, 0)]
    padded = lax.pad(x, jnp.zeros((), x.dtype), config)
    out = [
        (n + lo + hi - (k - 1) * d - 1) // s + 1
        for n, (lo, hi), k, d, s in zip(x.shape[1:-1], pairs, kernel, dilation, strides)
    ]
    views = []
    for j in itertools.product(*map(range, kernel)):
        start = [jj * d for jj, d in zip(j, dilation)]
        limit = [a + (o - 1) * s + 1 for a, o, s in zip(start, out, strides)]
        views.append(lax.slice(padded, (0, *start, 0), (batch, *limit, channels), (1, *strides, 1)))
    stacked = jnp.stack(views, axis=nd + 1)  # (batch, *out, O, in)
    return stacked.reshape(batch, math.prod(out), len(views), channels)


def per_example_dW(windows: Array, dy: Array, groups: int) -> Array:
    """(batch, groups, F / groups, O, in / groups): example i's dW, grouped, from
    windows = patches(x, ...) (batch, P, O, in) and dy (batch, *out, F). `dW_layout` turns it
    into W's (batch, *kernel, in / groups, F); a norm or a sum over examples need not."""
    batch, P, entries, C = windows.shape
    F = dy.shape[-1]
    # dy^T first, (batch, groups, F/g, P): the product's left operand in row-major order.
    dy_t = jnp.transpose(dy.reshape(batch, P, groups, F // groups), (0, 2, 3, 1))
    if groups == 1:
        rhs = windows.reshape(batch, 1, P, entries * C)
    else:
        split = windows.reshape(batch, P, entries, groups, C // groups)
        rhs = jnp.transpose(split, (0, 3, 1, 2, 4)).reshape(batch, groups, P, -1)
    g = jnp.einsum("bgfp,bgpk->bgfk", dy_t, rhs)
    return g.reshape(batch, groups, F // groups, entries, C // groups)


def dW_layout(g: Array, kernel: tuple) -> Array:
    """per_example_dW's (..., groups, F/g, O, in/g) -> W's layout (..., *kernel, in/g, F)."""
    *lead, groups, fg, _, cg = g.shape
    n = len(lead)
    moved = jnp.transpose(g, (*range(n), n + 2, n + 3, n, n + 1))  # (..., O, in/g, g, F/g)
    return moved.reshape(*lead, *kernel, cg, groups * fg)


def ghost_cheaper(P: int, K: int, F: int, groups: int) -> bool:
    """The ghost norm, P^2 (K + F) multiply-adds per example, against dW_i's P K F (one group:
    the Gram form does not split the channels by group)."""
    return groups == 1 and P * (K + F) < K * F
