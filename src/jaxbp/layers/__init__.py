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

Growth, by optional methods and one adapter each (`jaxbp.layers.protocol`), never by editing
every layer:

    init_state(params) -> state
        A pytree of arrays the layer updates in training and reads in evaluation (BatchNorm's
        running statistics); never inside params, so optax never sees it. Default: ().
    forward_state(params, state, x, *, key=None) -> (y, residuals, new_state)
        forward, for layers that read or write state, and for combinators, which thread it
        through their children (one entry per child, () for stateless ones, as optax's chain
        does). Default: forward(...) and the state unchanged.
    train: bool = True
        A field of every layer that behaves differently in training and evaluation (Dropout,
        BatchNorm). `eval_mode(model)` returns the model with it False everywhere; nothing
        switches mode implicitly.
    key
        Stochastic layers raise without one in training (never a silent identity). A
        combinator hands its child at path p the key fold_in(key, p[-1]), so adding a layer
        does not reshuffle the others' randomness.
    per_example_grads, per_example_sq_norms, sum_grad_squared, weighted_grad
        Per-example rules for jaxbp.quantities (signatures and adapter in
        jaxbp.quantities._leaves); without them a generic exact rule (the layer's own backward,
        example by example) runs for layers whose examples never meet.

Integer inputs (Embedding's ids) have no cotangent: their dx is a float0 array (JAX's own
convention), and a sweep stops there.

Combinators (Serial, Residual, Parallel, Tied) are layers whose backward sums their fan-out's
cotangents. Every layer is addressed by its path in the params tree: (3, 0, 1) is
params[3][0][1]; Residual and Tied add no step to the path (their params are their body's).
Error messages, signals, replacement rules and check reports name layers by path:
`layer [3][0][1] Dense(...)`.
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
from jaxbp.layers.attention import SelfAttention
from jaxbp.layers.combinators import Parallel, Residual, Serial, serial
from jaxbp.layers.conv import Conv
from jaxbp.layers.dense import Dense
from jaxbp.layers.dropout import Dropout
from jaxbp.layers.embedding import Embedding
from jaxbp.layers.models import (
    IMAGE_PRESETS,
    PRESETS,
    branched_mlp,
    char_rnn,
    cnn,
    gpt,
    mlp,
    preset,
    residual_mlp,
    resnet,
)  # fmt: skip
from jaxbp.layers.norm import BatchNorm, LayerNorm, RMSNorm
from jaxbp.layers.pool import AvgPool, GlobalAvgPool, MaxPool
from jaxbp.layers.position import PositionEmbedding
from jaxbp.layers.protocol import eval_mode, forward_state, init_state, train_mode
from jaxbp.layers.recurrent import GRU, LSTM, RNN
from jaxbp.layers.reshape import Flatten
from jaxbp.layers.tied import Tied

__all__ = [
    "Layer", "Dense", "Sigmoid", "Tanh", "Relu", "LeakyRelu", "Elu", "Gelu", "Softplus", "Silu",
    "Identity", "Softmax", "LogSoftmax", "Flatten", "Serial", "serial", "mlp", "activation",
    "ACTIVATIONS", "Residual", "Parallel", "eval_mode", "train_mode", "init_state",
    "forward_state", "Dropout", "Embedding", "BatchNorm", "LayerNorm", "RMSNorm", "residual_mlp",
    "branched_mlp", "PRESETS", "IMAGE_PRESETS", "preset", "Conv", "MaxPool", "AvgPool",
    "GlobalAvgPool", "cnn", "resnet", "SelfAttention", "LSTM", "GRU", "RNN", "PositionEmbedding",
    "Tied", "gpt", "char_rnn",
]  # fmt: skip
