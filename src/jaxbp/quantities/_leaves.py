"""One recording sweep, and each leaf layer's per-example rules: the adapter the quantities share.

A per-example gradient of a leaf's params needs only that leaf's input x (or residuals) and
its delta dC/d(output): param gradients are sums over examples of terms that each read one
example (the batch is separable), so keeping the batch axis instead of summing it gives them.
A layer may supply optional rules (STYLE: grow with optional methods and one adapter):

    per_example_grads(params, residuals, dy) -> dparams, each leaf (batch, *leaf.shape)
    per_example_sq_norms(params, residuals, dy) -> (batch,) squared norms of the same
    sum_grad_squared(params, residuals, dy) -> dparams' shapes: sum_i (per-example grad)^2
    weighted_grad(params, residuals, dy, w) -> dparams' shapes: sum_i w_i (per-example grad)

Without one, an exact generic rule runs for the library's layers whose examples are
independent (SelfAttention, LSTM, GRU, RNN, PositionEmbedding, or any layer with a class
attribute examples_independent = True): vmap over examples i of
backward(p, forward(p, x_i[None]).residuals, delta_i[None]).dparams (a recomputed forward per
example). Any other layer with params raises NotImplementedError naming its path; BatchNorm in
training couples the examples and raises too. Nothing here scales by the batch size m: deltas
carry C's 1/m, so a per-example gradient of L_i is m times these rules (the callers scale).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._types import Array, Grads, Params, PRNGKey, Residuals
from jaxbp.layers.combinators import Residual, Sweep, sweep_backward, sweep_forward
from jaxbp.layers.protocol import Path, State, is_combinator, leaves, path_str
from jaxbp.signals import ByPath, params_at

__all__ = [
    "Recording", "record", "deltas_for", "leaf_per_example_grads", "leaf_sq_norms",
    "leaf_sum_grad_squared", "leaf_weighted_grad", "has_params", "assemble", "check_supported",
    "sq_norms_per_example",
]  # fmt: skip

# Library layers whose examples never meet: the generic rule is exact for them.
_INDEPENDENT = ("SelfAttention", "LSTM", "GRU", "RNN", "PositionEmbedding")


class _Layers(ByPath):
    """The leaf layers by path: static in a Recording's tree (hashed by their paths)."""

    def __hash__(self):
        return hash(tuple(self.keys()))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Recording:
    """What one forward and one backward sweep leave behind, every leaf layer keyed by path.

    value: C; y_pred: (batch, *out); dy_pred = dC/dy_pred, y_pred's shape; grads: dC/dparams;
    state: the new state (None without one); tree: the model's whole residual tree (what
    `deltas_for` runs a second backward from). By leaf path: inputs (batch, *in); deltas
    dC/d(output) (batch, *out), carrying C's 1/m; residuals (what the leaf's backward reads);
    params (the params the leaf read: Tied's head holds W = table^T there); layers (static).
    """

    value: Array
    y_pred: Array
    dy_pred: Array
    grads: Grads
    state: State
    tree: Residuals
    inputs: ByPath
    deltas: ByPath
    residuals: ByPath
    params: ByPath
    layers: ByPath = dataclasses.field(metadata={"static": True})

    @property
    def batch(self) -> int:
        return self.dy_pred.shape[0]


def _outer_nodes(model: Any) -> dict[Path, list]:
    """For every path, the layers that sit there, outermost first (Residual adds no step)."""
    nodes: dict[Path, list] = {}

    def walk(layer, path):
        nodes.setdefault(path, []).append(layer)
        if is_combinator(layer):
            for step, child in layer.sublayers():
                walk(child, path + step)

    walk(model, ())
    return nodes


def _capture(path: Path, chain: list, captured: dict):
    """A backward rule for the outermost layer at a leaf's path that keeps the (params,
    residuals) it is handed, which are the leaf's when every layer above it there is a
    Residual (y = x + body(x) passes both through), and runs that outer layer's backward."""
    if any(not isinstance(layer, Residual) for layer in chain[:-1]):
        raise NotImplementedError(
            f"layer {path_str(path)} {chain[-1]!r} shares its path with "
            f"{', '.join(map(repr, chain[:-1]))}: only Residual may wrap a leaf at its own path"
        )

    def rule(params, residuals, dy):
        captured[path] = (params, residuals)
        return chain[0].backward(params, residuals, dy)

    return rule


