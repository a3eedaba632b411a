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
    r"""Sigmoid: y = 1/(1+e^-x); dy/dx = y(1-y), from the saved output.

    **Forward and backward.** Elementwise, with $\mathrm{d}y = \partial C/\partial y$:

    $$
    y = \sigma(x) = \frac{1}{1 + e^{-x}}, \qquad \mathrm{d}x = \mathrm{d}y \odot y\,(1 - y)
    $$

    **Residuals.** $y$. The forward is `jax.nn.sigmoid` (`lax.logistic`), finite for every $x$.

    **Shapes.** Any `(batch, ...)`; $y$ and $\mathrm{d}x$ have $x$'s shape. No parameters.
    """

    save = "y"
    f = staticmethod(jax.nn.sigmoid)
    df = staticmethod(lambda y: y * (1 - y))


@dataclasses.dataclass(frozen=True)
class Tanh(_Elementwise):
    r"""Tanh: y = tanh x; dy/dx = 1 - y^2, from the saved output.

    **Forward and backward.** Elementwise:

    $$
    y = \tanh x, \qquad \mathrm{d}x = \mathrm{d}y \odot (1 - y^2)
    $$

    **Residuals.** $y$.

    **Shapes.** Any `(batch, ...)`; $y$ and $\mathrm{d}x$ have $x$'s shape. No parameters.
    """

    save = "y"
    f = staticmethod(jnp.tanh)
    df = staticmethod(lambda y: 1 - y * y)


@dataclasses.dataclass(frozen=True)
class Relu(_Elementwise):
    r"""ReLU: y = max(x, 0); dy/dx = 1 if x > 0 else 0 (y > 0 exactly when x > 0).

    **Forward and backward.** Elementwise:

    $$
    y = \max(x, 0), \qquad \mathrm{d}x = \mathrm{d}y \odot [\,y > 0\,]
    $$

    At $x = 0$ the rule takes the slope 0 (the indicator reads $y > 0$, false there).

    **Residuals.** $y$.

    **Shapes.** Any `(batch, ...)`; $y$ and $\mathrm{d}x$ have $x$'s shape. No parameters.
    """

    selects = True  # at x = 0 the rule picks a side: the checker draws zeros too

    save = "y"
    f = staticmethod(jax.nn.relu)
    df = staticmethod(lambda y: (y > 0).astype(y.dtype))


@dataclasses.dataclass(frozen=True)
class Identity(_Elementwise):
    r"""Identity: y = x; dy/dx = 1.

    **Forward and backward.** $y = x$, $\mathrm{d}x = \mathrm{d}y$.

    **Residuals.** None: `()`.

    **Shapes.** Any `(batch, ...)`; $y$ and $\mathrm{d}x$ have $x$'s shape. No parameters.
    """

    def forward(self, params, x, *, key=None):
        check_input(self, x)
        return x, ()

    def backward(self, params, residuals, dy):
        return (), dy


@dataclasses.dataclass(frozen=True)
class LeakyRelu(_Elementwise):
    r"""Leaky ReLU: y = x if x >= 0 else a x; dy/dx = 1 if x >= 0 else a.

    **Forward and backward.** Elementwise, $a$ = `negative_slope`:

    $$
    y = \begin{cases} x & x \ge 0 \\ a x & x < 0 \end{cases}, \qquad
    \mathrm{d}x = \mathrm{d}y \odot \begin{cases} 1 & x \ge 0 \\ a & x < 0 \end{cases}
    $$

    At $x = 0$ the rule takes the slope 1.

    **Residuals.** $x$.

    **Shapes.** Any `(batch, ...)`; $y$ and $\mathrm{d}x$ have $x$'s shape. No parameters.
    """

    negative_slope: float = 0.01
    selects = True  # at x = 0 the rule picks a side: the checker draws zeros too
    save = "x"

    def f(self, x):
        return jnp.where(x >= 0, x, self.negative_slope * x)

    def df(self, x):
        return jnp.where(x >= 0, 1, self.negative_slope).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class Elu(_Elementwise):
    r"""ELU: y = x if x > 0 else a(e^x - 1); dy/dx = 1 if x > 0 else a e^x.

    **Forward and backward.** Elementwise, $\alpha$ = `alpha`:

    $$
    y = \begin{cases} x & x > 0 \\ \alpha (e^x - 1) & x \le 0 \end{cases}, \qquad
    \mathrm{d}x = \mathrm{d}y \odot \begin{cases} 1 & x > 0 \\ \alpha e^x & x \le 0 \end{cases}
    $$

    At $x = 0$ the rule takes the slope $\alpha$. The code evaluates $e^x - 1$ as `expm1` and both
    exponentials at $\min(x, 0)$, so the branch that `where` discards never overflows.

    **Residuals.** $x$.

    **Shapes.** Any `(batch, ...)`; $y$ and $\mathrm{d}x$ have $x$'s shape. No parameters.
    """

    alpha: float = 1.0
    save = "x"

    def f(self, x):
        # min(x, 0) keeps the unused branch finite, so jax.grad through it stays finite too.
        return jnp.where(x > 0, x, self.alpha * jnp.expm1(jnp.minimum(x, 0)))

    def df(self, x):
        return jnp.where(x > 0, 1, self.alpha * jnp.exp(jnp.minimum(x, 0))).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class Softplus(_Elementwise):
    r"""Softplus: y = log(1 + e^x); dy/dx = sigmoid(x).

    **Forward and backward.** Elementwise:

    $$
    y = \log(1 + e^x), \qquad \mathrm{d}x = \mathrm{d}y \odot \sigma(x)
    $$

    The forward is `jax.nn.softplus`, computed as `logaddexp(x, 0)`: no overflow for large $x$, no
    loss of digits for very negative $x$.

    **Residuals.** $x$.

    **Shapes.** Any `(batch, ...)`; $y$ and $\mathrm{d}x$ have $x$'s shape. No parameters.
    """

    save = "x"
    f = staticmethod(jax.nn.softplus)
    df = staticmethod(jax.nn.sigmoid)


