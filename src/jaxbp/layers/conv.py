"""Convolution over 1, 2 or 3 spatial axes, channels last: Conv, whose backward is two more convs.

The padding arithmetic lives here once: `resolve_padding` for the forward, `transpose_padding`
for the backward (pool.py uses both, as a pooling window is a kernel of ones).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp._types import Array, Params, PRNGKey, Shape
from jaxbp.layers import _conv_examples
from jaxbp.layers._base import describe
from jaxbp.layers._conv_examples import dW_layout
from jaxbp.layers._spatial import (
    Pairs,
    check_input_shape,
    check_spatial_input,
    int_tuple,
    is_int,
    out_size,
    padding_spec,
    resolve_padding,
    transpose_padding,
    unread,
    window_tuple,
)  # fmt: skip
from jaxbp.layers.dense import ghost_sq_norms
from jaxbp.protocols import Layer


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
    r"""Conv: y[o, f] = b[f] + sum_{j, c} x_pad[o s + j d, c] W[j, c, f] (c: f's group's inputs);
    dx = dy, dilated by s, correlated with W flipped in space, in/out swapped within each group;
    dW[j, c, f] = sum_{batch, o} x_pad[o s + j d, c] dy[o, f]; db = sum of dy but over features.

    x: (batch, *spatial, in) -> y: (batch, *spatial', features), 1 to 3 spatial axes
    (len(kernel_size)). W: (*kernel_size, in // groups, features), b: (features,); group g
    reads inputs [g in/groups, (g+1) in/groups) and writes outputs [g F/groups, (g+1) F/groups).
    Residual: x (batch, *spatial, in).
    strides, dilation: an int or one per spatial axis; padding: 'SAME' (the odd cell high, as
    XLA), 'VALID' or (low, high) pairs. Both gradients are conv_general_dilated calls: dx pads
    the dilated dy by `transpose_padding`, window dilation d; dW correlates x with dy over the
    batch (window strides d, rhs dilation s), pairing the groups by batch_group_count.
    W starts LeCun-normal over fan_in = prod(kernel_size) in // groups, b at zero.

    **Forward.** Spatial indices $o$ (output position), $j$ (kernel entry), $i$ (input position) are
    tuples with one entry per spatial axis, and $o s + j d$ is taken axis by axis ($s$ = `strides`,
    $d$ = `dilation`); $x^{\mathrm{pad}}$ is $x$ zero-padded by $(\ell, h)$ per axis:

    $$
    y_{n,o,f} = b_f + \sum_j \sum_{c} x^{\mathrm{pad}}_{n,\, o s + j d,\, c}\; W_{j,c,f}
    $$

    $c$ running over the `in // groups` input channels of $f$'s group.

    **Backward.** With $\mathrm{d}y = \partial C/\partial y$:

    $$
    \mathrm{d}W_{j,c,f} = \sum_{n,o} x^{\mathrm{pad}}_{n,\, o s + j d,\, c}\; \mathrm{d}y_{n,o,f},
    \qquad
    \mathrm{d}b_f = \sum_{n,o} \mathrm{d}y_{n,o,f}
    $$

    $$
    \mathrm{d}x_{n,i,c} = \sum_{f} \ \sum_{(o,j):\ o s + j d = i + \ell}
      \mathrm{d}y_{n,o,f}\; W_{j,c,f}
    $$

    ($f$ over the outputs of $c$'s group). $\mathrm{d}x$ is a transposed convolution: $\mathrm{d}y$
    dilated by $s$ ($s - 1$ zeros between entries), padded by
    $(k_{\mathrm{eff}} - 1 - \ell,\ k_{\mathrm{eff}} - 1 - h + r)$, and correlated at stride 1 and
    window dilation $d$ with $W$ flipped in space, its in and out axes swapped within each group;
    $k_{\mathrm{eff}} = (k - 1) d + 1$ is the kernel's span and
    $r = (n_{\mathrm{in}} + \ell + h - k_{\mathrm{eff}}) \bmod s$ counts the trailing positions no
    window reads. $\mathrm{d}W$ is one more convolution, $x$ against $\mathrm{d}y$ over the batch
    (window strides $d$, kernel dilation $s$, the $r$ unread positions cropped).

    **Shapes.** $x$: `(batch, *spatial, in)`; $W$: `(*kernel_size, in // groups, features)`;
    $b$: `(features,)`; $y$: `(batch, *spatial', features)`, 1 to 3 spatial axes.

    **Residuals.** $x$.
    """

    features: int
    kernel_size: tuple[int, ...]
    strides: int | tuple[int, ...] = 1
    padding: str | Sequence[tuple[int, int]] = "SAME"
    dilation: int | tuple[int, ...] = 1
    groups: int = 1
    examples_independent = True  # windows slide over each example's own positions

    def __post_init__(self):
        for name in ("features", "groups"):
            value = getattr(self, name)
            if not is_int(value):
                raise TypeError(f"Conv: {name} must be an int, got {value!r}")
            if value <= 0:
                raise ValueError(f"Conv: {name} must be positive, got {value}")
        if self.features % self.groups:
            raise ValueError(
                f"Conv: features ({self.features}) must be divisible by groups ({self.groups})"
            )
        kernel = window_tuple("Conv", "kernel_size", self.kernel_size)
        nd = len(kernel)
        for name, value in (
            ("kernel_size", kernel),
            ("strides", int_tuple("Conv", "strides", self.strides, nd)),
            ("dilation", int_tuple("Conv", "dilation", self.dilation, nd)),
            ("padding", padding_spec("Conv", self.padding, nd)),
        ):
            object.__setattr__(self, name, value)  # normalised: hashable tuples

    def init(self, key: PRNGKey, input_shape: Shape) -> tuple[Shape, Params]:
        spatial, channels = check_input_shape(self, input_shape, len(self.kernel_size))
        self._check_channels(channels, input_shape)
        pairs = self._padding(spatial)
        out = tuple(map(out_size, spatial, pairs, self._spans, self.strides))
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
        dx_pads = tuple(map(transpose_padding, spatial, pairs, self._spans, s))
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
        cropped = map(unread, spatial, pairs, self._spans, s)
        dW_pads = tuple((lo, hi - r) for (lo, hi), r in zip(pairs, cropped))
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

    def kfac_rows(self, x):
        """K-FAC's rows a = [patch, 1], one per example and output position: (rows, K + 1), the
        patch ordered as W.reshape(-1, features) (window entries, then input channels)."""
        if self.groups != 1:
            raise NotImplementedError(
                f"{self!r} has groups={self.groups}: its K-FAC factors would be one pair per "
                "group, not implemented (groups=1 only)"
            )
        windows = self._windows(x)  # (batch, P, O, in)
        flat = windows.reshape(-1, windows.shape[2] * windows.shape[3])
        return jnp.concatenate([flat, jnp.ones((flat.shape[0], 1), flat.dtype)], axis=1)

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
        return resolve_padding(self, self.padding, spatial, self._spans, self.strides)

    def _check_channels(self, channels: int, shape: Shape) -> None:
        if channels % self.groups:
            raise ValueError(
                f"{self!r}: input channels ({channels}) must be divisible by groups "
                f"({self.groups}); input shape {tuple(shape)}"
            )

    def _check(self, params: Params, x: Array) -> Pairs:
        """Raise at trace time when params or x cannot be this layer's; return the padding."""
        nd, k, f = len(self.kernel_size), self.kernel_size, self.features
        check_spatial_input(self, x, nd)
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
                f"got {describe(params)}"
            )
        if x.shape[-1] != w_shape[nd] * self.groups:
            raise ValueError(
                f"{self!r}: W holds in // groups = {w_shape[nd]} channels per group: expects "
                f"inputs of shape (batch, *spatial, {w_shape[nd] * self.groups}), "
                f"got {tuple(x.shape)}"
            )
        return self._padding(tuple(x.shape[1:-1]))
