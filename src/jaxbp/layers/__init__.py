"""Layers: pure objects whose backward rule (VJP) is written by hand, next to the forward pass.

The protocol, stated once. A layer is an immutable object with four pure methods:

    init(key, input_shape) -> (output_shape, params)
        Shapes are per example (no batch axis), tuples of ints; params is a pytree of arrays,
        () when the layer has none.
    forward(params, x, *, key=None) -> (y, residuals)
        x: (batch, *input_shape). residuals is a pytree of arrays: exactly what backward needs.
        key feeds stochastic layers and is ignored by the rest.
    backward(params, residuals, dy) -> (dparams, dx)
        The hand-written vector-Jacobian product: dparams has the structure, shapes and dtypes
        of params, dx those of x.
    apply(params, x, *, key=None) -> y
        forward(...)[0].

Any object with these methods is a layer (duck typing); `Layer` only supplies `apply`.
No rule here calls jax.grad, jax.vjp or jax.jacobian: jax.grad is the referee, not the player.
"""

from __future__ import annotations

from jaxbp.layers._base import Layer
from jaxbp.layers.activations import (
    ACTIVATIONS,
    Elu,
    Gelu,
    Identity,
    LeakyRelu,
    LogSoftmax,
    Relu,
    Sigmoid,
    Silu,
    Softmax,
    Softplus,
    Tanh,
    activation,
)  # fmt: skip
from jaxbp.layers.combinators import Serial, serial
from jaxbp.layers.dense import Dense
from jaxbp.layers.models import mlp
from jaxbp.layers.reshape import Flatten

__all__ = [
    "Layer", "Dense", "Sigmoid", "Tanh", "Relu", "LeakyRelu", "Elu", "Gelu", "Softplus", "Silu",
    "Identity", "Softmax", "LogSoftmax", "Flatten", "Serial", "serial", "mlp", "activation",
    "ACTIVATIONS",
]  # fmt: skip
