"""The recording sweep and each leaf layer's per-example rules: the adapter the quantities share.

A per-example gradient of a leaf's params needs only that leaf's residuals and its delta
dC/d(output): param gradients are sums over examples of terms that each read one example, so
keeping the batch axis instead of summing it gives them. That holds when no layer lets examples
meet, which each layer declares (`examples_independent`, jaxbp.protocols); a layer that does
not (BatchNorm in training; a user's layer that does not say) is refused before any work,
naming its path. A layer's optional rules (per_example_grads, per_example_sq_norms,
sum_grad_squared, weighted_grad: jaxbp.protocols) are used where it has them; without one, an
exact generic rule runs: backward on the recorded residuals with dy kept at example i alone
(backward is linear in dy), or, for a layer that declares recompute_per_example, its forward
and backward on example i alone (cheaper: no key or state to reproduce).

Nothing here scales by the batch size m: deltas carry C's 1/m, so a per-example gradient of
L_i is m times these rules (the callers scale). Per-leaf norms add up to the whole gradient's
only where each leaf owns its params: `owns_params` decides, from the combinators'
declarations, and checks them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._types import Array, Grads, Params, PRNGKey, Residuals
from jaxbp.protocols import State, examples_independent
from jaxbp.walk import (
    ByPath,
    Path,
    Sweep,
    Trace,
    disjoint,
    nodes,
    params_at,
    path_str,
    reverse,
    trace,
)  # fmt: skip

__all__ = [
    "record", "deltas_for", "leaf_per_example_grads", "leaf_sq_norms", "leaf_sum_grad_squared",
    "leaf_weighted_grad", "has_params", "assemble", "check_supported", "sq_norms_per_example",
    "owns_params", "check_independent", "each_leaf", "each_example",
]  # fmt: skip


def record(
    model: Any, loss: Any, params: Params, x: Array, y: Array, *,
    key: PRNGKey | None = None, state: State | None = None,
) -> Trace:  # fmt: skip
    """backprop's two sweeps, keeping each leaf layer's input, delta, residuals and params.

    Same arguments, checks and errors as `jaxbp.backprop`; works under jit.
    """
    return trace(model, loss, params, x, y, key=key, state=state)


def deltas_for(model: Any, params: Params, recording: Trace, dy_pred: Array) -> ByPath:
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
    reverse(model, params, recording.tree, dy_pred, sweep=sweep)
    return ByPath((p, sweep.deltas[p]) for p in recording.layers)


def check_supported(model: Any, what: str) -> None:
    """Before any work: raise NotImplementedError naming the first layer (a combinator too) that
    does not declare its examples independent (in its current mode)."""
    for path, layer in nodes(model):
        check_independent(path, layer, what)


def check_independent(path: Path, layer: Any, what: str) -> None:
    """Raise NotImplementedError, naming the path and `what` needs it, unless the layer
    declares its examples independent."""
    if examples_independent(layer):
        return
    if getattr(layer, "train", False):
        hint = "in training it couples them; use eval_mode(model) with its state"
    else:
        hint = "declare examples_independent = True on it if its examples never meet"
    raise NotImplementedError(
        f"layer {path_str(path)} {layer!r}: {what} need every layer's examples independent "
        f"(examples_independent), and this layer's are not: {hint}"
    )


def owns_params(model: Any, params: Params, recording: Trace) -> bool:
    """Whether each leaf reads exactly its own subtree of params, so that per-leaf quantities
    (norms, sums of squares) add up to the model's: decided by the combinators' declarations
    (params_disjoint; an undeclared one is sharing) and then checked, leaf by leaf, on the
    arrays the leaves actually read. A declaration that the arrays contradict raises."""
    if not disjoint(model):
        return False
    read = 0
    for path in recording.layers:
        own, grads = _subtree(params, path), _subtree(recording.grads, path)
        for what, here, there in (
            ("reads params other than", own, recording.params[path]),
            ("has its gradient changed on the way to", grads, recording.dparams[path]),
        ):
            there = jax.tree.leaves(there)
            if len(here) != len(there) or any(a is not b for a, b in zip(here, there)):
                raise ValueError(
                    f"layer {path_str(path)} {recording.layers[path]!r} {what} its own "
                    f"subtree params{path_str(path)}, but every combinator above it declares "
                    "params_disjoint = True: a combinator that shares, transforms or reads its "
                    "children's params must declare params_disjoint = False"
                )
        read += len(own)
    if read != len(jax.tree.leaves(params)):
        raise ValueError(
            f"the model's layers read {read} of the {len(jax.tree.leaves(params))} params "
            "arrays, but every combinator declares params_disjoint = True: a combinator with "
            "params of its own must declare params_disjoint = False"
        )
    return True


def _subtree(tree: Any, path: Path) -> list:
    """The array leaves at path, or [] where the tree has no entry there."""
    try:
        return jax.tree.leaves(params_at(tree, path))
    except (IndexError, KeyError, TypeError):
        return []


def each_leaf(recording: Trace, rule, deltas: ByPath | None = None) -> ByPath:
    """rule(path, layer, params, x_in, delta, residuals) for every leaf with params, by path;
    deltas: the recording's own, or those of another backward sweep (deltas_for)."""
    r, deltas = recording, recording.deltas if deltas is None else deltas
    return ByPath(
        (p, rule(p, r.layers[p], r.params[p], r.inputs[p], deltas[p], r.residuals[p]))
        for p in r.layers
        if has_params(r.params[p])
    )


