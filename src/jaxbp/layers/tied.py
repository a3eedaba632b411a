"""Tied: one matrix shared by two layers, an Embedding's table and a Dense head's W = table^T."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax

from jaxbp._state import init_state
from jaxbp._types import Params, PRNGKey, Shape
from jaxbp.layers._base import describe
from jaxbp.layers.combinators import CombinatorBase, check_layers
from jaxbp.layers.dense import Dense
from jaxbp.layers.embedding import Embedding
from jaxbp.walk import (
    Path,
    as_path,
    leaves,
    path_str,
    sweep_backward,
    sweep_forward,
)  # fmt: skip

__all__ = ["Tied"]


@dataclasses.dataclass(frozen=True)
class Tied(CombinatorBase):
    r"""Weight tying (Press & Wolf, 2017): the Dense head at path `target` reads W = table^T, the
    table of the Embedding at path `source` (paths inside body), so one (vocab, C) matrix serves
    as both the input and the output embedding.

    Init: the body's, the table scaled by 1 / sqrt(features), Dense's LeCun scale for its W.
    Forward: W = table^T is put at `target` (whose params hold only "b", or nothing for a
    Dense(use_bias=False): {}), then the body's walk.
    Backward: the body's walk, then dtable += dW^T and dW leaves the tree: a parameter that two
    layers read gets the sum of their two gradients (a fan-out, as x's in Residual).
    params, state and residuals: the body's, less the target's W; the body sits at Tied's own
    path (Tied adds no step), so every layer keeps its path in signals, rules and check rows.

    **Forward.** With $E$ the source Embedding's table `(vocab, C)`, the target Dense head computes
    with

    $$
    W = E^\top \quad (C \times \mathrm{vocab})
    $$

    and the rest of the body runs unchanged.

    **Backward.** $E$ is read twice (a fan-out), so its gradient is the sum of the two:

    $$
    \mathrm{d}E = \mathrm{d}E_{\text{embedding}} + (\mathrm{d}W_{\text{head}})^\top
    $$

    where $\mathrm{d}E_{\text{embedding}}$ is the Embedding's scatter-add and
    $\mathrm{d}W_{\text{head}} = h^\top \mathrm{d}y$ is Dense's rule, $h$ the head's input.

    **Residuals.** The body's.
    """

    body: Any
    source: Path
    target: Path
    params_disjoint = False  # the head's W is the table: two leaves read one matrix
    examples_independent = True  # a shared matrix, no shared rows

    def __post_init__(self):
        check_layers("Tied", (self.body,))
        for name in ("source", "target"):
            object.__setattr__(self, name, as_path(getattr(self, name), f"Tied: {name}"))
        found = dict(leaves(self.body))
        for name, kind, a in (("source", Embedding, "an"), ("target", Dense, "a")):
            path = getattr(self, name)
            if not isinstance(found.get(path), kind):
                what = f"{found[path]!r}" if path in found else "no layer"
                raise TypeError(
                    f"Tied: {name} {path_str(path)} must name {a} {kind.__name__} of the body, "
                    f"found {what}; layers at {', '.join(map(path_str, found))}"
                )
        # The head's own params, W aside: {"b"}, or none for a Dense(use_bias=False).
        object.__setattr__(self, "_head_keys", {"b"} if found[self.target].use_bias else set())
        vocab, out = found[self.source].num_embeddings, found[self.target].features
        if vocab != out:
            raise ValueError(
                f"Tied: W = table^T needs the head's features to equal the vocabulary; "
                f"{found[self.source]!r} at {path_str(self.source)} has {vocab} rows, "
                f"{found[self.target]!r} at {path_str(self.target)} has {out} outputs"
            )

    def sublayers(self):
        return (((), self.body),)

    def with_sublayers(self, layers):
        return Tied(*layers, self.source, self.target)

    def init(self, key: PRNGKey, input_shape: Shape) -> tuple[Shape, Params]:
        shape, params = self.body.init(key, input_shape)
        table, head = _at(params, self.source)["table"], _at(params, self.target)
        if tuple(head["W"].shape) != tuple(table.shape[::-1]):
            raise ValueError(
                f"Tied: W = table^T needs the head at {path_str(self.target)} to read the "
                f"{table.shape[1]} features of the table at {path_str(self.source)}, but it reads "
                f"{head['W'].shape[0]} (its W is {tuple(head['W'].shape)}, the table "
                f"{tuple(table.shape)})"
            )
        # The head's W = table^T starts at the scale Dense would give it, 1 / sqrt(features):
        # the Embedding's N(0, 1) rows would make logits of std sqrt(features) at step 0.
        source = _at(params, self.source) | {"table": table / math.sqrt(table.shape[1])}
        scaled = _put(params, self.source, source)
        return shape, _put(scaled, self.target, {k: v for k, v in head.items() if k != "W"})

    def init_state(self, params):
        return init_state(self.body, self._tie(params, ()))

    def walk_forward(self, params, state, x, key, path, sweep):
        return sweep_forward(self.body, self._tie(params, path), state, x, key, path, sweep)

    def walk_backward(self, params, residuals, dy, path, sweep):
        grads, dx = sweep_backward(self.body, self._tie(params, path), residuals, dy, path, sweep)
        head, embedding = _at(grads, self.target), _at(grads, self.source)
        with jax.named_scope(f"{path_str(path)} Tied sum"):
            dtable = embedding["table"] + head["W"].T  # the two gradients of one matrix add
        grads = _put(grads, self.source, {**embedding, "table": dtable})
        return _put(grads, self.target, {k: v for k, v in head.items() if k != "W"}), dx

    def _tie(self, params: Params, path: Path) -> Params:
        """params with W = table^T put at the target; params of the wrong structure raise."""
        where = f"layer {path_str(path)} " if path else ""
        source, target = (path_str(path + p) for p in (self.source, self.target))
        embedding, head = (_at(params, p, path) for p in (self.source, self.target))
        table = embedding.get("table") if isinstance(embedding, Mapping) else None
        if getattr(table, "ndim", None) != 2:
            raise ValueError(
                f"{where}Tied: params at {source} must be {{'table': (vocab, C)}}, "
                f"got {describe(embedding)}"
            )
        if not isinstance(head, Mapping) or set(head) != self._head_keys:
            alone = "{'b': (vocab,)} alone" if self._head_keys else "{} (the head has no bias)"
            raise ValueError(
                f"{where}Tied: params at {target} must be {alone}, the head's W "
                f"being the table at {source} transposed; got {describe(head)}"
            )
        return _put(params, self.target, {**head, "W": table.T})


def _at(tree: Any, path: Path, tied: Path = ()) -> Any:
    """The subtree at path; a tree without that entry raises, naming paths from the model's
    root (tied: the Tied layer's own path)."""
    for depth, step in enumerate(path):
        if not isinstance(tree, (tuple, list)) or not 0 <= step < len(tree):
            where = f"layer {path_str(tied)} " if tied else ""
            raise ValueError(
                f"{where}Tied: params have no entry at {path_str(tied + path[: depth + 1])}; "
                f"got {describe(tree)} at {path_str(tied + path[:depth])}"
            )
        tree = tree[step]
    return tree


def _put(tree: Any, path: Path, value: Any) -> Any:
    """A copy of tree with the subtree at path replaced by value (tuples rebuilt, not mutated)."""
    if not path:
        return value
    items = list(tree)
    items[path[0]] = _put(tree[path[0]], path[1:], value)
    return type(tree)(items)
