"""Layers: pure objects whose backward rule (VJP) is written by hand, next to the forward pass.

The protocol (required methods, the optional members a layer declares about itself, and how
combinators and paths work) is stated once, in `jaxbp.protocols`; `Layer` is its base class,
which supplies `apply`. Combinators (Serial, Residual, Parallel, Tied) are layers whose backward
sums their fan-out's cotangents; `CombinatorBase` gives a user's combinator forward and backward
from its walk. A path names one leaf layer by its place in the params tree, (3, 0, 1) being
`params[3][0][1]`; Residual and Tied add no step (`jaxbp.walk`). Error messages, signals,
replacement rules, check reports and quantities name layers that way: `layer [3][0][1] Dense(...)`.
"""

from __future__ import annotations

from jaxbp._state import init_state
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
from jaxbp.layers.combinators import CombinatorBase, Parallel, Residual, Serial, serial
from jaxbp.layers.conv import Conv
from jaxbp.layers.dense import Dense
from jaxbp.layers.dropout import Dropout
from jaxbp.layers.embedding import Embedding
from jaxbp.layers.gpt2 import gpt2
from jaxbp.layers.group_norm import GroupNorm
from jaxbp.layers.mode import eval_mode, train_mode
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
from jaxbp.layers.recurrent import GRU, LSTM, RNN
from jaxbp.layers.reshape import Flatten
from jaxbp.layers.tied import Tied
from jaxbp.protocols import Layer, forward_state

__all__ = [
    "Layer", "Dense", "Sigmoid", "Tanh", "Relu", "LeakyRelu", "Elu", "Gelu", "Softplus", "Silu",
    "Identity", "Softmax", "LogSoftmax", "Flatten", "Serial", "serial", "mlp", "activation",
    "ACTIVATIONS", "Residual", "Parallel", "CombinatorBase", "eval_mode", "train_mode",
    "init_state", "forward_state", "Dropout", "Embedding", "BatchNorm", "LayerNorm", "RMSNorm",
    "residual_mlp", "branched_mlp", "PRESETS", "IMAGE_PRESETS", "preset", "Conv", "MaxPool",
    "AvgPool", "GlobalAvgPool", "cnn", "resnet", "SelfAttention", "LSTM", "GRU", "RNN",
    "PositionEmbedding", "Tied", "gpt", "char_rnn",
    "GroupNorm", "gpt2",
]  # fmt: skip
