"""Gradients: the hand-written reverse sweep (`backprop`), its referee (`autodiff`), and a bridge.

backprop is two sweeps (`jaxbp.walk.trace`, the driver every tool shares). Forward: each layer
computes its output and keeps its residuals. Reverse: the loss's rule gives dC/dy_pred, and each
layer's rule, last to first, turns the cotangent of its output into the gradient of its params
and the cotangent of its input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from jaxbp import walk
from jaxbp._types import Array, Params, PRNGKey
from jaxbp.protocols import State, forward_state

__all__ = ["backprop", "autodiff", "to_custom_vjp"]


def backprop(
    model: Any,
    loss: Any,
    params: Params,
    x: Array,
    y: Array,
    *,
    key: PRNGKey | None = None,
    state: State = None,
) -> tuple:
    """The cost and its gradient, by the hand-written rules of `loss` and every layer of `model`.

    Returns (value, grads); with state=... (a model with BatchNorm, say), the forward pass reads
    and updates it and the result is (value, grads, new_state).
    Under jit, XLA drops the first layer's input cotangent, which nothing uses.
    """
    t = walk.trace(model, loss, params, x, y, key=key, state=state, record=False)
    return (t.value, t.grads) if state is None else (t.value, t.grads, t.state)


def autodiff(
    model: Any,
    loss: Any,
    params: Params,
    x: Array,
    y: Array,
    *,
    key: PRNGKey | None = None,
    state: State = None,
) -> tuple:
    """The referee: jax.value_and_grad of loss.apply(model.apply(params, x), y).

    With state=..., differentiates the forward pass that reads and updates it, and returns
    (value, grads, new_state) like backprop.
    """
    if state is None:
        return jax.value_and_grad(lambda p: loss.apply(model.apply(p, x, key=key), y))(params)

    def cost(p):
        y_pred, _, new_state = forward_state(model, p, state, x, key=key)
        return loss.apply(y_pred, y), new_state

    (value, new_state), grads = jax.value_and_grad(cost, has_aux=True)(params)
    return value, grads, new_state


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
