"""Gradients: the hand-written reverse sweep (`backprop`), its referee (`autodiff`), and a bridge.

backprop is two sweeps. Forward: each layer computes its output and keeps its residuals.
Reverse: the loss's rule gives dC/dy_pred, and each layer's rule, last to first, turns the
cotangent of its output into the gradient of its params and the cotangent of its input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from jaxbp._types import Array, Grads, Params, PRNGKey

__all__ = ["backprop", "autodiff", "to_custom_vjp"]


def backprop(
    model: Any, loss: Any, params: Params, x: Array, y: Array, *, key: PRNGKey | None = None
) -> tuple[Array, Grads]:
    """The cost and its gradient, by the hand-written rules of `loss` and every layer of `model`.

    Under jit, XLA drops the first layer's input cotangent, which nothing uses.
    """
    y_pred, residuals = model.forward(params, x, key=key)
    value, loss_residuals = loss.forward(y_pred, y)
    dy_pred = loss.backward(loss_residuals)
    grads, _ = model.backward(params, residuals, dy_pred)
    return value, grads


def autodiff(
    model: Any, loss: Any, params: Params, x: Array, y: Array, *, key: PRNGKey | None = None
) -> tuple[Array, Grads]:
    """The referee: jax.value_and_grad of loss.apply(model.apply(params, x), y)."""
    return jax.value_and_grad(lambda p: loss.apply(model.apply(p, x, key=key), y))(params)


def to_custom_vjp(layer: Any) -> Callable[[Params, Array], Array]:
    """f(params, x) = layer.apply(params, x), whose jax.grad runs the layer's hand-written rule.

    Drops jaxbp layers into any JAX code (optax loops, Flax, Equinox) with their own backward.
    """

    @jax.custom_vjp
    def f(params, x):
        return layer.apply(params, x)

    def f_fwd(params, x):
        y, residuals = layer.forward(params, x)
        return y, (params, residuals)

    def f_bwd(saved, dy):
        params, residuals = saved
        return tuple(layer.backward(params, residuals, dy))

    f.defvjp(f_fwd, f_bwd)
    return f
