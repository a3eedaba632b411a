"""Curvature of C = mean_i L_i, by the hand-written rules: Hessian- and GGN-vector products, the
diagonal of the generalised Gauss-Newton matrix (exact and Monte Carlo), and K-FAC factors.

The GGN is G = J^T H J: J = dy_pred/dparams, H = d2C/dy_pred2, the loss's Hessian, block
diagonal over examples and positions. G keeps the curvature of the loss and drops the model's
own (second derivatives of the layers), so it is positive semi-definite where the Hessian is not.

- hvp: H_C v by Pearlmutter's R-op, jax.jvp of `backprop`'s gradient along v (forward over
  reverse): the tangent runs through every hand-written backward rule.
- ggn_vp: J v by jax.jvp of the forward pass, H (J v) by jax.jvp of the loss's hand-written
  backward, J^T (H J v) by the model's hand-written backward: one sweep.
- diag_ggn: with H = sum_j s_j s_j^T over cotangent columns (`loss.hessian_sqrt`), and every
  backward rule linear in its cotangent, diag G = sum_j sum_i (J_i^T s_j)^2: one backward sweep
  per column, each leaf splitting its gradient per example by its own rule. diag_ggn_mc draws the
  columns (`loss.hessian_sqrt_sample`), an unbiased estimate at `samples` sweeps.
- kfac_factors: per layer with a K-FAC rule (Dense, Conv), G's block for [W; b] approximated as
  A (x) G.

The diagonal quantities and K-FAC need per-example terms, so every layer must declare its
examples independent; BatchNorm in training mode (which couples them) raises, naming its path.
hvp and ggn_vp are exact for it too.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxbp._types import Array, Params, PRNGKey
from jaxbp.backprop import backprop
from jaxbp.protocols import State, forward_state
from jaxbp.quantities._columns import columns, sum_over_columns
from jaxbp.quantities._leaves import (
    assemble,
    check_supported,
    deltas_for,
    each_leaf,
    has_params,
    leaf_per_example_grads,
    leaf_sum_grad_squared,
    owns_params,
    record,
)  # fmt: skip
from jaxbp.walk import ByPath, blame, path_str

__all__ = ["hvp", "ggn_vp", "diag_ggn", "diag_ggn_mc", "kfac_factors"]


def _check_direction(params: Params, v: Params, what: str) -> None:
    """v must be a tangent of params: the same tree, shapes and floating dtypes."""
    if jax.tree.structure(v) != jax.tree.structure(params):
        raise ValueError(
            f"{what}: v must have the params' tree structure {jax.tree.structure(params)}, "
            f"got {jax.tree.structure(v)}"
        )
    for (path, p), u in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(v)):
        if jnp.shape(u) != jnp.shape(p) or not jnp.issubdtype(jnp.result_type(u), jnp.floating):
            raise ValueError(
                f"{what}: v{jax.tree_util.keystr(path)} must be a float array of shape "
                f"{jnp.shape(p)}, got {jnp.result_type(u)} {jnp.shape(u)}"
            )


def hvp(
    model: Any, loss: Any, params: Params, x: Array, y: Array, v: Params, *,
    key: PRNGKey | None = None, state: State = None,
) -> Params:  # fmt: skip
    """H v, H = d2C/dparams2: jax.jvp of backprop's gradient along v (Pearlmutter's R-op run
    through the hand-written backward rules). v: a tree like params; returns one like params.
    With state=..., C is the cost of the forward that reads it (BatchNorm in training uses the
    batch's statistics, exactly); the updated state is dropped."""
    _check_direction(params, v, "hvp")

    def grad(p):
        return backprop(model, loss, p, x, y, key=key, state=state)[1]

    return jax.jvp(grad, (params,), (v,))[1]


def ggn_vp(
    model: Any, loss: Any, params: Params, x: Array, y: Array, v: Params, *,
    key: PRNGKey | None = None, state: State = None,
) -> Params:  # fmt: skip
    """G v = J^T H J v: J v by jax.jvp of the forward pass, H (J v) by jax.jvp of the loss's
    hand-written backward at y_pred, then J^T by the model's hand-written backward, one sweep.
    J is the whole batch's Jacobian, so BatchNorm in training (state=...) is exact too."""
    _check_direction(params, v, "ggn_vp")

    def forward(p):
        if state is None:
            return model.forward(p, x, key=key)
        y_pred, residuals, _ = forward_state(model, p, state, x, key=key)
        return y_pred, residuals

    y_pred, jv, residuals = jax.jvp(forward, (params,), (v,), has_aux=True)

    def dloss(z):  # dC/dy_pred by the loss's own rule; its jvp is H (J v)
        return loss.backward(loss.forward(z, y)[1])

    hjv = jax.jvp(dloss, (y_pred,), (jv,))[1]
    return model.backward(params, residuals, hjv)[0]


def _diagonal(
    what: str, model: Any, loss: Any, params: Params, x: Array, y: Array,
    key: PRNGKey | None, state: State, samples: int | None,
) -> Params:  # fmt: skip
    """sum_j sum_i (J_i^T s_j)^2 over the columns s_j, in a tree like params. Leaves owning
    disjoint params square their own per-example gradients (Dense: (x^2)^T d^2, none kept);
    shared params (Tied, or any combinator that does not declare params_disjoint) square each
    example's assembled gradient."""
    check_supported(model, f"{what}'s per-example terms")  # before any work
    rec = record(model, loss, params, x, y, key=key, state=state)
    sample_key = None if samples is None else jax.random.split(key)[1]  # apart from the model's
    n, column = columns(loss, rec.y_pred, y, sample_key, samples, what)
    owned = owns_params(model, params, rec)

    def one_column(j):
        s = column(j)
        deltas = deltas_for(model, params, rec, s)
        if owned:
            values = each_leaf(rec, leaf_sum_grad_squared, deltas)
            return assemble(model, params, rec, values, s, batched=False, through=False)
        values = each_leaf(rec, leaf_per_example_grads, deltas)
        per_example = assemble(model, params, rec, values, s, batched=True, through=True)
        return jax.tree.map(lambda g: jnp.sum(g * g, axis=0), per_example)

    # One column per sweep: vmapped over the columns, a Conv's per-example products (one small
    # matrix product per example) ran 2-6x slower on XLA's CPU than one column at a time.
    return sum_over_columns(n, one_column, params)


def diag_ggn(
    model: Any, loss: Any, params: Params, x: Array, y: Array, *,
    key: PRNGKey | None = None, state: State = None,
) -> Params:  # fmt: skip
    """The diagonal of the GGN of C, exactly: sum over examples i and over the P k columns s of
    the loss Hessian's root (P positions, k classes) of (J_i^T s)^2, one backward sweep per
    column. Returns a tree like params. The loss needs hessian_sqrt (every built-in has it)."""
    return _diagonal("diag_ggn", model, loss, params, x, y, key, state, None)


def diag_ggn_mc(
    model: Any, loss: Any, params: Params, x: Array, y: Array, key: PRNGKey, *,
    samples: int = 1, state: State = None,
) -> Params:  # fmt: skip
    """A Monte Carlo estimate of diag_ggn, unbiased, from `samples` backward sweeps: column t is
    the gradient of C at labels drawn from the model's own prediction, so E[s s^T] = H (draw t
    from fold_in(split(key)[1], t)). key also feeds the model's stochastic layers, as backprop's
    does. Its variance grows where the model is confident: a rare draw gives a large column."""
    if key is None:
        raise ValueError("diag_ggn_mc: needs a key for its Monte Carlo draws, got None")
    return _diagonal("diag_ggn_mc", model, loss, params, x, y, key, state, samples)


def kfac_factors(
    model: Any, loss: Any, params: Params, x: Array, y: Array, *,
    key: PRNGKey | None = None, state: State = None, samples: int | None = None,
    unsupported: str = "raise",
) -> ByPath:  # fmt: skip
    """K-FAC factors of every layer with a K-FAC rule (Dense; Conv with groups=1), by path:
    {"A": A, "G": G}.

    a = layer.kfac_rows(x): the layer's input rows (a Conv's patches, ordered as
    W.reshape(-1, features)) with a one appended for the bias (none for a layer without one).
    A = (1/P) sum of a a^T over the layer's P rows (every example, and every window of a Conv
    or step of a sequence): (in + 1, in + 1). G = sum of d d^T over the layer's output rows
    and over the columns s_j of C's loss-Hessian square root, d the delta s_j sends to the
    layer: (features, features).
    C = (1/N) sum of N per-position losses (N = m, or m T for a loss over a sequence), so each
    column carries 1/sqrt(N) and G carries 1/N once. For a Dense layer on vectors that is
    G = (1/m) sum_i J_i^T H_i J_i, H_i the Hessian of L_i (not of C) in the network's output and
    J_i the Jacobian of that output in the layer's output: the mean per-example GGN at the layer,
    on the same scale as A. kron(A, G) approximates the GGN block of C in
    theta = [W.reshape(-1, features); b] (row-major; W alone without a bias), exactly when the
    rows share one a and one J^T H J (one example at one position, or a batch of copies of it).
    samples=n draws n Monte Carlo columns (key needed) instead of the exact ones (k per
    position of one example's loss, each column covering every example).

    A layer with params and no kfac_rows raises NotImplementedError naming its path, unless
    unsupported="skip" leaves such layers out (their blocks are then not approximated at all).
    The factors are of each layer's own params, so every layer must own them (jaxbp.protocols:
    params_disjoint): a model with shared or transformed params (Tied) raises.
    """
    if samples is not None and key is None:
        raise ValueError("kfac_factors: samples=... draws Monte Carlo columns and needs a key")
    if unsupported not in ("raise", "skip"):
        raise ValueError(
            f"kfac_factors: unsupported must be 'raise' or 'skip', got {unsupported!r}"
        )
    check_supported(model, "K-FAC factors")  # before any work
    rec = record(model, loss, params, x, y, key=key, state=state)
    sample_key = None if samples is None else jax.random.split(key)[1]
    return factors_of(model, loss, params, y, rec, sample_key, samples, unsupported)


def factors_of(
    model: Any, loss: Any, params: Params, y: Array, rec: Any, sample_key: PRNGKey | None,
    samples: int | None, unsupported: str = "raise", paths: tuple | None = None,
) -> ByPath:  # fmt: skip
    """kfac_factors from a recording of the sweep (`_leaves.record`), so that a caller which
    also needs the gradient (the K-FAC optimiser, jaxbp.kfac) runs the forward and backward
    once; the Monte Carlo columns are drawn from sample_key. paths: only these layers' factors (each
    must have a K-FAC rule), instead of every layer's."""
    if not owns_params(model, params, rec):
        raise NotImplementedError(
            "kfac_factors: the model's layers do not each own their params (a combinator shares "
            "or transforms them, or does not declare params_disjoint: Tied, say), so a layer's "
            "factors would not be those of its params"
        )
    rows = {}
    for path, layer in rec.layers.items():
        if paths is not None:
            if path in paths:
                with blame(path, layer):
                    rows[path] = layer.kfac_rows(rec.inputs[path])
        elif callable(getattr(layer, "kfac_rows", None)):
            with blame(path, layer):
                rows[path] = layer.kfac_rows(rec.inputs[path])
        elif has_params(rec.params[path]) and unsupported == "raise":
            raise NotImplementedError(
                f"kfac_factors: layer {path_str(path)} {layer!r} has params but no K-FAC rule "
                "(kfac_rows); pass unsupported='skip' to leave such layers out"
            )
    n, column = columns(loss, rec.y_pred, y, sample_key, samples, "kfac_factors")

    def one_column(j):
        deltas = deltas_for(model, params, rec, column(j))
        return {path: _second_moment(deltas[path], 1.0) for path in rows}

    like = {path: jnp.zeros((rec.deltas[path].shape[-1],) * 2, rec.y_pred.dtype) for path in rows}
    Gs = sum_over_columns(n, one_column, like)
    return ByPath(
        (p, {"A": _second_moment(a, 1 / a.shape[0]), "G": Gs[p]}) for p, a in rows.items()
    )


def _second_moment(rows: Array, scale: float) -> Array:
    """scale * sum over every leading axis of r r^T, for r the last axis: (n,) -> (n, n)."""
    flat = rows.reshape(-1, rows.shape[-1])
    return scale * (flat.T @ flat)
