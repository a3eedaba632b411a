"""The protocol's adapters: defaults for the optional methods, modes, and paths, in one place."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from jaxbp._types import Array, Params, PRNGKey, Residuals

__all__ = [
    "State", "Path", "init_state", "forward_state", "eval_mode", "train_mode", "map_layers",
    "leaves", "path_str", "is_combinator",
]  # fmt: skip

State = Any  # a pytree beside params: one entry per child, () for stateless layers
Path = tuple[int, ...]  # a layer's address in the params tree: (3, 0, 1) is params[3][0][1]


def is_combinator(layer: Any) -> bool:
    """Combinators hold other layers (`sublayers()`) and sweep through them by path."""
    return callable(getattr(layer, "sublayers", None))


def init_state(layer: Any, params: Params) -> State:
    """layer.init_state(params), or () for a layer that keeps no state."""
    method = getattr(layer, "init_state", None)
    return () if method is None else method(params)


def forward_state(
    layer: Any, params: Params, state: State, x: Array, *, key: PRNGKey | None = None
) -> tuple[Array, Residuals, State]:
    """layer.forward_state(...), or forward(...) with the state passed through unchanged."""
    method = getattr(layer, "forward_state", None)
    if method is not None:
        return method(params, state, x, key=key)
    y, residuals = layer.forward(params, x, key=key)
    return y, residuals, state


def map_layers(fn: Callable[[Any], Any], layer: Any) -> Any:
    """fn applied to every layer of the tree, children first; combinators rebuilt around them."""
    if is_combinator(layer):
        layer = layer.with_sublayers(tuple(map_layers(fn, c) for _, c in layer.sublayers()))
    return fn(layer)


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


def leaves(model: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """(path, layer) for every layer that is not a combinator, in forward order."""
    if not is_combinator(model):
        yield path, model
        return
    for step, child in model.sublayers():
        yield from leaves(child, path + step)


def path_str(path: Path) -> str:
    """(3, 0, 1) -> '[3][0][1]'; the model itself, (), is '[]'."""
    return "".join(f"[{i}]" for i in path) or "[]"
