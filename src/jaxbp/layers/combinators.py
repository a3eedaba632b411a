"""Composition: layers in sequence, each addressed by its position."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jaxbp._types import Params
from jaxbp.layers._base import Layer


@dataclasses.dataclass(frozen=True)
class Serial(Layer):
    """Layers in sequence. params: a tuple of each layer's params. backward: the reverse sweep."""

    layers: tuple

    def __repr__(self):
        return f"serial({', '.join(map(repr, self.layers))})"

    def init(self, key, input_shape):
        shape, params = tuple(input_shape), []
        for i, (layer, k) in enumerate(zip(self.layers, jax.random.split(key, len(self.layers)))):
            with _blame(i, layer):
                shape, p = layer.init(k, shape)
            params.append(p)
        return shape, tuple(params)

    def forward(self, params, x, *, key=None):
        y, residuals, _ = self.forward_sweep(params, x, key=key)
        return y, residuals

    def backward(self, params, residuals, dy):
        dparams, dx, _ = self.reverse_sweep(params, residuals, dy)
        return dparams, dx

    def forward_sweep(self, params, x, *, key=None):
        """forward, also returning each layer's input: (y, residuals, inputs)."""
        _check_params(self, params)
        keys = [None] * len(self.layers) if key is None else jax.random.split(key, len(self.layers))
        residuals, inputs = [], []
        for i, (layer, p, k) in enumerate(zip(self.layers, params, keys)):
            inputs.append(x)
            with _blame(i, layer):
                x, r = layer.forward(p, x, key=k)
            residuals.append(r)
        return x, tuple(residuals), tuple(inputs)

    def reverse_sweep(self, params, residuals, dy, rules=None):
        """backward, also returning the cotangent reaching each layer's output.

        Returns (dparams, dx, deltas), deltas[i] being dC/d(output of layer i).

        rules[i], when given, replaces layer i's backward rule (the forward pass is unchanged).
        """
        rules = rules or {}
        dparams, deltas = [None] * len(self.layers), [None] * len(self.layers)
        for i in reversed(range(len(self.layers))):
            deltas[i] = dy
            dparams[i], dy = rules.get(i, self.layers[i].backward)(params[i], residuals[i], dy)
        return tuple(dparams), dy, tuple(deltas)


class _blame:
    """Prefix errors raised inside a serial's layer with its position: 'layer [2] Dense(...)'."""

    def __init__(self, index: int, layer: Any):
        self.prefix = f"layer [{index}] {layer!r}"

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if kind in (ValueError, TypeError) and not str(error).startswith("layer ["):
            raise kind(f"{self.prefix}: {error}") from error
        return False


def _check_params(model: Serial, params: Params) -> None:
    if not isinstance(params, (tuple, list)) or len(params) != len(model.layers):
        got = (
            f"{type(params).__name__} of length {len(params)}"
            if hasattr(params, "__len__")
            else type(params).__name__
        )
        raise ValueError(
            f"serial of {len(model.layers)} layers needs a tuple of {len(model.layers)} params, "
            f"got {got}"
        )


def serial(*layers: Any) -> Serial:
    """Compose layers in sequence; params is the tuple of each layer's params, in order."""
    for i, layer in enumerate(layers):
        missing = [
            m for m in ("init", "forward", "backward") if not callable(getattr(layer, m, None))
        ]
        if missing:
            raise TypeError(
                f"serial: argument {i} ({layer!r}) is not a layer: no {', '.join(missing)}"
            )
    return Serial(tuple(layers))
