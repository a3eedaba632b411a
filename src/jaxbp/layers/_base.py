"""The input checks the built-in layers raise from (the base class is `jaxbp.protocols.Layer`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from jaxbp._types import Array, Shape


def check_input(layer: Any, x: Array, expected: Shape | None = None, *, min_ndim: int = 1) -> None:
    """Raise at trace time when x cannot be this layer's input."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{layer!r}: input must be an array, got {type(x).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{layer!r}: input must be floating point, got dtype {x.dtype}")
    if x.ndim < min_ndim + 1:
        raise ValueError(
            f"{layer!r}: input needs a batch axis and {min_ndim} feature axis/axes, "
            f"got shape {tuple(x.shape)}"
        )
    if expected is not None and tuple(x.shape[1:]) != tuple(expected):
        raise ValueError(
            f"{layer!r}: expects inputs of shape (batch, {', '.join(map(str, expected))}), "
            f"got {tuple(x.shape)}"
        )


def describe(tree: Any) -> str:
    """{'W': (3, 3, 2, 4), 'b': list}: what a params tree holds, for error messages."""
    if not isinstance(tree, Mapping):
        return type(tree).__name__
    shown = (
        f"{k!r}: {tuple(v.shape) if hasattr(v, 'shape') else type(v).__name__}"
        for k, v in tree.items()
    )
    return "{" + ", ".join(shown) + "}"
