"""Pooling, channels last: MaxPool and AvgPool over windows of 1 to 3 spatial axes, GlobalAvgPool.

A window is a kernel of ones that does not mix channels, so the padding arithmetic is Conv's:
`resolve_padding` and `transpose_padding`, from `_spatial.py`, which both read.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxbp._types import Array, Params, PRNGKey, Shape
from jaxbp.layers._base import check_input
from jaxbp.layers._spatial import (
    Pairs,
    check_input_shape,
    check_spatial_input,
    int_tuple,
    out_size,
    padding_spec,
    resolve_padding,
    transpose_padding,
    window_tuple,
)  # fmt: skip
from jaxbp.protocols import Layer


def _window_view(a: Array, offset: tuple[int, ...], strides: Shape, out: Shape) -> Array:
    """a[:, p + s o, :] for every output o: the entry at `offset` p of every window."""
    ends = (p + s * (o - 1) + 1 for p, s, o in zip(offset, strides, out))
    return lax.slice(a, (0, *offset, 0), (a.shape[0], *ends, a.shape[-1]), (1, *strides, 1))


def _window_place(v: Array, offset: tuple[int, ...], strides: Shape, shape: Shape) -> Array:
    """The transpose of _window_view: v[:, o, :] at position p + s o of zeros of `shape`."""
    out, spatial = v.shape[1:-1], shape[1:-1]
    config = [
        (p, n - p - s * (o - 1) - 1, s - 1) for p, s, o, n in zip(offset, strides, out, spatial)
    ]
    return lax.pad(v, jnp.zeros((), v.dtype), [(0, 0, 0), *config, (0, 0, 0)])


@dataclasses.dataclass(frozen=True)
class _WindowPool(Layer):
    """What MaxPool and AvgPool share: window, strides (default: the window), padding."""

    window: tuple[int, ...]
    strides: int | tuple[int, ...] | None = None
    padding: str | Sequence[tuple[int, int]] = "VALID"
    examples_independent = True  # windows over each example's own positions

    def __post_init__(self):
        owner = type(self).__name__
        window = window_tuple(owner, "window", self.window)
        nd = len(window)
        strides = window if self.strides is None else self.strides
        padding = padding_spec(owner, self.padding, nd)
        if padding not in ("SAME", "VALID") and any(
            v >= w for w, pair in zip(window, padding) for v in pair
        ):
            raise ValueError(
                f"{owner}: padding must be smaller than the window {window} (every window must "
                f"touch the input), got {self.padding!r}"
            )
        object.__setattr__(self, "window", window)  # normalised: hashable tuples
        object.__setattr__(self, "strides", int_tuple(owner, "strides", strides, nd))
        object.__setattr__(self, "padding", padding)

    def init(self, key: PRNGKey, input_shape: Shape) -> tuple[Shape, Params]:
        spatial, channels = check_input_shape(self, input_shape, len(self.window))
        return (*self._out(spatial), channels), ()

    def _pads(self, spatial: Shape) -> Pairs:
        return resolve_padding(self, self.padding, spatial, self.window, self.strides)

    def _out(self, spatial: Shape) -> Shape:
        return tuple(map(out_size, spatial, self._pads(spatial), self.window, self.strides))

    def _reduce(self, x: Array, init: float, op) -> tuple[Array, Pairs]:
        """(op over every window of x padded with init, the padding used)."""
        check_spatial_input(self, x, len(self.window))
        pads = self._pads(tuple(x.shape[1:-1]))
        dims, strides = (1, *self.window, 1), (1, *self.strides, 1)
        init = np.array(init, x.dtype)  # concrete, so jax knows the monoid (and differentiates)
        return lax.reduce_window(x, init, op, dims, strides, ((0, 0), *pads, (0, 0))), pads


@dataclasses.dataclass(frozen=True)
class MaxPool(_WindowPool):
    r"""MaxPool: y[o] = max over the window of x_pad (padding counts as -inf);
    dx[i] = sum of dy[o] over the windows o whose chosen maximum is x[i].

    Ties: each window sends dy to the FIRST of its maxima in row-major order of the window's
    offsets, padded positions included, what jax.grad of lax.reduce_window max does
    (select_and_scatter_add with `ge`). x: (batch, *spatial, C) -> (batch, *spatial', C).
    Residuals: which offset of each window won, int32 (batch, *spatial', C), and x's shape in a
    zero-size array (batch, *spatial, C, 0). The forward finds the winner
    in the same pass that takes the maximum (a running max with strict >), never by comparing x
    with y afterwards: XLA may recompute x in another fusion, a rounding apart.

    **Forward.** Per channel, with $x^{\mathrm{pad}}$ padded by $-\infty$ and $j$ running over the
    window's offsets ($s$ = `strides`):

    $$
    y_{n,o,c} = \max_j\, x^{\mathrm{pad}}_{n,\, o s + j,\, c}
    $$

    and $j^*_{n,o,c}$ is the first $j$, in the window's row-major order, at which the maximum is
    reached.

    **Backward.** Each window sends its $\mathrm{d}y$ to its one winner; a position that wins
    several (overlapping) windows gets their sum ($\ell$: the low padding):

    $$
    \mathrm{d}x_{n,i,c} = \sum_{o:\ o s + j^*_{n,o,c} = i + \ell} \mathrm{d}y_{n,o,c}
    $$

    Ties go to the first maximum only, not split: what `jax.grad` of `lax.reduce_window` max does.

    **Residuals.** $j^*$ (int32, $y$'s shape) and $x$'s shape in a zero-size array.
    """

    selects = True  # equal entries in a window: ties decide where dy goes

    def forward(self, params, x, *, key=None):
        check_spatial_input(self, x, len(self.window))
        pads = self._pads(tuple(x.shape[1:-1]))
        x_pad = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
        out = self._out(tuple(x.shape[1:-1]))
        y, won = None, None
        for j, offset in enumerate(np.ndindex(*self.window)):  # row-major: the first max wins
            v = _window_view(x_pad, offset, self.strides, out)
            if y is None:
                y, won = v, jnp.zeros(v.shape, jnp.int32)
            else:
                later = v > y
                y, won = jnp.where(later, v, y), jnp.where(later, j, won)
        return y, (won, jnp.zeros((*x.shape, 0), x.dtype))

    def backward(self, params, residuals, dy):
        won, shape_carrier = residuals
        spatial = shape_carrier.shape[1:-2]
        pads = self._pads(spatial)
        padded = (dy.shape[0], *(n + lo + hi for n, (lo, hi) in zip(spatial, pads)), dy.shape[-1])
        dx_pad = jnp.zeros(padded, dy.dtype)
        for j, offset in enumerate(np.ndindex(*self.window)):
            dx_pad += _window_place(jnp.where(won == j, dy, 0), offset, self.strides, padded)
        start = (0, *(lo for lo, _ in pads), 0)
        return (), lax.slice(
            dx_pad, start, (padded[0], *(lo + n for (lo, _), n in zip(pads, spatial)), padded[-1])
        )


@dataclasses.dataclass(frozen=True)
class AvgPool(_WindowPool):
    r"""AvgPool: y[o] = (sum of the window of x_pad) / divisor[o]; dx[i] = sum of dy[o] /
    divisor[o] over the windows o that contain i (the transposed window sum).

    divisor: count_include_pad=True (the default, as flax.linen.avg_pool and PyTorch): prod(window)
    everywhere, padded zeros included; False (TensorFlow's SAME): the number of real input
    positions in the window. x: (batch, *spatial, C) -> (batch, *spatial', C). Residual: x's shape
    only, in a zero-size array (batch, *spatial, C, 0); the divisor depends on shapes alone.

    **Forward.** Per channel, with $x^{\mathrm{pad}}$ zero-padded and $D_o$ the divisor:

    $$
    y_{n,o,c} = \frac{1}{D_o} \sum_j x^{\mathrm{pad}}_{n,\, o s + j,\, c}
    $$

    **Backward.** Each window spreads $\mathrm{d}y/D$ evenly over its entries:

    $$
    \mathrm{d}x_{n,i,c} = \sum_{(o,j):\ o s + j = i + \ell} \frac{\mathrm{d}y_{n,o,c}}{D_o}
    $$

    computed as $\mathrm{d}y/D$ dilated by the strides, padded by the transposed padding, and summed
    over stride-1 windows (a window of ones needs no flip).

    **Residuals.** $x$'s shape only, in a zero-size array.
    """

    count_include_pad: bool = True

    def forward(self, params, x, *, key=None):
        sums, pads = self._reduce(x, 0.0, lax.add)
        y = sums / self._divisor(tuple(x.shape[1:-1]), pads, x.dtype)
        return y, jnp.zeros((*x.shape, 0), x.dtype)  # x's shape, at no cost

    def backward(self, params, shape_carrier, dy):
        spatial = shape_carrier.shape[1:-2]
        pads = self._pads(spatial)
        g = dy / self._divisor(spatial, pads, dy.dtype)
        # g dilated by the strides and padded to invert the forward, then summed over windows.
        inverse = map(transpose_padding, spatial, pads, self.window, self.strides)
        config = [(lo, hi, s - 1) for (lo, hi), s in zip(inverse, self.strides)]
        g = lax.pad(g, jnp.zeros((), g.dtype), [(0, 0, 0), *config, (0, 0, 0)])
        dims, ones = (1, *self.window, 1), (1,) * g.ndim
        return (), lax.reduce_window(g, np.zeros((), g.dtype), lax.add, dims, ones, "VALID")

    def _divisor(self, spatial: Shape, pads: Pairs, dtype) -> Array | int:
        """prod(window), or (1, *spatial', 1): real positions per window, a product over axes."""
        if self.count_include_pad:
            return math.prod(self.window)
        counts = [
            np.minimum(o * s - lo + w, n) - np.maximum(o * s - lo, 0)
            for n, (lo, _), w, s, o in zip(
                spatial, pads, self.window, self.strides, map(np.arange, self._out(spatial))
            )
        ]
        return jnp.asarray(functools.reduce(np.multiply.outer, counts)[None, ..., None], dtype)


@dataclasses.dataclass(frozen=True)
class GlobalAvgPool(Layer):
    r"""GlobalAvgPool: y = mean of x over the spatial axes; dx = dy / N at every position
    (N = prod(spatial)). x: (batch, *spatial, C) -> (batch, C), at least one spatial axis.
    Residual: x's shape only, in a zero-size array (batch, *spatial, C, 0).

    **Forward and backward.** With $P$ = prod(spatial) positions:

    $$
    y_{n,c} = \frac1P \sum_p x_{n,p,c}, \qquad \mathrm{d}x_{n,p,c} = \frac{\mathrm{d}y_{n,c}}{P}
    $$
    """

    examples_independent = True

    def init(self, key: PRNGKey, input_shape: Shape) -> tuple[Shape, Params]:
        if len(input_shape) < 2:
            raise ValueError(
                f"{self!r}: input shape must be (*spatial, C) with at least one spatial axis, "
                f"got {tuple(input_shape)}"
            )
        return (int(input_shape[-1]),), ()

    def forward(self, params, x, *, key=None):
        check_input(self, x, min_ndim=0)
        if x.ndim < 3:
            raise ValueError(
                f"{self!r}: expects inputs of shape (batch, *spatial, C) with at least one "
                f"spatial axis, got shape {tuple(x.shape)}"
            )
        return jnp.mean(x, axis=tuple(range(1, x.ndim - 1))), jnp.zeros((*x.shape, 0), x.dtype)

    def backward(self, params, shape_carrier, dy):
        shape = shape_carrier.shape[:-1]
        n = math.prod(shape[1:-1])
        spread = (dy / n).reshape(shape[0], *(1,) * (len(shape) - 2), shape[-1])
        return (), jnp.broadcast_to(spread, shape)
