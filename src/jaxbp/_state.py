"""A model's state: what keeps it, its initial tree, and refusing to run without it.

State (BatchNorm's running statistics) lives beside params, one entry per child as each
combinator lays it out; a program that is not handed it would drop its updates without a word.
"""

from __future__ import annotations

from typing import Any

import jax

from jaxbp._types import Params
from jaxbp.protocols import State, is_combinator
from jaxbp.walk import Path, leaves, path_str

__all__ = ["stateful", "init_state", "refuse_dropped_state"]


def stateful(model: Any) -> list[tuple[Path, Any]]:
    """(path, layer) for every leaf layer that keeps state (has init_state), in forward order."""
    return [(p, one) for p, one in leaves(model) if callable(getattr(one, "init_state", None))]


def init_state(layer: Any, params: Params) -> State:
    """layer.init_state(params), or () for a layer that keeps no state. A combinator without
    init_state around a layer that keeps state raises: its state would be lost."""
    method = getattr(layer, "init_state", None)
    if method is not None:
        return method(params)
    kept = stateful(layer) if is_combinator(layer) else []
    if kept:
        raise TypeError(
            f"{layer!r:.80} holds layers that keep state ({', '.join(path_str(p) for p, _ in kept)}"
            " inside it) but has no init_state: define init_state(params) and thread the state "
            "through walk_forward, or it would be lost"
        )
    return ()


def refuse_dropped_state(caller: str, model, params, remedy: str) -> None:
    """A model that keeps state must be given it: a program without it would drop the updates
    (BatchNorm's running statistics) without a word. Shapes only: runs inside a trace."""
    if not jax.tree.leaves(jax.eval_shape(lambda p: init_state(model, p), params)):
        return
    where = ", ".join(f"layer {path_str(path)} {layer!r}" for path, layer in stateful(model))
    raise ValueError(f"{caller}: the model keeps state ({where}), which would be lost: {remedy}")