@dataclasses.dataclass(frozen=True)
class Silu(_Elementwise):
    r"""SiLU (swish): y = x s, s = sigmoid(x); dy/dx = s (1 + x (1 - s)).

    **Forward and backward.** Elementwise, $s = \sigma(x)$:

    $$
    y = x\, s, \qquad \mathrm{d}x = \mathrm{d}y \odot s\,\bigl(1 + x (1 - s)\bigr)
    $$

    **Residuals.** $x$ ($s$ is recomputed in backward).

    **Shapes.** Any `(batch, ...)`; $y$ and $\mathrm{d}x$ have $x$'s shape. No parameters.
    """

    save = "x"
    f = staticmethod(lambda x: x * jax.nn.sigmoid(x))

    @staticmethod
    def df(x):
        s = jax.nn.sigmoid(x)
        return s * (1 + x * (1 - s))


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


@dataclasses.dataclass(frozen=True)
class Gelu(_Elementwise):
    r"""GELU: y = x Phi(x); dy/dx = Phi(x) + x phi(x). approximate=True uses the tanh form.

    tanh form: y = x (1 + tanh u) / 2, u = c (x + 0.044715 x^3), c = sqrt(2/pi);
    dy/dx = (1 + tanh u) / 2 + x (1 - tanh^2 u) c (1 + 3 * 0.044715 x^2) / 2.
    The default, approximate=True, matches jax.nn.gelu.

    **Forward and backward.** Elementwise. Exact form (`approximate=False`), $\Phi$ and $\varphi$
    the standard normal CDF and density:

    $$
    y = x\,\Phi(x), \qquad \mathrm{d}x = \mathrm{d}y \odot \bigl(\Phi(x) + x\,\varphi(x)\bigr)
    $$

    tanh form (the default), $c = \sqrt{2/\pi}$, $u = c\,(x + 0.044715\,x^3)$:

    $$
    y = \tfrac12 x\,(1 + \tanh u)
    $$

    $$
    \mathrm{d}x = \mathrm{d}y \odot \Bigl(\tfrac12 (1 + \tanh u)
      + \tfrac12 x\,(1 - \tanh^2 u)\, c\,(1 + 3 \cdot 0.044715\, x^2)\Bigr)
    $$

    For $\lvert x\rvert \gg 1$, $1 - \tanh^2 u$ is 0; the code caps $x^2$ at $10^{30}$ so that
    $0 \cdot x^2$ never becomes $0 \cdot \infty$.

    **Residuals.** $x$. Backward recomputes $\tanh u$ (or $\Phi$) from it behind an optimisation
    barrier, which keeps XLA from storing the forward's copy: the rule is unchanged.

    **Shapes.** Any `(batch, ...)`; $y$ and $\mathrm{d}x$ have $x$'s shape. No parameters.
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
    r"""Softmax over the last axis: y = e^x / sum e^x; dx = y (dy - sum(dy y)).

    **Forward.** Over the last axis, for each row:

    $$
    y_j = \frac{e^{x_j}}{\sum_k e^{x_k}}
    $$

    (`jax.nn.softmax`, which subtracts the row's maximum first).

    **Backward.** The Jacobian is $\mathrm{diag}(y) - y y^\top$, so, row by row:

    $$
    \mathrm{d}x_j = y_j \Bigl(\mathrm{d}y_j - \sum_k \mathrm{d}y_k\, y_k\Bigr)
    $$

    **Shapes.** $x$, $y$: `(batch, ..., k)`. **Residuals.** $y$.
    """

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
    r"""Log-softmax over the last axis: y = x - logsumexp(x); dx = dy - e^y sum(dy).

    **Forward.** Over the last axis, for each row:

    $$
    y_j = x_j - \log \sum_k e^{x_k}
    $$

    (`jax.nn.log_softmax`: the row's maximum is subtracted before the exponentials).

    **Backward.** Row by row, with $e^{y_j}$ the softmax:

    $$
    \mathrm{d}x_j = \mathrm{d}y_j - e^{y_j} \sum_k \mathrm{d}y_k
    $$

    **Shapes.** $x$, $y$: `(batch, ..., k)`. **Residuals.** $y$.
    """

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
