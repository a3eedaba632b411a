"""Windows over 1 to 3 spatial axes, channels last: the arithmetic Conv and pooling share.

A pooling window is a kernel of ones that does not mix channels, so conv.py and pool.py read
their options, their padding and their transposes from here, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxbp._types import Array, Shape
from jaxbp.layers._base import check_input

__all__ = [
    "Pairs", "is_int", "int_tuple", "window_tuple", "padding_spec", "resolve_padding", "out_size",
    "unread", "transpose_padding", "check_spatial_input", "check_input_shape",
]  # fmt: skip

Pairs = tuple[tuple[int, int], ...]


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def int_tuple(owner: str, name: str, value: Any, nd: int, *, minimum: int = 1) -> tuple[int, ...]:
    """An int (repeated over the nd spatial axes) or nd ints, each at least minimum, as a tuple."""
    values = (value,) * nd if is_int(value) else value
    if not isinstance(values, Sequence) or not all(is_int(v) for v in values):
        raise TypeError(f"{owner}: {name} must be an int or a tuple of {nd} ints, got {value!r}")
    if len(values) != nd:
        raise ValueError(f"{owner}: {name} needs one entry per spatial axis ({nd}), got {value!r}")
    if any(v < minimum for v in values):
        raise ValueError(f"{owner}: {name} must be at least {minimum}, got {value!r}")
    return tuple(values)


def window_tuple(owner: str, name: str, value: Any) -> tuple[int, ...]:
    """A kernel_size or window: a tuple of 1 to 3 positive ints, one per spatial axis."""
    if is_int(value) or not isinstance(value, Sequence) or not 1 <= len(value) <= 3:
        raise TypeError(
            f"{owner}: {name} must be a tuple of 1 to 3 ints, one per spatial axis, got {value!r}"
        )
    return int_tuple(owner, name, value, len(value))


def padding_spec(owner: str, padding: Any, nd: int) -> str | Pairs:
    """'SAME', 'VALID', or nd (low, high) pairs of non-negative ints (as a tuple of tuples)."""
    if padding in ("SAME", "VALID"):
        return padding
    pairs = padding if isinstance(padding, Sequence) and not isinstance(padding, str) else None
    if (
        pairs is None
        or len(pairs) != nd
        or not all(isinstance(p, Sequence) and len(p) == 2 for p in pairs)
        or not all(is_int(v) and v >= 0 for p in pairs for v in p)
    ):
        raise ValueError(
            f"{owner}: padding must be 'SAME', 'VALID' or {nd} (low, high) pairs of "
            f"non-negative ints, one per spatial axis; got {padding!r}"
        )
    return tuple((lo, hi) for lo, hi in pairs)


def resolve_padding(
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


def out_size(n: int, pair: tuple[int, int], k_eff: int, s: int) -> int:
    """How many windows of span k_eff, s apart, fit in the padded length n + low + high."""
    return (n + pair[0] + pair[1] - k_eff) // s + 1


def unread(n: int, pair: tuple[int, int], k_eff: int, s: int) -> int:
    """r = (n + low + high - k_eff) mod s: the trailing padded positions that no window reads."""
    return (n + pair[0] + pair[1] - k_eff) % s


def transpose_padding(n: int, pair: tuple[int, int], k_eff: int, s: int) -> tuple[int, int]:
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
    return k_eff - 1 - low, k_eff - 1 - high + unread(n, pair, k_eff, s)


def check_spatial_input(layer: Any, x: Array, nd: int) -> None:
    """x must be a float array (batch, *spatial, channels) with exactly nd spatial axes."""
    check_input(layer, x, min_ndim=0)
    if x.ndim != nd + 2:
        raise ValueError(
            f"{layer!r}: expects inputs of shape (batch, *spatial, channels) with {nd} spatial "
            f"axes (rank {nd + 2}), got shape {tuple(x.shape)}"
        )


def check_input_shape(layer: Any, input_shape: Shape, nd: int) -> tuple[Shape, int]:
    """init's input_shape must be (*spatial, channels) with nd spatial axes."""
    if len(input_shape) != nd + 1:
        raise ValueError(
            f"{layer!r}: input shape must be (*spatial, channels) with {nd} spatial axes, "
            f"got {tuple(input_shape)}"
        )
    return tuple(input_shape[:-1]), int(input_shape[-1])