def each_example(a: Array) -> Array:
    """(batch, ...) -> (batch, batch, ...): copy i keeps example i's rows, zero elsewhere."""
    m = a.shape[0]
    return jnp.eye(m, dtype=a.dtype).reshape(m, m, *(1,) * (a.ndim - 1)) * a


# ---------------------------------------------------------------------------------------------
# One leaf's rules


def has_params(params: Params) -> bool:
    return bool(jax.tree.leaves(params))


def _residuals(layer: Any, params: Params, x_in: Array, residuals: Residuals | None):
    return layer.forward(params, x_in)[1] if residuals is None else residuals


def _own_rule(path, layer, name, what, params, x_in, delta, residuals):
    """The layer's optional rule `name`(params, residuals, delta), or None when it has none;
    first refuses (naming the path) a layer whose examples meet."""
    check_independent(path, layer, what)
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
    (what the forward saw: its key, its state); None recomputes them from x_in. A layer
    without params gets its params back, ().
    """
    if not has_params(params):
        return params
    args = (params, x_in, delta, residuals)
    own = _own_rule(path, layer, "per_example_grads", "per-example gradients", *args)
    if own is not None:
        return own
    if getattr(layer, "recompute_per_example", False) is True:

        def one(xi, di):  # example i's forward and backward never read another example
            return layer.backward(params, layer.forward(params, xi[None])[1], di[None])[0]

        return jax.vmap(one)(x_in, delta)
    residuals = _residuals(layer, params, x_in, residuals)
    return jax.vmap(lambda d: layer.backward(params, residuals, d)[0])(each_example(delta))


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
    check_independent(path, layer, "per-example weights")
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


def _value_rule(value: Any, layer: Any, x: Array, through: bool):
    """A backward rule that returns value as the leaf's dparams, and as dx the leaf's own dx
    (through) or zeros of x's shape (no combinator reads the cotangent for params)."""
    if through:
        return lambda params, residuals, dy: (value, layer.backward(params, residuals, dy)[1])
    return lambda params, residuals, dy: (value, _zero_cotangent(x))


def assemble(
    model: Any, params: Params, recording: Trace, values: ByPath, dy: Array, *, batched: bool,
    through: bool,
) -> Grads:  # fmt: skip
    """A params-shaped tree from per-leaf values in the leaves' params layout, by the model's own
    backward walk with each leaf's rule returning its value: combinators place the leaves
    (Serial, Parallel), combine them (Tied adds its head's W^T to the table) or add gradients
    of params of their own, as they do gradients. dy: the output cotangent the values came from
    (batch, *out). through=True sends it down through every leaf's own rule, which a combinator
    with params of its own, anywhere, reads (the exact route); False skips that work.

    values: one entry per leaf with params. batched: they carry a leading batch axis, and the
    walk runs once per example i (vmap) with dy kept at example i alone, zero elsewhere: every
    rule is linear in dy and examples never meet, so that walk gives example i's share exactly.
    The result's leaves are then (batch, *param.shape)."""

    def walk(vals, dy):
        rules = {
            p: _value_rule(vals[p] if p in vals else recording.params[p], layer, x, through)
            for (p, x), layer in zip(recording.inputs.items(), recording.layers.values())
        }
        return reverse(model, params, recording.tree, dy, rules=rules)[0]

    return walk(values, dy) if not batched else jax.vmap(walk)(values, each_example(dy))
