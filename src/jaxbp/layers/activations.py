"""Activations: each function and its derivative side by side; softmax and log-softmax."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import erf

from jaxbp.layers._base import check_input
from jaxbp.protocols import Layer

# Elementwise activations: each is its function and its derivative, side by side.
# `save` says which array the derivative is computed from: the input x or the output y.


@dataclasses.dataclass(frozen=True)
class _Elementwise(Layer):
    examples_independent = True  # elementwise: no example reads another

    def init(self, key, input_shape):
        return tuple(input_shape), ()

    def forward(self, params, x, *, key=None):
        check_input(self, x)
        y = self.f(x)
        return y, (y if self.save == "y" else x)

    def backward(self, params, saved, dy):
        return (), dy * self.df(saved)


@dataclasses.dataclass(frozen=True)
class Sigmoid(_Elementwise):
    """Sigmoid: y = 1/(1+e^-x); dy/dx = y(1-y), from the saved output."""

    save = "y"
    f = staticmethod(jax.nn.sigmoid)
    df = staticmethod(lambda y: y * (1 - y))


@dataclasses.dataclass(frozen=True)
class Tanh(_Elementwise):
    """Tanh: y = tanh x; dy/dx = 1 - y^2, from the saved output."""

    save = "y"
    f = staticmethod(jnp.tanh)
    df = staticmethod(lambda y: 1 - y * y)


@dataclasses.dataclass(frozen=True)
class Relu(_Elementwise):
    """ReLU: y = max(x, 0); dy/dx = 1 if x > 0 else 0 (y > 0 exactly when x > 0)."""

    selects = True  # at x = 0 the rule picks a side: the checker draws zeros too

    save = "y"
    f = staticmethod(jax.nn.relu)
    df = staticmethod(lambda y: (y > 0).astype(y.dtype))


@dataclasses.dataclass(frozen=True)
class Identity(_Elementwise):
    """Identity: y = x; dy/dx = 1."""

    def forward(self, params, x, *, key=None):
        check_input(self, x)
        return x, ()

    def backward(self, params, residuals, dy):
        return (), dy


@dataclasses.dataclass(frozen=True)
class LeakyRelu(_Elementwise):
    """Leaky ReLU: y = x if x >= 0 else a x; dy/dx = 1 if x >= 0 else a."""

    negative_slope: float = 0.01
    selects = True  # at x = 0 the rule picks a side: the checker draws zeros too
    save = "x"

    def f(self, x):
        return jnp.where(x >= 0, x, self.negative_slope * x)

    def df(self, x):
        return jnp.where(x >= 0, 1, self.negative_slope).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class Elu(_Elementwise):
    """ELU: y = x if x > 0 else a(e^x - 1); dy/dx = 1 if x > 0 else a e^x."""

    alpha: float = 1.0
    save = "x"

    def f(self, x):
        # min(x, 0) keeps the unused branch finite, so jax.grad through it stays finite too.
        return jnp.where(x > 0, x, self.alpha * jnp.expm1(jnp.minimum(x, 0)))

    def df(self, x):
        return jnp.where(x > 0, 1, self.alpha * jnp.exp(jnp.minimum(x, 0))).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class Softplus(_Elementwise):
    """Softplus: y = log(1 + e^x); dy/dx = sigmoid(x)."""

    save = "x"
    f = staticmethod(jax.nn.softplus)
    df = staticmethod(jax.nn.sigmoid)


@dataclasses.dataclass(frozen=True)
class Silu(_Elementwise):
    """SiLU (swish): y = x s, s = sigmoid(x); dy/dx = s (1 + x (1 - s))."""

    save = "x"
    f = staticmethod(lambda x: x * jax.nn.sigmoid(x))

    @staticmethod
    def df(x):
        s = jax.nn.sigmoid(x)
        return s * (1 + x * (1 - s))


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


@dataclasses.dataclass(frozen=True)
class Gelu(_Elementwise):
    """GELU: y = x Phi(x); dy/dx = Phi(x) + x phi(x). approximate=True uses the tanh form.

    tanh form: y = x (1 + tanh u) / 2, u = c (x + 0.044715 x^3), c = sqrt(2/pi);
    dy/dx = (1 + tanh u) / 2 + x (1 - tanh^2 u) c (1 + 3 * 0.044715 x^2) / 2.
    The default, approximate=True, matches jax.nn.gelu.
    """

    approximate: bool = True
    save = "x"

    def f(self, x):
        return jax.nn.gelu(x, approximate=self.approximate)

    def backward(self, params, saved, dy):
        # The barrier keeps XLA from sharing the forward's tanh (or erf) with df's in one jitted
        # step: shared, it is written out as one more (batch, ..., features) array, read back
        # twice; recomputed here, the forward is one pass x -> y (the gpt bench step: ~6% less
        # time). The rule is the same: the barrier is the identity.
        return (), dy * self.df(lax.optimization_barrier(saved))

    def df(self, x):
        if self.approximate:
            t = jnp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3))
            # For |x| >> 1, 1 - t^2 is 0; capping x^2 keeps 0 * x^2 from becoming 0 * inf.
            x2 = jnp.minimum(x * x, 1e30)
            return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 0.134145 * x2)
        cdf = 0.5 * (1 + erf(x / math.sqrt(2)))
        return cdf + x * jnp.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


# ---------------------------------------------------------------------------------------------
# Over the last axis


@dataclasses.dataclass(frozen=True)
class Softmax(Layer):
    """Softmax over the last axis: y = e^x / sum e^x; dx = y (dy - sum(dy y))."""

    examples_independent = True  # over the last axis of each row

    def init(self, key, input_shape):
        return tuple(input_shape), ()

    def forward(self, params, x, *, key=None):
        check_input(self, x)
        y = jax.nn.softmax(x, axis=-1)
        return y, y

    def backward(self, params, y, dy):
        return (), y * (dy - jnp.sum(dy * y, axis=-1, keepdims=True))


@dataclasses.dataclass(frozen=True)
class LogSoftmax(Layer):
    """Log-softmax over the last axis: y = x - logsumexp(x); dx = dy - e^y sum(dy)."""

    examples_independent = True  # over the last axis of each row

    def init(self, key, input_shape):
        return tuple(input_shape), ()

    def forward(self, params, x, *, key=None):
        check_input(self, x)
        y = jax.nn.log_softmax(x, axis=-1)
        return y, y

    def backward(self, params, y, dy):
        return (), dy - jnp.exp(y) * jnp.sum(dy, axis=-1, keepdims=True)


ACTIVATIONS: dict[str, Callable[..., Layer]] = {
    "sigmoid": Sigmoid, "tanh": Tanh, "relu": Relu, "leaky_relu": LeakyRelu, "elu": Elu,
    "gelu": Gelu, "softplus": Softplus, "silu": Silu, "identity": Identity, "softmax": Softmax,
    "log_softmax": LogSoftmax,
}  # fmt: skip


def activation(name: str, **options: Any) -> Layer:
    """The activation layer called `name` (e.g. "relu", "leaky_relu", negative_slope=0.1)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid names: {', '.join(ACTIVATIONS)}")
    try:
        return ACTIVATIONS[name](**options)
    except TypeError as error:
        raise TypeError(f"activation {name!r} does not take options {options}: {error}") from None
