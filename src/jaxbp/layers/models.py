"""Model builders: networks made of the layers in this package."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxbp.layers.activations import activation as _activation
from jaxbp.layers.combinators import Serial, serial
from jaxbp.layers.dense import Dense


def mlp(
    features: Sequence[int], activation: str = "sigmoid", output_activation: str | None = None
) -> Serial:
    """Dense(f) for each f in features, `activation` between them, `output_activation` last."""
    if not features:
        raise ValueError("mlp: features must name at least one layer size")
    layers: list[Any] = []
    for i, f in enumerate(features):
        layers.append(Dense(f))
        if i < len(features) - 1:
            layers.append(_activation(activation))
    if output_activation is not None:
        layers.append(_activation(output_activation))
    return serial(*layers)
