"""Swappable credit assignment: the same forward pass, a different backward rule.

Autodiff can only give the true gradient; a hand-written sweep can be told to do otherwise.
A `RuleEngine` is an engine (`jaxbp.protocols.Engine`: backprop's signature and result), so the
training loop takes it wherever it takes `backprop`. Built here:

- `engine_from_rules(rules)`: the hook. `rules[path](params, residuals, dy) -> (dparams, dx)`
  replaces the backward of the leaf layer at that path (e.g. (3, 0, 1); an int i means (i,));
  every other layer keeps its own, and every combinator its own (a Residual's skip still adds).
- `feedback_alignment` (FA, Lillicrap et al. 2016): each layer with a weight matrix that declares
  a feedback rule (Dense: `feedback_shape`, `feedback_backward`) sends its delta back through a
  fixed random B (W's shape) instead of W, dx = dy B^T; dW = x^T dy and db as usual.
- `direct_feedback_alignment` (DFA, Nokland 2016): the output error e = dC/dy_pred goes straight
  to every hidden layer through a fixed random B_k: the input of each such layer k but the first
  (the output of the activation below it) receives e @ B_k in place of dy W_k^T. From there the
  activations' own rules turn it into dC/dz of the layer below; the last one gets the true
  error. For a model that outputs logits, e is dC/dz_L, the error DFA papers project.
- `alignment(engine_grads, true_grads)`: the angle in degrees between the update an engine used
  and the true gradient, per parameter leaf.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxbp._types import Array, Grads, Params, PRNGKey, Shape
from jaxbp.signals import backprop_with_signals, to_floats
from jaxbp.walk import ByPath, Path, Rule, as_path, layer_at, leaves, params_at

__all__ = [
    "RuleEngine", "engine_from_rules", "feedback_rule", "feedback_alignment", "direct_feedback",
    "direct_feedback_alignment", "angles", "alignment",
]  # fmt: skip


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, like a function
class RuleEngine:
    """A gradient engine: backprop's forward pass and signature, other backward rules.

    rules(e) -> {leaf path: Rule}, given the output error e = dC/dy_pred. feedback holds the
    fixed matrices the rules use, by the path of the layer whose input cotangent they make.
    """

    rules: Callable[[Array], Mapping[Path, Rule]]
    feedback: Mapping[Path, Array] = dataclasses.field(default_factory=dict)
    name: str = "engine"

    def __repr__(self) -> str:
        return self.name

    def __call__(
        self, model: Any, loss: Any, params: Params, x: Array, y: Array, *,
        key: PRNGKey | None = None, state: Any = None,
    ) -> tuple:  # fmt: skip
        """(value, grads) like backprop; with state=..., (value, grads, new_state)."""
        out = self.with_signals(model, loss, params, x, y, key=key, state=state)
        return out[:2] if state is None else (*out[:2], out[3])

    def with_signals(
        self, model: Any, loss: Any, params: Params, x: Array, y: Array, *,
        key: PRNGKey | None = None, state: Any = None,
    ) -> tuple:  # fmt: skip
        """(value, grads, signals[, new_state]), the deltas being those this engine sent back."""
        return backprop_with_signals(
            model, loss, params, x, y, key=key, state=state, rules=self.rules
        )


def engine_from_rules(
    rules: Mapping[Path | int, Rule],
    *,
    name: str = "custom",
    feedback: Mapping[Path, Array] | None = None,
) -> RuleEngine:
    """The hook: an engine whose layer at path p runs `rules[p](params, residuals, dy)`, which
    returns (dparams, dx).

    dparams must have the structure of the layer's params and dx the shape of its input.
    feedback: matrices the rules close over, kept on the engine for inspection.
    """
    rules = {as_path(k, "a rule's path"): rule for k, rule in rules.items()}
    return RuleEngine(rules=lambda e: rules, feedback=ByPath(feedback or {}), name=name)


def feedback_rule(layer: Any, B: Array) -> Rule:
    """layer's backward with dx = dy B^T in place of dy W^T; dparams as usual from dy.

    For a layer that declares feedback_backward (Dense); B has W's shape and stays fixed.
    """
    if not callable(getattr(layer, "feedback_backward", None)):
        raise TypeError(
            f"feedback_rule: {layer!r} has no feedback_backward(params, residuals, dy, B), "
            "the rule that sends dy back through a fixed B (Dense has one)"
        )
    return lambda params, residuals, dy: layer.feedback_backward(params, residuals, dy, B)


def _feedback_shapes(model: Any, params_or_input_shape: Params | Shape, key: PRNGKey) -> dict:
    """{path: (in, out)} of the weight of each layer with a feedback rule, at any depth, in
    forward order, from params or traced from an input shape."""
    given = params_or_input_shape
    if isinstance(given, (tuple, list)) and all(isinstance(d, int) for d in given):
        _, given = jax.eval_shape(lambda k: model.init(k, tuple(params_or_input_shape)), key)
    return {
        path: layer.feedback_shape(params_at(given, path))
        for path, layer in leaves(model)
        if callable(getattr(layer, "feedback_shape", None))
    }


@functools.partial(jax.jit, static_argnames="specs")
def _normals(key: PRNGKey, specs: tuple) -> dict[int, Array]:
    """{k: matrix of `shape` ~ N(0, 1/fan)} for (k, shape, fan) in specs, cut from one draw.

    One random op: compiled one per matrix, the draws would take seconds to compile.
    """
    sizes = [math.prod(shape) for _, shape, _ in specs]
    pieces = jnp.split(
        jax.random.normal(key, (sum(sizes),)), list(itertools.accumulate(sizes))[:-1]
    )
    return {k: p.reshape(shape) / math.sqrt(fan) for (k, shape, fan), p in zip(specs, pieces)}


def feedback_alignment(
    model: Any, params_or_input_shape: Params | Shape, *, key: PRNGKey
) -> RuleEngine:
    """FA: every layer k with a feedback rule (Dense) gets a fixed B_k ~ N(0, 1/in_k) of its
    weight's shape (in_k, out_k).

    params_or_input_shape: the model's params, or its per-example input shape, to size the B's.
    The same key gives the same matrices; engine.feedback holds them.
    """
    shapes = _feedback_shapes(model, params_or_input_shape, key)
    if not shapes:
        raise ValueError(
            f"feedback_alignment: {model!r:.80} has no layer with a feedback rule (Dense)"
        )
    # Variance 1/in, like W's own init, so backward signals start at backprop's scale.
    specs = tuple((k, shape, shape[0]) for k, shape in shapes.items())
    matrices = _normals(key, specs)
    rules = {k: feedback_rule(layer_at(model, k), B) for k, B in matrices.items()}
    return engine_from_rules(rules, name="feedback_alignment", feedback=matrices)


def _projected(layer: Any, B: Array, e: Array) -> Rule:
    """layer's dparams from the delta that reaches it; its dx replaced by e @ B."""

    def rule(params, residuals, dy):
        if e.shape[-1] != B.shape[0]:
            raise ValueError(
                f"feedback matrix has {B.shape[0]} rows, the output error has {e.shape[-1]} columns"
            )
        dparams, _ = layer.backward(params, residuals, dy)
        return dparams, e @ B.astype(e.dtype)

    return rule


