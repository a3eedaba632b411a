"""Dense: the affine map, and the one layer whose backward is a matrix product per parameter."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxbp._matmul import weight_grad
from jaxbp._types import Params, PRNGKey, Shape
from jaxbp.layers._base import Layer, _check_input


@dataclasses.dataclass(frozen=True)
class Dense(Layer):
    """Affine map y = x @ W + b; dW = x^T dy, db = sum_batch dy, dx = dy W^T.

    (weight_grad computes x^T dy in the layout that is fastest on the platform.)

    x: (batch, in) -> y: (batch, features). W starts LeCun-normal (variance 1/in), b at zero.
    """

    features: int

    def __post_init__(self):
        if not isinstance(self.features, int) or isinstance(self.features, bool):
            raise TypeError(f"Dense: features must be an int, got {self.features!r}")
        if self.features <= 0:
            raise ValueError(f"Dense: features must be positive, got {self.features}")

    def init(self, key: PRNGKey, input_shape: Shape) -> tuple[Shape, Params]:
        if len(input_shape) != 1:
            raise ValueError(f"{self!r}: input shape must be (in,), got {tuple(input_shape)}")
        (fan_in,) = input_shape
        W = jax.random.normal(key, (fan_in, self.features)) / math.sqrt(fan_in)
        return (self.features,), {"W": W, "b": jnp.zeros((self.features,))}

    def forward(self, params, x, *, key=None):
        _check_input(self, x, params["W"].shape[:1])
        return x @ params["W"] + params["b"], x

    def backward(self, params, x, dy):
        return {"W": weight_grad(x, dy), "b": dy.sum(0)}, dy @ params["W"].T
