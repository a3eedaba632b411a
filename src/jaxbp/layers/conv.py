"""Convolution over 1, 2 or 3 spatial axes, channels last: Conv, whose backward is two more convs.

The padding arithmetic lives here once: `_resolve_padding` for the forward, `_transpose_padding`
for the backward (pool.py uses both, as a pooling window is a kernel of ones).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp._types import Array, Params, PRNGKey, Shape
from jaxbp.layers import _conv_examples
from jaxbp.layers._base import Layer, _check_input, _describe
from jaxbp.layers._conv_examples import dW_layout
from jaxbp.layers.dense import ghost_sq_norms

Pairs = tuple[tuple[int, int], ...]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_tuple(owner: str, name: str, value: Any, nd: int, *, minimum: int = 1) -> tuple[int, ...]:
    """An int (repeated over the nd spatial axes) or nd ints, each at least minimum, as a tuple."""
    values = (value,) * nd if _is_int(value) else value
    if not isinstance(values, Sequence) or not all(_is_int(v) for v in values):
        raise TypeError(f"{owner}: {name} must be an int or a tuple of {nd} ints, got {value!r}")
    if len(values) != nd:
        raise ValueError(f"{owner}: {name} needs one entry per spatial axis ({nd}), got {value!r}")
    if any(v < minimum for v in values):
        raise ValueError(f"{owner}: {name} must be at least {minimum}, got {value!r}")
    return tuple(values)


def _window_tuple(owner: str, name: str, value: Any) -> tuple[int, ...]:
    """A kernel_size or window: a tuple of 1 to 3 positive ints, one per spatial axis."""
    if _is_int(value) or not isinstance(value, Sequence) or not 1 <= len(value) <= 3:
        raise TypeError(
            f"{owner}: {name} must be a tuple of 1 to 3 ints, one per spatial axis, got {value!r}"
        )
    return _int_tuple(owner, name, value, len(value))


def _padding_spec(owner: str, padding: Any, nd: int) -> str | Pairs:
    """'SAME', 'VALID', or nd (low, high) pairs of non-negative ints (as a tuple of tuples)."""
    if padding in ("SAME", "VALID"):
        return padding
    pairs = padding if isinstance(padding, Sequence) and not isinstance(padding, str) else None
    if (
        pairs is None
        or len(pairs) != nd
        or not all(isinstance(p, Sequence) and len(p) == 2 for p in pairs)
        or not all(_is_int(v) and v >= 0 for p in pairs for v in p)
    ):
        raise ValueError(
            f"{owner}: padding must be 'SAME', 'VALID' or {nd} (low, high) pairs of "
            f"non-negative ints, one per spatial axis; got {padding!r}"
        )
    return tuple((lo, hi) for lo, hi in pairs)


def _resolve_padding(
    layer: Any, padding: str | Pairs, spatial: Shape, spans: Shape, strides: Shape
) -> Pairs:
    """(low, high) per spatial axis, for inputs of spatial sizes n and windows spanning
    k_eff = (k - 1) dilation + 1 positions. SAME: out = ceil(n / s) and the padding
    total = max((out - 1) s + k_eff - n, 0) is split low = total // 2, high = total - low (the
    odd one high, as XLA and TensorFlow do); VALID: none. Raises when a window does not fit."""
    pairs = padding
    if padding == "VALID":
        pairs = ((0, 0),) * len(spatial)
    elif padding == "SAME":
        totals = (max((-(-n // s) - 1) * s + k - n, 0) for n, k, s in zip(spatial, spans, strides))
        pairs = tuple((t // 2, t - t // 2) for t in totals)
    for axis, (n, k, (lo, hi)) in enumerate(zip(spatial, spans, pairs)):
        if n + lo + hi < k:
            raise ValueError(
                f"{layer!r}: the window spans {k} positions along spatial axis {axis}, more than "
                f"the padded input's {n} + {lo} + {hi} = {n + lo + hi} (spatial shape {spatial})"
            )
    return pairs


def _out_size(n: int, pair: tuple[int, int], k_eff: int, s: int) -> int:
    """How many windows of span k_eff, s apart, fit in the padded length n + low + high."""
    return (n + pair[0] + pair[1] - k_eff) // s + 1


def _unread(n: int, pair: tuple[int, int], k_eff: int, s: int) -> int:
    """r = (n + low + high - k_eff) mod s: the trailing padded positions that no window reads."""
    return (n + pair[0] + pair[1] - k_eff) % s


def _transpose_padding(n: int, pair: tuple[int, int], k_eff: int, s: int) -> tuple[int, int]:
    """The padding of dy, dilated by s (s - 1 zeros between entries), that makes a stride-1
    correlation with the flipped window the exact transpose of the forward along one axis.

    Forward: output o reads padded position o s + j d (window entry j), i.e. input position
    i = o s + j d - low; the last r = (n + low + high - k_eff) mod s positions of the padded input
    are read by no window. Dilated dy has length (out - 1) s + 1 = n + low + high - k_eff - r + 1.
    Padding it with low' = k_eff - 1 - low and high' = k_eff - 1 - high + r gives n + k_eff - 1
    positions, so a stride-1 window of span k_eff yields exactly n values, the i-th summing
    dy[o] w[j] over every (o, j) with o s + j d = i + low. Either may be negative (a crop).
    """
    low, high = pair
    return k_eff - 1 - low, k_eff - 1 - high + _unread(n, pair, k_eff, s)


def _check_spatial_input(layer: Any, x: Array, nd: int) -> None:
    """x must be a float array (batch, *spatial, channels) with exactly nd spatial axes."""
    _check_input(layer, x, min_ndim=0)
    if x.ndim != nd + 2:
        raise ValueError(
            f"{layer!r}: expects inputs of shape (batch, *spatial, channels) with {nd} spatial "
            f"axes (rank {nd + 2}), got shape {tuple(x.shape)}"
        )


def _check_input_shape(layer: Any, input_shape: Shape, nd: int) -> tuple[Shape, int]:
    """init's input_shape must be (*spatial, channels) with nd spatial axes."""
    if len(input_shape) != nd + 1:
        raise ValueError(
            f"{layer!r}: input shape must be (*spatial, channels) with {nd} spatial axes, "
            f"got {tuple(input_shape)}"
        )
    return tuple(input_shape[:-1]), int(input_shape[-1])