def direct_feedback(
    model: Any, matrices: Mapping[Path | int, Array], *, name: str = "direct_feedback"
) -> RuleEngine:
    """DFA with given matrices: layer k's input cotangent is e @ matrices[k], (n_out, in_k)."""
    matrices = {as_path(k, "a matrix's path"): B for k, B in matrices.items()}
    layers = {k: layer_at(model, k) for k in matrices}

    def rules(e):
        return {k: _projected(layers[k], B, e) for k, B in matrices.items()}

    return RuleEngine(rules=rules, feedback=ByPath(matrices), name=name)


def direct_feedback_alignment(
    model: Any, params_or_input_shape: Params | Shape, *, key: PRNGKey
) -> RuleEngine:
    """DFA: each layer k with a feedback rule (Dense) but the first gets a fixed
    B_k ~ N(0, 1/n_out), (n_out, in_k). n_out is the last such layer's width (the model's
    output). The same key gives the same B's.
    """
    shapes = _feedback_shapes(model, params_or_input_shape, key)
    if len(shapes) < 2:
        raise ValueError(
            f"direct_feedback_alignment: {model!r:.80} needs two or more layers with a feedback "
            "rule (Dense)"
        )
    dense = list(shapes)  # forward order
    n_out = shapes[dense[-1]][1]
    # Variance 1/n_out, the projection's fan-in, as a Dense layer from e would be drawn.
    specs = tuple((k, (n_out, shapes[k][0]), n_out) for k in dense[1:])
    matrices = _normals(key, specs)
    return direct_feedback(model, matrices, name="direct_feedback_alignment")


def _angle(a: Array, b: Array) -> Array:
    # 2 atan2(|u - v|, |u + v|) of the unit vectors is arccos(<a,b>/(|a||b|)), exact at 0 and 180.
    u, v = jnp.ravel(a) / jnp.linalg.norm(a), jnp.ravel(b) / jnp.linalg.norm(b)
    return jnp.degrees(2 * jnp.arctan2(jnp.linalg.norm(u - v), jnp.linalg.norm(u + v)))


def angles(a: Grads, b: Grads) -> Grads:
    """Per leaf, the angle in degrees between a and b (NaN where either is zero); jit-compatible."""
    return jax.tree.map(_angle, a, b)


# Compiled once per tree structure, since alignment runs outside jit.
_angles = jax.jit(angles)


def alignment(engine_grads: Grads, true_grads: Grads) -> dict[str, float | None]:
    """{leaf path, e.g. `"[2]['W']"`: angle in degrees} between an engine's update and the true
    gradient; 0 is the true direction, 90 orthogonal, 180 opposite; None for a zero leaf."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(_angles(engine_grads, true_grads))
    return {jax.tree_util.keystr(path): to_floats(value) for path, value in leaves}
