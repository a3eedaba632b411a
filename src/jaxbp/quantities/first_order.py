"""First-order quantities per example, by the hand-written rules: gradients, norms, variance.

C = mean_i L_i, and a per-example gradient g_i is the gradient of L_i (no 1/m), so
grad C = mean_i g_i. One recording sweep (`_leaves.record`) gives every leaf layer its input x
and its delta dC/d(output), which carries 1/m; each leaf's per-example rule turns them into
its share of g_i / m, and the model's own backward walk places the shares in the params tree.
Norms and sums of squares are taken per leaf without keeping g_i where the layer allows (Dense:
||x_i||^2 ||dy_i||^2; sequences and convolutions: ghost norms), which is exact when each leaf
owns its params (every combinator declares params_disjoint, checked: `_leaves.owns_params`);
a combinator that shares a matrix between leaves (Tied), or any that does not declare, makes
them come from the assembled g_i instead.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxbp._types import Array, Grads, Params, PRNGKey
from jaxbp.protocols import State
from jaxbp.quantities._leaves import (
    assemble,
    check_supported,
    each_leaf,
    has_params,
    leaf_per_example_grads,
    leaf_sq_norms,
    leaf_sum_grad_squared,
    owns_params,
    record,
    sq_norms_per_example,
)  # fmt: skip
from jaxbp.walk import ByPath, Trace, params_at

__all__ = ["per_example_grads", "per_example_norms", "grad_variance", "sum_grad_squared"]


def _scaled(tree: Any, factor: float) -> Any:
    return jax.tree.map(lambda a: a * factor, tree)


def _grads_of(model: Any, params: Params, recording: Trace, *, owned: bool) -> Grads:
    """g_i for every example, params' structure, each leaf (batch, *param.shape); owned: every
    leaf owns its params (no combinator reads the cotangent for params of its own)."""
    shares = each_leaf(recording, leaf_per_example_grads)
    dy = recording.dy_pred
    tree = assemble(model, params, recording, shares, dy, batched=True, through=not owned)
    return _scaled(tree, recording.batch)


def per_example_grads(
    model: Any, loss: Any, params: Params, x: Array, y: Array, *,
    key: PRNGKey | None = None, state: State | None = None,
) -> Grads:  # fmt: skip
    """g_i = grad L_i for every example i: params' structure, each leaf (batch, *param.shape);
    their mean is backprop's gradient. state: a model's state (BatchNorm in eval mode).

    A layer without a per-example rule, or BatchNorm in training (its statistics couple the
    examples), raises NotImplementedError naming its path.
    """
    check_supported(model, "per-example gradients")
    recording = record(model, loss, params, x, y, key=key, state=state)
    return _grads_of(model, params, recording, owned=owns_params(model, params, recording))


def per_example_norms(
    model: Any, loss: Any, params: Params, x: Array, y: Array, *,
    key: PRNGKey | None = None, state: State | None = None, per_leaf: bool = False,
) -> Array | ByPath:  # fmt: skip
    """||g_i|| over all params: (batch,), computed per leaf layer without materialising g_i
    where the layer allows (Dense: ||x_i|| ||dy_i||; ghost norms for sequences and convolutions,
    whichever is cheaper). per_leaf=True: a ByPath {leaf layer path: (batch,) norm of g_i over
    the params at that path}, layers without params left out; where each leaf owns its params
    (as in every built-in but Tied) their squares sum to the total's.
    """
    check_supported(model, "per-example gradient norms")
    recording = record(model, loss, params, x, y, key=key, state=state)
    m = recording.batch
    if owns_params(model, params, recording):
        squares = ByPath((p, m * m * s) for p, s in each_leaf(recording, leaf_sq_norms).items())
        total = sum(squares.values(), jnp.zeros((m,), recording.dy_pred.dtype))
    else:  # shared or transformed params: norms of the assembled g_i, over the whole tree
        g = _grads_of(model, params, recording, owned=False)
        squares = ByPath(
            (p, sq_norms_per_example(params_at(g, p)))
            for p in recording.layers
            if has_params(params_at(params, p))
        )
        total = sq_norms_per_example(g)
    if per_leaf:
        return ByPath((p, jnp.sqrt(s)) for p, s in squares.items())
    return jnp.sqrt(total)


def sum_grad_squared(
    model: Any, loss: Any, params: Params, x: Array, y: Array, *,
    key: PRNGKey | None = None, state: State | None = None,
) -> Grads:  # fmt: skip
    """sum_i g_i^2, elementwise, params' structure (BackPACK's SumGradSquared); Dense on one
    position keeps no g_i: m^2 (x^2)^T (dy^2)."""
    check_supported(model, "sums of squared per-example gradients")
    recording = record(model, loss, params, x, y, key=key, state=state)
    m = recording.batch
    if not owns_params(model, params, recording):
        g = _grads_of(model, params, recording, owned=False)
        return jax.tree.map(lambda a: jnp.sum(jnp.square(a), 0), g)
    shares = each_leaf(recording, leaf_sum_grad_squared)
    dy = recording.dy_pred
    return _scaled(
        assemble(model, params, recording, shares, dy, batched=False, through=False), m * m
    )


def _variance(g: Array) -> Array:
    """mean_i (g_i - mean g)^2 over the leading axis, centred first (no cancellation)."""
    return jnp.mean(jnp.square(g - jnp.mean(g, axis=0)), axis=0)


def grad_variance(
    model: Any, loss: Any, params: Params, x: Array, y: Array, *,
    key: PRNGKey | None = None, state: State | None = None,
) -> Grads:  # fmt: skip
    """mean_i (g_i - grad C)^2, elementwise, params' structure (BackPACK's Variance, whose
    grad C = mean_i g_i), as BackPACK takes it: sum_i g_i^2 / m - (grad C)^2, so Dense keeps no
    g_i; clamped at 0. In float32 its error is ~eps E[g^2] / variance relative: small while the
    examples disagree more than they agree (per-example gradients: they do)."""
    check_supported(model, "the gradient's variance")
    recording = record(model, loss, params, x, y, key=key, state=state)
    if not owns_params(model, params, recording):
        return jax.tree.map(_variance, _grads_of(model, params, recording, owned=False))
    m = recording.batch
    shares = each_leaf(recording, leaf_sum_grad_squared)
    dy = recording.dy_pred
    squares = assemble(model, params, recording, shares, dy, batched=False, through=False)
    return jax.tree.map(
        lambda s, g: jnp.maximum(s * m - jnp.square(g), 0), squares, recording.grads
    )
