"""The references the quantity benchmark times jaxbp against: each quantity the way one writes it
with jax.grad alone, vmap over examples of the gradient of one example's loss L_i.

C = mean_i L_i; a per-example gradient g_i is grad L_i (no 1/m). The diagonal GGN is
(1/m) sum_i diag(J_i^T H_i J_i), from each example's Jacobian J_i = d y_pred_i / d params (k rows)
and its loss Hessian H_i (k, k), summed over chunks so that m Jacobians never coexist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

JACOBIAN_FLOATS = 2**26  # Jacobian entries held at once by the diag-GGN reference (256 MB)


def example_grads(model: Any, loss: Any) -> Callable:
    """(params, x, y) -> (L_i: (m,), g_i: a tree like params with a leading (m,) axis)."""

    def one(p, xi, yi):
        return loss.apply(model.apply(p, xi[None]), yi[None])

    return jax.vmap(jax.value_and_grad(one), (None, 0, 0))


def norms(g) -> jax.Array:
    """||g_i|| over every leaf: (m,)."""
    squares = (jnp.sum(leaf.reshape(len(leaf), -1) ** 2, 1) for leaf in jax.tree.leaves(g))
    return jnp.sqrt(sum(squares))


def functions(model: Any, loss: Any) -> dict[str, Callable]:
    """Each reference by its name in the benchmark's rows: f(params, x, y[, v])."""
    per = example_grads(model, loss)

    def grads(p, x, y):
        return per(p, x, y)[1]

    def cost(p, x, y):
        return loss.apply(model.apply(p, x), y)

    def hvp(p, x, y, v):  # forward over reverse
        return jax.jvp(lambda q: jax.grad(cost)(q, x, y), (p,), (v,))[1]

    def ggn_vp(p, x, y, v):  # J v, then H (J v), then J^T
        y_pred, jv = jax.jvp(lambda q: model.apply(q, x), (p,), (v,))
        hjv = jax.jvp(jax.grad(lambda z: loss.apply(z, y)), (y_pred,), (jv,))[1]
        return jax.vjp(lambda q: model.apply(q, x), p)[1](hjv)[0]

    return {
        "vmap(grad)": grads,
        "vmap(grad) norms": lambda p, x, y: norms(grads(p, x, y)),
        "vmap(grad) variance": lambda p, x, y: jax.tree.map(lambda g: g.var(0), grads(p, x, y)),
        "vmap(grad) squares": lambda p, x, y: jax.tree.map(
            lambda g: (g * g).sum(0), grads(p, x, y)
        ),
        "jacobians": lambda p, x, y: diag_ggn(model, loss, p, x, y),
        "jvp(grad)": hvp,
        "jvp + vjp": ggn_vp,
    }


def diag_ggn(model: Any, loss: Any, params, x, y):
    """(1/m) sum_i diag(J_i^T H_i J_i), chunk by chunk of examples (a lax.scan over chunks)."""
    outputs = jax.eval_shape(lambda p: model.apply(p, x[:1]), params).size
    size = sum(leaf.size for leaf in jax.tree.leaves(params))
    chunk = _divisor_at_most(len(x), max(1, JACOBIAN_FLOATS // (outputs * size)))

    def one(xi, yi):
        def f(p):
            return model.apply(p, xi[None])[0]

        out, J = f(params), jax.jacrev(f)(params)  # leaves (k, *leaf)
        H = jax.hessian(lambda z: loss.apply(z[None], yi[None]))(out)
        return jax.tree.map(lambda j: jnp.sum(j * jnp.tensordot(H, j, 1), 0), J)

    def body(total, xy):
        part = jax.vmap(one)(*xy)
        return jax.tree.map(lambda t, d: t + d.sum(0), total, part), None

    chunks = (x.reshape(-1, chunk, *x.shape[1:]), y.reshape(-1, chunk, *y.shape[1:]))
    total, _ = lax.scan(body, jax.tree.map(jnp.zeros_like, params), chunks)
    return jax.tree.map(lambda t: t / len(x), total)


def _divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def vmap_dp_sgd(clip_norm: float, noise_multiplier: float) -> Callable:
    """DP-SGD's gradient the way one writes it with vmap: g_i, each scaled to norm <= clip_norm,
    summed, N(0, (noise_multiplier clip_norm)^2) noise added, divided by m. A gradient engine:
    (model, loss, params, x, y, *, key) -> (mean loss, noisy clipped gradient)."""

    def engine(model, loss, params, x, y, *, key):
        values, g = example_grads(model, loss)(params, x, y)
        scale = jnp.minimum(1.0, clip_norm / jnp.maximum(norms(g), 1e-12))
        leaves, tree = jax.tree.flatten(g)
        keys = jax.random.split(key, len(leaves))
        noisy = [
            (jnp.tensordot(scale, leaf, 1) + noise_multiplier * clip_norm
             * jax.random.normal(k, leaf.shape[1:], leaf.dtype)) / len(x)
            for leaf, k in zip(leaves, keys)
        ]  # fmt: skip
        return values.mean(), jax.tree.unflatten(tree, noisy)

    return engine
