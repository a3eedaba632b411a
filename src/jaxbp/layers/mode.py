"""Training and evaluation mode: every layer with a `train` field switched at once, explicitly."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from jaxbp.walk import map_layers

__all__ = ["eval_mode", "train_mode"]


def _with_mode(train: bool) -> Callable[[Any], Any]:
    def set_mode(layer):
        if not dataclasses.is_dataclass(layer):
            return layer
        fields = {f.name for f in dataclasses.fields(layer)}
        return dataclasses.replace(layer, train=train) if "train" in fields else layer

    return set_mode


def eval_mode(model: Any) -> Any:
    """The model with every mode-dependent layer (Dropout, BatchNorm) in evaluation mode."""
    return map_layers(_with_mode(False), model)


def train_mode(model: Any) -> Any:
    """The model with every mode-dependent layer in training mode (the layers' default)."""
    return map_layers(_with_mode(True), model)
