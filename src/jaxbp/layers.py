"""Layers: pure objects whose backward rule (VJP) is written by hand, next to the forward pass.

The protocol, stated once. A layer is an immutable object with four pure methods:

    init(key, input_shape) -> (output_shape, params)
        Shapes are per example (no batch axis), tuples of ints; params is a pytree of arrays,
        () when the layer has none.
    forward(params, x, *, key=None) -> (y, residuals)
        x: (batch, *input_shape). residuals is a pytree of arrays: exactly what backward needs.
        key feeds stochastic layers and is ignored by the rest.
    backward(params, residuals, dy) -> (dparams, dx)
        The hand-written vector-Jacobian product: dparams has the structure, shapes and dtypes
        of params, dx those of x.
    apply(params, x, *, key=None) -> y
        forward(...)[0].

Any object with these methods is a layer (duck typing); `Layer` only supplies `apply`.
No rule here calls jax.grad, jax.vjp or jax.jacobian: jax.grad is the referee, not the player.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.special import erf

from jaxbp._matmul import weight_grad
from jaxbp._types import Array, Params, PRNGKey, Shape

__all__ = [
    "Layer", "Dense", "Sigmoid", "Tanh", "Relu", "LeakyRelu", "Elu", "Gelu", "Softplus", "Silu",
    "Identity", "Softmax", "LogSoftmax", "Flatten", "Serial", "serial", "mlp", "activation",
    "ACTIVATIONS",
]  # fmt: skip


class Layer:
    """Base for the built-in layers: supplies `apply`."""

    def apply(self, params: Params, x: Array, *, key: PRNGKey | None = None) -> Array:
        return self.forward(params, x, key=key)[0]


def _check_input(layer: Any, x: Array, expected: Shape | None = None, *, min_ndim: int = 1) -> None:
    """Raise at trace time when x cannot be this layer's input."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{layer!r}: input must be an array, got {type(x).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{layer!r}: input must be floating point, got dtype {x.dtype}")
    if x.ndim < min_ndim + 1:
        raise ValueError(
            f"{layer!r}: input needs a batch axis and {min_ndim} feature axis/axes, "
            f"got shape {tuple(x.shape)}"
        )
    if expected is not None and tuple(x.shape[1:]) != tuple(expected):
        raise ValueError(
            f"{layer!r}: expects inputs of shape (batch, {', '.join(map(str, expected))}), "
            f"got {tuple(x.shape)}"
        )


# ---------------------------------------------------------------------------------------------
# Dense


@dataclasses.dataclass(frozen=True)
class Dense(Layer):
    """Affine map y = x @ W + b; dW = x^T dy, db = sum_batch dy, dx = dy W^T.

    (weight_grad computes x^T dy in the layout that is fastest on the platform.)

    x: (batch, in) -> y: (batch, features). W starts LeCun-normal (variance 1/in), b at zero.
    """

    features: int

    def __post_init__(self):
        if not isinstance(self.features, int) or isinstance(self.features, bool):
            raise TypeError(f"Dense: features must be an int, got {self.features!r}")
        if self.features <= 0:
            raise ValueError(f"Dense: features must be positive, got {self.features}")

    def init(self, key: PRNGKey, input_shape: Shape) -> tuple[Shape, Params]:
        if len(input_shape) != 1:
            raise ValueError(f"{self!r}: input shape must be (in,), got {tuple(input_shape)}")
        (fan_in,) = input_shape
        W = jax.random.normal(key, (fan_in, self.features)) / math.sqrt(fan_in)
        return (self.features,), {"W": W, "b": jnp.zeros((self.features,))}

    def forward(self, params, x, *, key=None):
        _check_input(self, x, params["W"].shape[:1])
        return x @ params["W"] + params["b"], x

    def backward(self, params, x, dy):
        return {"W": weight_grad(x, dy), "b": dy.sum(0)}, dy @ params["W"].T


# ---------------------------------------------------------------------------------------------
# Elementwise activations: each is its function and its derivative, side by side.
# `save` says which array the derivative is computed from: the input x or the output y.


@dataclasses.dataclass(frozen=True)
class _Elementwise(Layer):
    def init(self, key, input_shape):
        return tuple(input_shape), ()

    def forward(self, params, x, *, key=None):
        _check_input(self, x)
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

    save = "y"
    f = staticmethod(jax.nn.relu)
    df = staticmethod(lambda y: (y > 0).astype(y.dtype))


@dataclasses.dataclass(frozen=True)
class Identity(_Elementwise):
    """Identity: y = x; dy/dx = 1."""

    def forward(self, params, x, *, key=None):
        _check_input(self, x)
        return x, ()

    def backward(self, params, residuals, dy):
        return (), dy


@dataclasses.dataclass(frozen=True)
class LeakyRelu(_Elementwise):
    """Leaky ReLU: y = x if x >= 0 else a x; dy/dx = 1 if x >= 0 else a."""

    negative_slope: float = 0.01
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

    def init(self, key, input_shape):
        return tuple(input_shape), ()

    def forward(self, params, x, *, key=None):
        _check_input(self, x)
        y = jax.nn.softmax(x, axis=-1)
        return y, y

    def backward(self, params, y, dy):
        return (), y * (dy - jnp.sum(dy * y, axis=-1, keepdims=True))


