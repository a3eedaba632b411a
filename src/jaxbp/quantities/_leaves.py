"""The recording sweep and each leaf layer's per-example rules: the adapter the quantities share.

A per-example gradient of a leaf's params needs only that leaf's input x (or residuals) and
its delta dC/d(output): param gradients are sums over examples of terms that each read one
example, so keeping the batch axis instead of summing it gives them. That holds when no layer
lets examples meet, which each layer declares (`examples_independent`, jaxbp.protocols); a
layer that does not (BatchNorm in training; a user's layer that does not say) is refused before
any work, naming its path. A layer may supply faster optional rules:

    per_example_grads(params, residuals, dy) -> dparams, each leaf (batch, *leaf.shape)
    per_example_sq_norms(params, residuals, dy) -> (batch,) squared norms of the same
    sum_grad_squared(params, residuals, dy) -> dparams' shapes: sum_i (per-example grad)^2
    weighted_grad(params, residuals, dy, w) -> dparams' shapes: sum_i w_i (per-example grad)

Without one, an exact generic rule runs: vmap over examples i of backward(p, forward(p,
x_i[None]).residuals, delta_i[None]).dparams (a recomputed forward per example). Nothing here
scales by the batch size m: deltas carry C's 1/m, so a per-example gradient of L_i is m times
these rules (the callers scale). Per-leaf norms add up to the whole gradient's only where each
leaf owns its params: `owns_params` decides, from the combinators' declarations, and checks them.
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
    "owns_params", "check_supported_leaf",
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
        check_supported_leaf(path, layer, what)


def check_supported_leaf(path: Path, layer: Any, what: str) -> None:
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
        own, got = jax.tree.leaves(params_at(params, path)), jax.tree.leaves(recording.params[path])
        if len(own) != len(got) or any(a is not b for a, b in zip(own, got)):
            raise ValueError(
                f"layer {path_str(path)} {recording.layers[path]!r} reads params other than its "
                f"own subtree params{path_str(path)}, but every combinator above it declares "
                "params_disjoint = True: a combinator that shares or transforms params must "
                "declare params_disjoint = False"
            )
        read += len(own)
    if read != len(jax.tree.leaves(params)):
        raise ValueError(
            f"the model's layers read {read} of the {len(jax.tree.leaves(params))} params "
            "arrays, but every combinator declares params_disjoint = True: a combinator with "
            "params of its own must declare params_disjoint = False"
        )
    return True


# ---------------------------------------------------------------------------------------------
# One leaf's rules


def has_params(params: Params) -> bool:
    return bool(jax.tree.leaves(params))


def _residuals(layer: Any, params: Params, x_in: Array, residuals: Residuals | None):
    return layer.forward(params, x_in)[1] if residuals is None else residuals


def _own_rule(path, layer, name, what, params, x_in, delta, residuals):
    """The layer's optional rule `name`(params, residuals, delta), or None when it has none;
    first refuses (naming the path) a layer whose examples meet."""
    check_supported_leaf(path, layer, what)
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
    check_supported_leaf(path, layer, "per-example weights")
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


def assemble(
    model: Any, params: Params, recording: Trace, values: ByPath, dy: Array, *, batched: bool
):
    """A params-shaped tree from per-leaf values in the leaves' params layout, by the model's own
    backward walk with each leaf's rule returning its value: combinators place the leaves
    (Serial, Parallel), combine them (Tied adds its head's W^T to the table) or add gradients
    of params of their own, as they do gradients. dy: the output cotangent the values came from
    (batch, *out), which a combinator with params of its own reads.

    values: one entry per leaf with params. batched: they carry a leading batch axis, and the
    walk runs once per example i (vmap) with dy kept at example i alone, zero elsewhere: every
    rule is linear in dy and examples never meet, so that walk gives example i's share exactly.
    The result's leaves are then (batch, *param.shape)."""

    def walk(vals, dy):
        rules = {p: _constant_rule(vals[p] if p in vals else recording.params[p], x)
                 for p, x in recording.inputs.items()}  # fmt: skip
        return reverse(model, params, recording.tree, dy, rules=rules)[0]

    if not batched:
        return walk(values, dy)
    m = dy.shape[0]
    only = jnp.eye(m, dtype=dy.dtype).reshape(m, m, *(1,) * (dy.ndim - 1))
    return jax.vmap(walk)(values, only * dy)