def record(
    model: Any, loss: Any, params: Params, x: Array, y: Array, *,
    key: PRNGKey | None = None, state: State | None = None,
) -> Recording:  # fmt: skip
    """backprop's two sweeps, keeping each leaf layer's input, delta, residuals and params.

    Same arguments, checks and errors as `jaxbp.backprop`; works under jit.
    """
    nodes, captured = _outer_nodes(model), {}
    paths = [p for p, _ in leaves(model)]
    sweep = Sweep(record=True)
    y_pred, tree, new_state = sweep_forward(model, params, state, x, key, (), sweep)
    value, loss_residuals = loss.forward(y_pred, y)
    dy_pred = loss.backward(loss_residuals)
    sweep.rules = {p: _capture(p, nodes[p], captured) for p in paths}
    grads, _ = sweep_backward(model, params, tree, dy_pred, (), sweep)
    return Recording(
        value, y_pred, dy_pred, grads, new_state, tree,
        inputs=ByPath((p, sweep.inputs[p]) for p in paths),
        deltas=ByPath((p, sweep.deltas[p]) for p in paths),
        residuals=ByPath((p, captured[p][1]) for p in paths),
        params=ByPath((p, captured[p][0]) for p in paths),
        layers=_Layers((p, nodes[p][-1]) for p in paths),
    )  # fmt: skip


def deltas_for(model: Any, params: Params, recording: Recording, dy_pred: Array) -> ByPath:
    """A second backward sweep from another output cotangent, reusing the recorded forward.

    dy_pred: y_pred's shape (e.g. a column of the loss Hessian's square root, per example).
    Returns {leaf path: dy_pred pulled back to that leaf's output}, (batch, *out) each.
    """
    if jnp.shape(dy_pred) != recording.y_pred.shape:
        raise ValueError(
            f"deltas_for: dy_pred must have y_pred's shape {recording.y_pred.shape}, "
            f"got {jnp.shape(dy_pred)}"
        )
    sweep = Sweep(record=True)
    sweep_backward(model, params, recording.tree, dy_pred, (), sweep)
    return ByPath((p, sweep.deltas[p]) for p in recording.layers)


# ---------------------------------------------------------------------------------------------
# One leaf's rules


def has_params(params: Params) -> bool:
    return bool(jax.tree.leaves(params))


def _refuse(path: Path, layer: Any, what: str) -> None:
    """Raise NotImplementedError naming the path unless the layer's examples are separable."""
    if type(layer).__name__ == "BatchNorm" and getattr(layer, "train", False):
        raise NotImplementedError(
            f"layer {path_str(path)} {layer!r}: {what} need examples that never meet, but in "
            "training BatchNorm's batch mean and variance couple them; use eval_mode(model) "
            "with its state"
        )
    known = type(layer).__module__.startswith("jaxbp.") and type(layer).__name__ in _INDEPENDENT
    if not (callable(getattr(layer, "per_example_grads", None)) or known) and not getattr(
        layer, "examples_independent", False
    ):
        raise NotImplementedError(
            f"layer {path_str(path)} {layer!r} has no per-example rule, which {what} need: give "
            "it per_example_grads(params, residuals, dy), or examples_independent = True when "
            "its examples never meet"
        )


def check_supported(model: Any, params: Params, what: str) -> None:
    """Before any work: raise NotImplementedError naming the first leaf with params that has no
    per-example rule (or couples examples). Params of the wrong structure are left to the sweep,
    whose errors name them."""
    for path, layer in leaves(model):
        try:
            sub = params_at(params, path)
        except (IndexError, KeyError, TypeError):
            return
        if has_params(sub):
            _refuse(path, layer, what)


def _residuals(layer: Any, params: Params, x_in: Array, residuals: Residuals | None):
    return layer.forward(params, x_in)[1] if residuals is None else residuals


def _own_rule(path, layer, name, what, params, x_in, delta, residuals):
    """The layer's optional rule `name`(params, residuals, delta), or None when it has none;
    first refuses (naming the path) a layer that cannot give `what`."""
    _refuse(path, layer, what)
    method = getattr(layer, name, None)
    if method is None:
        return None
    return method(params, _residuals(layer, params, x_in, residuals), delta)


def leaf_per_example_grads(
    path: Path, layer: Any, params: Params, x_in: Array, delta: Array,
    residuals: Residuals | None = None,
) -> Grads:  # fmt: skip
    """The leaf's per-example param gradients, unscaled: each leaf (batch, *param.shape),
    example i's being backward's dparams for delta_i alone (so sum_i of them = dparams).

    x_in: the leaf's input (batch, *in); delta: (batch, *out). residuals: the recorded ones
    (needed for BatchNorm in eval mode, which cannot recompute them without its state);
    None recomputes them from x_in. A layer without params gets its params back, ().
    """
    if not has_params(params):
        return params
    args = (params, x_in, delta, residuals)
    own = _own_rule(path, layer, "per_example_grads", "per-example gradients", *args)
    if own is not None:
        return own

    def one(xi, di):  # exact: example i's forward and backward never read another example
        return layer.backward(params, layer.forward(params, xi[None])[1], di[None])[0]

    return jax.vmap(one)(x_in, delta)


