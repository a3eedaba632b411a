"""What the normalisation layers share: sums over positions, centring, and their checks.

norm.py (LayerNorm, RMSNorm, BatchNorm) and group_norm.py read these, so a new normaliser
needs only its own file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

import jax.numpy as jnp

from jaxbp._types import Array, Params, Shape
from jaxbp.layers._base import describe

__all__ = [
    "sum_but_last", "per_example_sum", "mean_last", "centred", "check_options", "channels",
    "check_vectors", "affine_params",
]  # fmt: skip


def sum_but_last(a: Array) -> Array:
    """(batch, ..., C) -> (C,): the sum over every axis but the channels."""
    return a.reshape(-1, a.shape[-1]).sum(0)


def per_example_sum(a: Array) -> Array:
    """(batch, ..., C) -> (batch, C): sum_but_last for each example (per-example gradients)."""
    return a.reshape(a.shape[0], -1, a.shape[-1]).sum(1)


def mean_last(a: Array) -> Array:
    return jnp.mean(a, axis=-1, keepdims=True)


def centred(x: Array, axes: tuple[int, ...], shift: Array) -> tuple[Array, Array]:
    """(x - mean, mean) over axes (kept). Subtracting one sample first (shift; exact in the
    derivative, as it cancels) centres a constant slice to exactly 0 and keeps a large common
    offset from eating float32 digits of the mean."""
    d = x - shift
    m = jnp.mean(d, axis=axes, keepdims=True)
    return d - m, shift + m


def check_options(layer: Any, **options: Any) -> None:
    """eps must be positive (a constant row has variance 0); momentum must lie in [0, 1]."""
    for name, value in options.items():
        if isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(f"{type(layer).__name__}: {name} must be a number, got {value!r}")
    if "eps" in options and not options["eps"] > 0:
        raise ValueError(f"{type(layer).__name__}: eps must be positive, got {options['eps']}")
    if "momentum" in options and not 0 <= options["momentum"] <= 1:
        raise ValueError(
            f"{type(layer).__name__}: momentum must lie in [0, 1], got {options['momentum']}"
        )


def channels(layer: Any, input_shape: Shape) -> int:
    if len(input_shape) < 1:
        raise ValueError(f"{layer!r}: input shape must be (..., C), got {tuple(input_shape)}")
    return int(input_shape[-1])


def check_vectors(
    layer: Any, tree: Any, keys: Sequence[str], x: Array | None, what: str = "params"
) -> None:
    """Raise unless tree is {key: (C,) for key in keys}, C being x's last axis (when x is given)."""
    shapes = (
        {k: getattr(v, "shape", None) for k, v in tree.items()} if isinstance(tree, Mapping) else {}
    )
    ok = set(shapes) == set(keys) and all(s is not None and len(s) == 1 for s in shapes.values())
    if not ok or len(set(shapes.values())) != 1:
        want = ", ".join(f"{k!r}: (C,)" for k in keys)
        raise ValueError(
            f"{layer!r}: {what} must be {{{want}}}, C the input's last axis; got {describe(tree)}"
        )
    (C,) = shapes[keys[0]]
    if x is not None and x.shape[-1] != C:
        raise ValueError(
            f"{layer!r}: {what} hold C = {C} channels: expects inputs of shape (batch, ..., {C}), "
            f"got {tuple(x.shape)}"
        )


def affine_params(C: int) -> Params:
    return {"scale": jnp.ones((C,)), "bias": jnp.zeros((C,))}
