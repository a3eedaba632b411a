"""Layers that only move values around: Flatten."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from jaxbp.layers._base import check_input
from jaxbp.protocols import Layer


@dataclasses.dataclass(frozen=True)
class Flatten(Layer):
    r"""Flatten: (batch, *shape) -> (batch, prod(shape)); dx = dy reshaped back.

    **Forward.** $y_n = \mathrm{vec}(x_n)$, row-major: $x$ `(batch, *shape)` becomes $y$
    `(batch, prod(shape))`.

    **Backward.** $\mathrm{d}x = \mathrm{d}y$ reshaped to $x$'s shape; no parameters.

    **Residuals.** Only $x$'s shape, carried by a zero-size array `(batch, *shape, 0)` (it costs
    nothing and passes through `jit` and `vmap`).
    """

    examples_independent = True

    def init(self, key, input_shape):
        return (math.prod(input_shape),), ()

    def forward(self, params, x, *, key=None):
        check_input(self, x)
        # A zero-size array carries x's shape through jit and vmap at no cost.
        return x.reshape(x.shape[0], -1), jnp.zeros((*x.shape, 0), x.dtype)

    def backward(self, params, shape_carrier, dy):
        return (), dy.reshape(shape_carrier.shape[:-1])