def _dims(nd: int) -> lax.ConvDimensionNumbers:
    """Channels last: x (batch, *spatial, in), W (*kernel, in, out), y (batch, *spatial, out)."""
    spatial = tuple(range(1, nd + 1))
    lhs, rhs, out = (0, nd + 1, *spatial), (nd + 1, nd, *range(nd)), (0, nd + 1, *spatial)
    return lax.ConvDimensionNumbers(lhs, rhs, out)


def _weight_grad_dims(nd: int) -> lax.ConvDimensionNumbers:
    """dW = x (*) dy: x's channels play the batch and its batch the features; dy's batch is the
    contracted in-feature axis, its channels the out-features; the result is laid out as W."""
    spatial = tuple(range(1, nd + 1))
    lhs, rhs, out = (nd + 1, 0, *spatial), (nd + 1, 0, *spatial), (nd, nd + 1, *range(nd))
    return lax.ConvDimensionNumbers(lhs, rhs, out)


def _transposed_kernel(W: Array, groups: int) -> Array:
    """W (*k, in/g, out) -> (*k, out/g, in): flipped in space, in and out swapped within each
    group, so that group g of dy's channels maps back to group g of x's."""
    nd = W.ndim - 2
    *k, c, f = W.shape
    flipped = jnp.flip(W, axis=tuple(range(nd))).reshape(*k, c, groups, f // groups)
    swapped = flipped.transpose(*range(nd), nd + 2, nd + 1, nd)  # (*k, out/g, g, in/g)
    return swapped.reshape(*k, f // groups, groups * c)


@dataclasses.dataclass(frozen=True)
class Conv(Layer):
    """Conv: y[o, f] = b[f] + sum_{j, c} x_pad[o s + j d, c] W[j, c, f] (c: f's group's inputs);
    dx = dy, dilated by s, correlated with W flipped in space, in/out swapped within each group;
    dW[j, c, f] = sum_{batch, o} x_pad[o s + j d, c] dy[o, f]; db = sum of dy but over features.

    x: (batch, *spatial, in) -> y: (batch, *spatial', features), 1 to 3 spatial axes
    (len(kernel_size)). W: (*kernel_size, in // groups, features), b: (features,); group g
    reads inputs [g in/groups, (g+1) in/groups) and writes outputs [g F/groups, (g+1) F/groups).
    Residual: x (batch, *spatial, in).
    strides, dilation: an int or one per spatial axis; padding: 'SAME' (the odd cell high, as
    XLA), 'VALID' or (low, high) pairs. Both gradients are conv_general_dilated calls: dx pads
    the dilated dy by `_transpose_padding`, window dilation d; dW correlates x with dy over the
    batch (window strides d, rhs dilation s), pairing the groups by batch_group_count.
    W starts LeCun-normal over fan_in = prod(kernel_size) in // groups, b at zero.
    """

    features: int
    kernel_size: tuple[int, ...]
    strides: int | tuple[int, ...] = 1
    padding: str | Sequence[tuple[int, int]] = "SAME"
    dilation: int | tuple[int, ...] = 1
    groups: int = 1

    def __post_init__(self):
        for name in ("features", "groups"):
            value = getattr(self, name)
            if not _is_int(value):
                raise TypeError(f"Conv: {name} must be an int, got {value!r}")
            if value <= 0:
                raise ValueError(f"Conv: {name} must be positive, got {value}")
        if self.features % self.groups:
            raise ValueError(
                f"Conv: features ({self.features}) must be divisible by groups ({self.groups})"
            )
        kernel = _window_tuple("Conv", "kernel_size", self.kernel_size)
        nd = len(kernel)
        for name, value in (
            ("kernel_size", kernel),
            ("strides", _int_tuple("Conv", "strides", self.strides, nd)),
            ("dilation", _int_tuple("Conv", "dilation", self.dilation, nd)),
            ("padding", _padding_spec("Conv", self.padding, nd)),
        ):
            object.__setattr__(self, name, value)  # normalised: hashable tuples

    def init(self, key: PRNGKey, input_shape: Shape) -> tuple[Shape, Params]:
        spatial, channels = _check_input_shape(self, input_shape, len(self.kernel_size))
        self._check_channels(channels, input_shape)
        pairs = self._padding(spatial)
        out = tuple(map(_out_size, spatial, pairs, self._spans, self.strides))
        shape = (*self.kernel_size, channels // self.groups, self.features)
        fan_in = math.prod(shape[:-1])
        W = jax.random.normal(key, shape) / math.sqrt(fan_in)
        return (*out, self.features), {"W": W, "b": jnp.zeros((self.features,))}

    def forward(self, params, x, *, key=None):
        pairs = self._check(params, x)
        nd = len(self.kernel_size)
        y = lax.conv_general_dilated(
            x, params["W"], self.strides, pairs, rhs_dilation=self.dilation,
            dimension_numbers=_dims(nd), feature_group_count=self.groups,
        )  # fmt: skip
        return y + params["b"], x

    def backward(self, params, x, dy):
        nd, s, d = len(self.kernel_size), self.strides, self.dilation
        spatial, axes = x.shape[1:-1], tuple(range(1, nd + 1))
        pairs = self._padding(spatial)
        # dx: dy dilated by s, padded to invert the forward, against W flipped, (in, out) swapped.
        dx_pads = tuple(map(_transpose_padding, spatial, pairs, self._spans, s))
        dx = lax.conv_general_dilated(
            dy, _transposed_kernel(params["W"], self.groups), (1,) * nd, dx_pads,
            lhs_dilation=s, rhs_dilation=d, dimension_numbers=_dims(nd),
            feature_group_count=self.groups,
        )  # fmt: skip
        return {"W": self._weight_grad(x, dy), "b": dy.sum(axis=(0, *axes))}, dx

    def _weight_grad(self, x, dy):
        """dW = sum over examples and positions: x (channels as batch, batch as features)
        correlated with dy, whose batch is the contracted axis; the r trailing positions no
        window read are cropped off."""
        s, d = self.strides, self.dilation
        spatial = x.shape[1:-1]
        pairs = self._padding(spatial)
        unread = map(_unread, spatial, pairs, self._spans, s)
        dW_pads = tuple((lo, hi - r) for (lo, hi), r in zip(pairs, unread))
        return lax.conv_general_dilated(
            x, dy, d, dW_pads, rhs_dilation=s, dimension_numbers=_weight_grad_dims(len(s)),
            batch_group_count=self.groups,
        )  # fmt: skip

    # Optional per-example rules (jaxbp.quantities), by the window views of _conv_examples.
    def per_example_grads(self, params, x, dy):
        """dW_i, db_i: backward's dparams for example i alone. (batch, *W.shape), (batch, F)."""
        g = self._per_example_dW(x, dy)
        return {"W": dW_layout(g, self.kernel_size), "b": self._per_example_db(dy)}

    def per_example_sq_norms(self, params, x, dy):
        """||dW_i||^2 + ||db_i||^2, (batch,): from dW_i itself or as a ghost norm
        sum_{p,q} (patch_p.patch_q)(dy_p.dy_q) over the P output positions, the patches' Gram
        from the window views or from the padded input's own Gram, whichever route costs the
        fewest operations for this layer's shapes (_conv_examples.norm_route)."""
        batch, F = x.shape[0], dy.shape[-1]
        db2 = jnp.sum(jnp.square(self._per_example_db(dy)), axis=1)
        route = self._norm_route(x, dy)
        if route == "padded":
            args = self.kernel_size, self.strides, self.dilation, self._padding(x.shape[1:-1])
            return _conv_examples.padded_ghost_sq_norms(x, dy, *args) + db2
        if route == "windows":
            windows = self._windows(x)
            P, K = windows.shape[1], windows.shape[2] * windows.shape[3]
            return ghost_sq_norms(windows.reshape(batch, P, K), dy.reshape(batch, P, F)) + db2
        g = self._per_example_dW(x, dy)
        return jnp.sum(jnp.square(g.reshape(batch, -1)), axis=1) + db2

    def sum_grad_squared(self, params, x, dy):
        """sum_i dW_i^2, sum_i db_i^2: W's and b's shapes, from the per-example dW_i."""
        g = self._per_example_dW(x, dy)
        squares = jnp.sum(jnp.square(g), axis=0)
        db2 = jnp.sum(jnp.square(self._per_example_db(dy)), axis=0)
        return {"W": dW_layout(squares, self.kernel_size), "b": db2}

    def weighted_grad(self, params, x, dy, w):
        """sum_i w_i (dW_i, db_i), params' shapes. Where the norms took dW_i, sum_i w_i dW_i:
        under one jit XLA computes dW_i once for both. Where they took a ghost norm, backward's
        own weight-gradient conv of x with w_i dy_i. Either way backward's dW is not needed.
        (On bench's cnn, next to the padded Gram's norms, the DP clipping step took 1.40x a
        gradient this way, 1.46x by a product with window views built for it alone.)"""
        batch = x.shape[0]
        if self._norm_route(x, dy) != "direct":
            wd = dy * w.reshape((batch,) + (1,) * (dy.ndim - 1)).astype(dy.dtype)
            return {"W": self._weight_grad(x, wd), "b": wd.reshape(-1, wd.shape[-1]).sum(axis=0)}
        g, w = self._per_example_dW(x, dy), w.astype(dy.dtype)
        dW = dW_layout(jnp.tensordot(w, g, axes=1), self.kernel_size)
        return {"W": dW, "b": w @ self._per_example_db(dy)}

    def _norm_route(self, x, dy) -> str:
        pairs = self._padding(x.shape[1:-1])
        padded = math.prod(n + lo + hi for n, (lo, hi) in zip(x.shape[1:-1], pairs))
        P, entries = math.prod(dy.shape[1:-1]), math.prod(self.kernel_size)
        return _conv_examples.norm_route(P, padded, entries, x.shape[-1], dy.shape[-1], self.groups)

    def _windows(self, x):
        """(batch, P, O, in): the input each output position reads at each window entry."""
        pairs = self._padding(x.shape[1:-1])
        strides, dilation = self.strides, self.dilation
        return _conv_examples.patches(x, self.kernel_size, strides, dilation, pairs)

    def _per_example_dW(self, x, dy):
        return _conv_examples.per_example_dW(self._windows(x), dy, self.groups)

    @staticmethod
    def _per_example_db(dy):
        return dy.reshape(dy.shape[0], -1, dy.shape[-1]).sum(axis=1)

    @property
    def _spans(self) -> Shape:
        """k_eff = (k - 1) d + 1: how many input positions a dilated kernel spans."""
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel_size, self.dilation))

    def _padding(self, spatial: Shape) -> Pairs:
        return _resolve_padding(self, self.padding, spatial, self._spans, self.strides)

    def _check_channels(self, channels: int, shape: Shape) -> None:
        if channels % self.groups:
            raise ValueError(
                f"{self!r}: input channels ({channels}) must be divisible by groups "
                f"({self.groups}); input shape {tuple(shape)}"
            )

    def _check(self, params: Params, x: Array) -> Pairs:
        """Raise at trace time when params or x cannot be this layer's; return the padding."""
        nd, k, f = len(self.kernel_size), self.kernel_size, self.features
        _check_spatial_input(self, x, nd)
        self._check_channels(x.shape[-1], x.shape)
        W, b = (params.get(n) if isinstance(params, Mapping) else None for n in ("W", "b"))
        w_shape, b_shape = getattr(W, "shape", None), getattr(b, "shape", None)
        if (
            not isinstance(params, Mapping)
            or set(params) != {"W", "b"}
            or w_shape is None
            or len(w_shape) != nd + 2
            or tuple(w_shape[:nd]) + tuple(w_shape[nd + 1 :]) != (*k, f)
            or b_shape != (f,)
        ):
            raise ValueError(
                f"{self!r}: params must be {{'W': (*kernel_size, in // groups, features) = "
                f"({', '.join(map(str, k))}, in // {self.groups}, {f}), 'b': ({f},)}}, "
                f"got {_describe(params)}"
            )
        if x.shape[-1] != w_shape[nd] * self.groups:
            raise ValueError(
                f"{self!r}: W holds in // groups = {w_shape[nd]} channels per group: expects "
                f"inputs of shape (batch, *spatial, {w_shape[nd] * self.groups}), "
                f"got {tuple(x.shape)}"
            )
        return self._padding(tuple(x.shape[1:-1]))
