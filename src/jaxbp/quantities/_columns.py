"""The loss Hessian as cotangent columns, and one backward sweep per column.

H = d2C/dy_pred2 is block diagonal, one (k, k) block per example and position, and
H = sum_j s_j s_j^T over cotangents s_j of y_pred: exactly, column (position q, class c) is
column c of q's block root (`loss.hessian_sqrt`), zero elsewhere, P k columns for P positions
per example (all examples at once: their blocks never meet); or by Monte Carlo, n draws of
`loss.hessian_sqrt_sample`, each scaled by 1/sqrt(n), so that E[sum_j s_j s_j^T] = H.
Every backward rule is linear in its cotangent, so each column is one more sweep.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp._types import Array, PRNGKey

__all__ = ["columns", "sum_over_columns"]


def columns(
    loss: Any, y_pred: Array, y: Array, key: PRNGKey | None, samples: int | None, what: str
) -> tuple[int, Callable[[Array], Array]]:
    """(n, column(j)): n cotangents of y_pred with sum_j s_j s_j^T = H, exactly (samples None) or
    in expectation (n = samples Monte Carlo draws, draw j from fold_in(key, j))."""
    name = "hessian_sqrt" if samples is None else "hessian_sqrt_sample"
    if not callable(getattr(loss, name, None)):
        raise TypeError(
            f"{what}: the loss {loss!r} has no {name} method, which this quantity needs "
            "(see the curvature methods in jaxbp.losses)"
        )
    if samples is not None:
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise ValueError(f"{what}: samples must be a positive int, got {samples!r}")
        scale = 1 / math.sqrt(samples)
        return (
            samples,
            lambda j: scale * loss.hessian_sqrt_sample(y_pred, y, jax.random.fold_in(key, j)),
        )
    m, k = y_pred.shape[0], y_pred.shape[-1]
    roots = loss.hessian_sqrt(y_pred, y).reshape(m, -1, k, k)  # (m, P, k, k): positions flat
    P = roots.shape[1]

    def column(j):
        q, c = j // k, j % k
        only_q = (jnp.arange(P) == q).astype(roots.dtype)[:, None]
        return (roots[..., c] * only_q).reshape(y_pred.shape)

    return P * k, column


def sum_over_columns(n: int, f: Callable[[Array], Any], like: Any) -> Any:
    """sum_{j < n} f(j), a pytree shaped as `like`, one column at a time (a scan: memory for one
    column, not n)."""

    if n == 1:  # one column (a single Monte Carlo draw): no loop, no carry to hold
        return jax.tree.map(lambda a, b: jnp.asarray(b, jnp.result_type(a)), like, f(0))

    def step(total, j):
        return jax.tree.map(jnp.add, total, f(j)), None

    zeros = jax.tree.map(jnp.zeros_like, like)
    return lax.scan(step, zeros, jnp.arange(n))[0]
