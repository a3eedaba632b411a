"""What each check asks: a pair of fun(aux, *primals) -> out, which JAX differentiates for the
references, and hand(aux, *primals, ct) -> one cotangent per primal, the rule under test.
`aux` is data that is not differentiated (targets, inputs); pairs are hashable, so compilations
are reused."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxbp.backprop import backprop
from jaxbp.protocols import forward_state


class Pair:
    strict = False  # whether the cotangents must come as a tuple, not any sequence

    def values(self, aux, *primals):  # () or (value, reference value) to compare
        return ()


@dataclasses.dataclass(frozen=True)
class VJPPair(Pair):
    fwd: Callable
    bwd: Callable
    strict = True  # jax.custom_vjp's convention

    def fun(self, aux, *p):
        return self.fwd(*p)[0]

    def hand(self, aux, *p, ct):
        return self.bwd(self.fwd(*p)[1], ct)


@dataclasses.dataclass(frozen=True)
class LayerPair(Pair):
    """aux = (key, state): one fixed key on both sides (Dropout), and the state a stateful layer
    reads in training (BatchNorm); forward_state's new state is not differentiated."""

    layer: Any

    def fun(self, aux, params, x):
        return forward_state(self.layer, params, aux[1], x, key=aux[0])[0]

    def hand(self, aux, params, x, ct):
        residuals = forward_state(self.layer, params, aux[1], x, key=aux[0])[1]
        return tuple(self.layer.backward(params, residuals, ct))


@dataclasses.dataclass(frozen=True)
class IdsLayerPair(LayerPair):
    """A layer of integer inputs (Embedding's ids): aux = (key, state, x); parameter rows only."""

    def fun(self, aux, params):
        return super().fun(aux[:2], params, aux[2])

    def hand(self, aux, params, ct):
        return super().hand(aux[:2], params, aux[2], ct=ct)[:1]


@dataclasses.dataclass(frozen=True)
class LossPair(Pair):
    loss: Any

    def fun(self, y, y_pred):
        return self.loss.forward(y_pred, y)[0]

    def hand(self, y, y_pred, ct):
        return (self.loss.backward(self.loss.forward(y_pred, y)[1], ct),)


@dataclasses.dataclass(frozen=True)
class BackpropPair(Pair):
    model: Any
    loss: Any

    # data = (x, y, key, state): the forward key and training state, the same on both sides.
    def fun(self, data, params):
        x, y, key, state = data
        return self.loss.apply(forward_state(self.model, params, state, x, key=key)[0], y)

    def hand(self, data, params, ct):
        grads = self._backprop(data, params)[1]
        return (jax.tree.map(lambda g: (ct * g).astype(jnp.result_type(g)), grads),)

    def values(self, data, params):
        return self._backprop(data, params)[0], self.fun(data, params)

    def _backprop(self, data, params):
        x, y, key, state = data
        return backprop(self.model, self.loss, params, x, y, key=key, state=state)
