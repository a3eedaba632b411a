"""Model builders from the layers in this package, and the presets `jaxbp train` names."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from jaxbp.layers.activations import Gelu
from jaxbp.layers.activations import activation as _activation
from jaxbp.layers.attention import SelfAttention
from jaxbp.layers.combinators import Parallel, Residual, Serial, serial
from jaxbp.layers.conv import Conv
from jaxbp.layers.dense import Dense
from jaxbp.layers.dropout import Dropout
from jaxbp.layers.embedding import Embedding
from jaxbp.layers.norm import BatchNorm, LayerNorm
from jaxbp.layers.pool import GlobalAvgPool, MaxPool
from jaxbp.layers.position import PositionEmbedding
from jaxbp.layers.recurrent import GRU, LSTM, RNN
from jaxbp.layers.reshape import Flatten
from jaxbp.layers.tied import Tied

__all__ = [
    "mlp", "residual_mlp", "branched_mlp", "cnn", "resnet", "gpt", "char_rnn", "PRESETS",
    "IMAGE_PRESETS", "preset",
]  # fmt: skip


def mlp(
    features: Sequence[int],
    activation: str = "sigmoid",
    output_activation: str | None = None,
    *,
    batch_norm: bool = False,
    dropout: float = 0.0,
) -> Serial:
    """Dense(f) for each f in features, `activation` between them, `output_activation` last.

    batch_norm puts a BatchNorm after each hidden Dense (before its activation); dropout > 0 a
    Dropout(dropout) after each hidden activation.
    """
    if not features:
        raise ValueError("mlp: features must name at least one layer size")
    layers: list[Any] = []
    for i, f in enumerate(features):
        layers.append(Dense(f))
        if i < len(features) - 1:
            layers += [BatchNorm()] if batch_norm else []
            layers.append(_activation(activation))
            layers += [Dropout(dropout)] if dropout else []
    if output_activation is not None:
        layers.append(_activation(output_activation))
    return serial(*layers)


def residual_mlp(
    width: int,
    blocks: int,
    outputs: int,
    activation: str = "relu",
    *,
    norm: str | None = "layer",
) -> Serial:
    """Dense(width), then `blocks` pre-norm residual blocks x + Dense(act(Dense(norm(x)))), then
    Dense(outputs). norm: "layer" (LayerNorm), "batch" (BatchNorm) or None."""
    norms = {"layer": LayerNorm, "batch": BatchNorm, None: None}
    if norm not in norms:
        raise ValueError(f"residual_mlp: norm must be 'layer', 'batch' or None, got {norm!r}")
    if blocks < 0:
        raise ValueError(f"residual_mlp: blocks must be >= 0, got {blocks}")
    pre = [norms[norm]()] if norm else []
    block = Residual(serial(*pre, Dense(width), _activation(activation), Dense(width)))
    return serial(Dense(width), *[block] * blocks, Dense(outputs))


def branched_mlp(widths: Sequence[int], outputs: int, merge: str = "concat") -> Serial:
    """Two branches on the same input, a relu MLP and a tanh one of the same depth, merged
    ("concat" or "sum"), then Dense(outputs)."""
    relu = serial(*(layer for w in widths for layer in (Dense(w), _activation("relu"))))
    tanh = serial(*(layer for w in widths for layer in (Dense(w), _activation("tanh"))))
    return serial(Parallel(relu, tanh, merge=merge), Dense(outputs))


def cnn(
    outputs: int = 10,
    features: Sequence[int] = (16, 32),
    hidden: int = 64,
    activation: str = "relu",
    *,
    kernel_size: tuple[int, ...] = (3, 3),
    convs: int = 2,
    batch_norm: bool = True,
) -> Serial:
    """LeNet-style, for small images (batch, H, W, C): per f in features, `convs` times
    Conv(f, kernel_size, SAME) [-> BatchNorm] -> activation, then MaxPool(2 per spatial axis);
    then Flatten, Dense(hidden), activation, Dense(outputs).
    On 8x8 digits: 8x8x16 -> 4x4x16 -> 4x4x32 -> 2x2x32 -> 128 -> 64 -> 10."""
    pool = (2,) * len(kernel_size)
    layers: list[Any] = []
    for f in features:
        for _ in range(convs):
            layers.append(Conv(f, kernel_size))
            layers += [BatchNorm()] if batch_norm else []
            layers.append(_activation(activation))
        layers.append(MaxPool(pool))
    return serial(*layers, Flatten(), Dense(hidden), _activation(activation), Dense(outputs))


def _residual_block(features: int, strides: int, project: bool, ndim: int) -> Serial:
    """Classic (post-activation) block: relu(F(x) + shortcut(x)), F = conv-BN-relu-conv-BN; the
    shortcut is x itself, or a strided 1x1 Conv and BatchNorm where the shape changes."""
    k, one = (3,) * ndim, (1,) * ndim
    body = serial(
        Conv(features, k, strides), BatchNorm(), _activation("relu"), Conv(features, k), BatchNorm()
    )
    if project:  # y = F(x) + P(x): the two branches of a Parallel sum
        merged = Parallel(body, serial(Conv(features, one, strides), BatchNorm()))
    else:
        merged = Residual(body)
    return serial(merged, _activation("relu"))


def resnet(
    outputs: int = 10, stages: Sequence[int] = (16, 32), blocks: int = 2, *, ndim: int = 2
) -> Serial:
    """ResNet (He et al. 2016, the CIFAR form): Conv(stages[0], 3x3)-BN-relu, then per stage
    `blocks` residual blocks of that width, the first block of every later stage strided 2 with a
    projection shortcut; GlobalAvgPool, Dense(outputs). ndim: spatial axes of the input."""
    if blocks < 1 or not stages:
        raise ValueError(f"resnet: needs blocks >= 1 and a stage, got {blocks} and {stages}")
    layers: list[Any] = [Conv(stages[0], (3,) * ndim), BatchNorm(), _activation("relu")]
    for i, width in enumerate(stages):
        for b in range(blocks):
            first = b == 0 and i > 0
            layers.append(_residual_block(width, 2 if first else 1, first, ndim))
    return serial(*layers, GlobalAvgPool(), Dense(outputs))


def _positive(builder: str, **sizes: Any) -> None:
    """Raise unless every size is a positive int (bool excluded), naming the builder."""
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{builder}: {name} must be an int, got {value!r}")
        if value <= 0:
            raise ValueError(f"{builder}: {name} must be positive, got {value}")


def gpt(
    vocab_size: int, context: int, *, num_layers: int = 4, features: int = 128,
    num_heads: int = 4, mlp_ratio: int = 4, tie_weights: bool = False, recompute: bool = False,
) -> Any:  # fmt: skip
    """GPT (Radford et al. 2019), pre-norm: int ids (batch, T <= context) -> logits (batch, T,
    vocab_size). Embedding(vocab, C) + PositionEmbedding(context, C), then `num_layers` blocks
    x + SelfAttention(LayerNorm(x)) [causal], x + Dense(C)(Gelu(Dense(mlp_ratio C)(LayerNorm(x)))),
    then LayerNorm, Dense(vocab). tie_weights: the head reads W = table^T (`Tied`), one matrix
    for both embeddings. Paths: [0] Embedding, [1] positions, [2 + 2l] attention block l,
    [3 + 2l] its MLP, [-2] LayerNorm, [-1] head. recompute: attention saves lse, not p."""
    _positive("gpt", vocab_size=vocab_size, context=context, num_layers=num_layers,
              features=features, num_heads=num_heads, mlp_ratio=mlp_ratio)  # fmt: skip
    if features % num_heads:
        raise ValueError(
            f"gpt: features = {features} do not split into num_heads = {num_heads} heads "
            "(features must be divisible by num_heads)"
        )
    for name, flag in (("tie_weights", tie_weights), ("recompute", recompute)):
        if not isinstance(flag, bool):
            raise TypeError(f"gpt: {name} must be a bool, got {flag!r}")
    C = features
    attention = Residual(
        serial(LayerNorm(), SelfAttention(num_heads, causal=True, recompute=recompute))
    )
    mlp_block = Residual(serial(LayerNorm(), Dense(mlp_ratio * C), Gelu(), Dense(C)))
    body = serial(
        Embedding(vocab_size, C), PositionEmbedding(context, C),
        *[attention, mlp_block] * num_layers, LayerNorm(), Dense(vocab_size),
    )  # fmt: skip
    return Tied(body, (0,), (len(body.layers) - 1,)) if tie_weights else body


_CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}


def char_rnn(vocab_size: int, *, cell: str = "lstm", embed: int = 64, hidden: int = 256) -> Serial:
    """Character-level language model (Karpathy's char-rnn): int ids (batch, T) -> logits
    (batch, T, vocab_size), Embedding(vocab, embed), a recurrent cell ("lstm", "gru" or "rnn",
    tanh) of `hidden` features from a zero state, Dense(vocab)."""
    _positive("char_rnn", vocab_size=vocab_size, embed=embed, hidden=hidden)
    if cell not in _CELLS:
        raise ValueError(f"char_rnn: cell must be one of {', '.join(_CELLS)}, got {cell!r}")
    return serial(Embedding(vocab_size, embed), _CELLS[cell](hidden), Dense(vocab_size))


# `jaxbp train --model NAME`: (what it is, build(outputs), the input it takes: "flat" vectors
# or "image" arrays (batch, H, W, C)).
PRESETS: dict[str, tuple[str, Callable[[int], Any]]] = {
    "residual": (
        "Dense(128), 3 pre-LayerNorm residual blocks, Dense(out)",
        lambda outputs: residual_mlp(128, 3, outputs),
    ),
    "residual-bn": (
        "the same with BatchNorm in the blocks",
        lambda outputs: residual_mlp(128, 3, outputs, norm="batch"),
    ),
    "branched": (
        "Parallel(relu MLP 128-128, tanh MLP 128-128, concat), Dense(out)",
        lambda outputs: branched_mlp((128, 128), outputs),
    ),
    "batchnorm": (
        "MLP 512-256 with BatchNorm before each relu",
        lambda outputs: mlp([512, 256, outputs], "relu", batch_norm=True),
    ),
    "dropout": (
        "MLP 512-256, relu, Dropout(0.2) after each",
        lambda outputs: mlp([512, 256, outputs], "relu", dropout=0.2),
    ),
    "cnn": (
        "images: 2x(Conv16-BN-relu), pool, 2x(Conv32-BN-relu), pool, Dense(64), Dense(out)",
        lambda outputs: cnn(outputs),
    ),
    "resnet": (
        "images: ResNet of 4 classic blocks (16, 32 channels), BatchNorm, projection shortcut",
        lambda outputs: resnet(outputs, (16, 32), 2),
    ),
}
"""The presets `jaxbp train --model NAME` builds: name -> (what it is, build(outputs))."""
IMAGE_PRESETS = ("cnn", "resnet")
"""The presets that take images (batch, H, W, C); the others take flat vectors."""


def preset(name: str, outputs: int) -> Any:
    """The preset model called `name` with `outputs` outputs; unknown names list the valid ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name][1](outputs)