def sq_norms_per_example(tree: Any) -> Array:
    """The sum of squares over every axis but the first, over every leaf: (batch,)."""
    return sum(jnp.sum(jnp.square(g.reshape(len(g), -1)), axis=1) for g in jax.tree.leaves(tree))


def leaf_sq_norms(
    path: Path, layer: Any, params: Params, x_in: Array, delta: Array,
    residuals: Residuals | None = None,
) -> Array:  # fmt: skip
    """(batch,) squared L2 norms of the leaf's unscaled per-example gradients, over all its
    params; by the layer's per_example_sq_norms (ghost norms where cheaper) when it has one."""
    if not has_params(params):
        return jnp.zeros(delta.shape[:1], delta.dtype)
    args = (params, x_in, delta, residuals)
    squares = _own_rule(path, layer, "per_example_sq_norms", "per-example gradient norms", *args)
    if squares is not None:
        # A ghost norm sums signed products: rounding can take a zero norm below 0, then NaN.
        return jnp.maximum(squares, 0)
    g = leaf_per_example_grads(path, layer, params, x_in, delta, residuals)
    return sq_norms_per_example(g)


def leaf_sum_grad_squared(
    path: Path, layer: Any, params: Params, x_in: Array, delta: Array,
    residuals: Residuals | None = None,
) -> Grads:  # fmt: skip
    """sum_i (unscaled per-example gradient of example i)^2, params' shapes; by the layer's
    sum_grad_squared when it has one (Dense: (x^2)^T (dy^2), nothing per example kept)."""
    if not has_params(params):
        return params
    args = (params, x_in, delta, residuals)
    own = _own_rule(path, layer, "sum_grad_squared", "sums of squared per-example gradients", *args)
    if own is not None:
        return own
    g = leaf_per_example_grads(path, layer, params, x_in, delta, residuals)
    return jax.tree.map(lambda a: jnp.sum(jnp.square(a), axis=0), g)


def leaf_weighted_grad(
    path: Path, layer: Any, params: Params, residuals: Residuals, delta: Array, w: Array
) -> Grads:
    """sum_i w_i (unscaled per-example gradient of example i), params' shapes, by the layer's
    weighted_grad when it has one, else in one backward: backward(params, residuals,
    w_i delta_i) is exact, as dparams is linear in dy and a sum of one term per example.
    w: (batch,); delta: (batch, *out)."""
    if not has_params(params):
        return params
    _refuse(path, layer, "per-example weights")
    if jnp.shape(w) != delta.shape[:1]:
        raise ValueError(
            f"leaf_weighted_grad: w must be (batch,) = {delta.shape[:1]}, got {jnp.shape(w)}"
        )
    method = getattr(layer, "weighted_grad", None)
    if method is not None:
        return method(params, residuals, delta, w)
    wd = delta * jnp.reshape(w, w.shape + (1,) * (delta.ndim - 1)).astype(delta.dtype)
    return layer.backward(params, residuals, wd)[0]


# ---------------------------------------------------------------------------------------------
# From leaves back to the params tree


def _zero_cotangent(x: Array) -> Array:
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros(x.shape, x.dtype)
    return np.zeros(x.shape, jax.dtypes.float0)


def _constant_rule(value: Any, x: Array):
    """A backward rule that returns value as the leaf's dparams and a zero dx of x's shape."""
    return lambda params, residuals, dy: (value, _zero_cotangent(x))


def assemble(model: Any, params: Params, recording: Recording, values: ByPath, *, batched: bool):
    """A params-shaped tree from per-leaf values in the leaves' params layout, by the model's own
    backward walk with each leaf's rule returning its value: combinators place the leaves
    (Serial, Parallel) or combine them (Tied adds its head's W^T to the table) as they do
    gradients. values: one entry per leaf with params; batched: they carry a leading batch axis,
    and the walk runs per example (vmap), so the result's leaves are (batch, *param.shape)."""

    def walk(vals, dy):
        rules = {}
        for p, x in recording.inputs.items():
            value = vals[p] if p in vals else recording.params[p]  # () for a paramless leaf
            rules[p] = _constant_rule(value, x[0] if batched else x)
        return sweep_backward(model, params, recording.tree, dy, (), Sweep(rules=rules))[0]

    if not batched:
        return walk(values, recording.dy_pred)
    return jax.vmap(walk)(values, recording.dy_pred)
