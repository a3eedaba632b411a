"""Dropout: the one stochastic layer; its randomness comes from an explicit key, never hidden."""

from __future__ import annotations

import dataclasses
from numbers import Real

import jax

from jaxbp._types import Params, PRNGKey, Shape
from jaxbp.layers._base import check_input
from jaxbp.protocols import Layer


@dataclasses.dataclass(frozen=True)
class Dropout(Layer):
    r"""Inverted dropout: y = x mask, mask = keep/(1-rate), keep ~ Bernoulli(1-rate); dx = dy mask.

    Scaling by 1/(1 - rate) keeps E[y] = x, so evaluation is the identity (y = x, dx = dy).
    x: (batch, ...). Residuals: mask (batch, ...) in x's dtype; () in evaluation or at rate 0.
    In training (train=True, rate > 0) forward needs a key: without one it raises.

    **Forward, training.** With $p$ = `rate` and one Bernoulli draw per entry of $x$:

    $$
    k \sim \mathrm{Bernoulli}(1 - p), \qquad m = \frac{k}{1 - p}, \qquad y = x \odot m
    $$

    **Backward.** The mask is a constant:

    $$
    \mathrm{d}x = \mathrm{d}y \odot m
    $$

    **Evaluation** (`train=False`) or $p = 0$: $y = x$, $\mathrm{d}x = \mathrm{d}y$.

    **Shapes.** Any `(batch, ...)`; no parameters. **Residuals.** The mask $m$, in $x$'s shape and
    dtype (its entries are $0$ or $1/(1-p)$); `()` when the layer is the identity.
    """

    rate: float
    train: bool = True
    examples_independent = True  # each entry's mask is its own

    def __post_init__(self):
        if isinstance(self.rate, bool) or not isinstance(self.rate, Real):
            raise TypeError(f"Dropout: rate must be a number, got {self.rate!r}")
        if not 0 <= self.rate < 1:
            raise ValueError(f"Dropout: rate must lie in [0, 1), got {self.rate}")

    def init(self, key: PRNGKey, input_shape: Shape) -> tuple[Shape, Params]:
        return tuple(input_shape), ()

    def forward(self, params, x, *, key=None):
        check_input(self, x)
        if self._identity:
            return x, ()
        if key is None:
            raise ValueError(
                f"{self!r} in training needs a key: pass key= (backprop, fit and forward take "
                "one), or eval_mode(model) to evaluate"
            )
        keep = jax.random.bernoulli(key, 1 - self.rate, x.shape)
        mask = keep.astype(x.dtype) / (1 - self.rate)
        return x * mask, mask

    def backward(self, params, mask, dy):
        return (), dy if self._identity else dy * mask

    @property
    def _identity(self) -> bool:
        return not self.train or self.rate == 0
