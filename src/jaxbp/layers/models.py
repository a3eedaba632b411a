"""Model builders from the layers in this package, and the presets `jaxbp train` names."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from jaxbp.layers.activations import activation as _activation
from jaxbp.layers.combinators import Parallel, Residual, Serial, serial
from jaxbp.layers.dense import Dense
from jaxbp.layers.dropout import Dropout
from jaxbp.layers.norm import BatchNorm, LayerNorm

__all__ = ["mlp", "residual_mlp", "branched_mlp", "PRESETS", "preset"]


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


# `jaxbp train --model NAME`: each builds a model for `outputs` classes or targets.
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
}


def preset(name: str, outputs: int) -> Any:
    """The preset model called `name` with `outputs` outputs; unknown names list the valid ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name][1](outputs)