@dataclasses.dataclass(frozen=True)
class LogSoftmax(Layer):
    """Log-softmax over the last axis: y = x - logsumexp(x); dx = dy - e^y sum(dy)."""

    def init(self, key, input_shape):
        return tuple(input_shape), ()

    def forward(self, params, x, *, key=None):
        _check_input(self, x)
        y = jax.nn.log_softmax(x, axis=-1)
        return y, y

    def backward(self, params, y, dy):
        return (), dy - jnp.exp(y) * jnp.sum(dy, axis=-1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class Flatten(Layer):
    """Flatten: (batch, *shape) -> (batch, prod(shape)); dx = dy reshaped back."""

    def init(self, key, input_shape):
        return (math.prod(input_shape),), ()

    def forward(self, params, x, *, key=None):
        _check_input(self, x)
        # A zero-size array carries x's shape through jit and vmap at no cost.
        return x.reshape(x.shape[0], -1), jnp.zeros((*x.shape, 0), x.dtype)

    def backward(self, params, shape_carrier, dy):
        return (), dy.reshape(shape_carrier.shape[:-1])


# ---------------------------------------------------------------------------------------------
# Composition


@dataclasses.dataclass(frozen=True)
class Serial(Layer):
    """Layers in sequence. params: a tuple of each layer's params. backward: the reverse sweep."""

    layers: tuple

    def __repr__(self):
        return f"serial({', '.join(map(repr, self.layers))})"

    def init(self, key, input_shape):
        shape, params = tuple(input_shape), []
        for i, (layer, k) in enumerate(zip(self.layers, jax.random.split(key, len(self.layers)))):
            with _blame(i, layer):
                shape, p = layer.init(k, shape)
            params.append(p)
        return shape, tuple(params)

    def forward(self, params, x, *, key=None):
        y, residuals, _ = self.forward_sweep(params, x, key=key)
        return y, residuals

    def backward(self, params, residuals, dy):
        dparams, dx, _ = self.reverse_sweep(params, residuals, dy)
        return dparams, dx

    def forward_sweep(self, params, x, *, key=None):
        """forward, also returning each layer's input: (y, residuals, inputs)."""
        _check_params(self, params)
        keys = [None] * len(self.layers) if key is None else jax.random.split(key, len(self.layers))
        residuals, inputs = [], []
        for i, (layer, p, k) in enumerate(zip(self.layers, params, keys)):
            inputs.append(x)
            with _blame(i, layer):
                x, r = layer.forward(p, x, key=k)
            residuals.append(r)
        return x, tuple(residuals), tuple(inputs)

    def reverse_sweep(self, params, residuals, dy, rules=None):
        """backward, also returning the cotangent reaching each layer's output.

        Returns (dparams, dx, deltas), deltas[i] being dC/d(output of layer i).

        rules[i], when given, replaces layer i's backward rule (the forward pass is unchanged).
        """
        rules = rules or {}
        dparams, deltas = [None] * len(self.layers), [None] * len(self.layers)
        for i in reversed(range(len(self.layers))):
            deltas[i] = dy
            dparams[i], dy = rules.get(i, self.layers[i].backward)(params[i], residuals[i], dy)
        return tuple(dparams), dy, tuple(deltas)


class _blame:
    """Prefix errors raised inside a serial's layer with its position: 'layer [2] Dense(...)'."""

    def __init__(self, index: int, layer: Any):
        self.prefix = f"layer [{index}] {layer!r}"

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if kind in (ValueError, TypeError) and not str(error).startswith("layer ["):
            raise kind(f"{self.prefix}: {error}") from error
        return False


def _check_params(model: Serial, params: Params) -> None:
    if not isinstance(params, (tuple, list)) or len(params) != len(model.layers):
        got = (
            f"{type(params).__name__} of length {len(params)}"
            if hasattr(params, "__len__")
            else type(params).__name__
        )
        raise ValueError(
            f"serial of {len(model.layers)} layers needs a tuple of {len(model.layers)} params, "
            f"got {got}"
        )


def serial(*layers: Any) -> Serial:
    """Compose layers in sequence; params is the tuple of each layer's params, in order."""
    for i, layer in enumerate(layers):
        missing = [
            m for m in ("init", "forward", "backward") if not callable(getattr(layer, m, None))
        ]
        if missing:
            raise TypeError(
                f"serial: argument {i} ({layer!r}) is not a layer: no {', '.join(missing)}"
            )
    return Serial(tuple(layers))


# ---------------------------------------------------------------------------------------------
# Names


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


def mlp(
    features: Sequence[int], activation: str = "sigmoid", output_activation: str | None = None
) -> Serial:
    """Dense(f) for each f in features, `activation` between them, `output_activation` last."""
    if not features:
        raise ValueError("mlp: features must name at least one layer size")
    act = globals()["activation"]
    layers: list[Any] = []
    for i, f in enumerate(features):
        layers.append(Dense(f))
        if i < len(features) - 1:
            layers.append(act(activation))
    if output_activation is not None:
        layers.append(act(output_activation))
    return serial(*layers)
