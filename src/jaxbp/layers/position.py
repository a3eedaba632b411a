"""PositionEmbedding: a learned vector per position, added to a sequence (GPT's positions)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from jaxbp._types import Params, PRNGKey, Shape
from jaxbp.layers._base import check_input, describe
from jaxbp.protocols import Layer

INIT_STD = 0.02  # GPT-2's: small next to the N(0, 1) token rows, so tokens dominate at first


@dataclasses.dataclass(frozen=True)
class PositionEmbedding(Layer):
    r"""Learned positions: y[b, t] = x[b, t] + table[t]; dtable[t] = sum_b dy[b, t] for t < T
    (rows T ... context - 1 read nothing, so get 0); dx = dy.

    x: (batch, T, C), T <= context -> y: (batch, T, C). Residuals: none (T is dy's axis 1).
    Params: {"table": (context, C)}, starting N(0, INIT_STD^2).

    **Forward.** With $P$ = `table`, `(context, C)`, and $T \le$ `context` the sequence length:

    $$
    y_{b,t} = x_{b,t} + P_t
    $$

    **Backward.**

    $$
    \mathrm{d}x = \mathrm{d}y, \qquad
    \mathrm{d}P_t = \begin{cases} \sum_b \mathrm{d}y_{b,t} & t < T \\ 0 & t \ge T \end{cases}
    $$

    **Shapes.** $x$, $y$: `(batch, T, C)`. **Residuals.** None: `()` ($T$ is read from
    $\mathrm{d}y$'s shape).
    """

    context: int
    features: int
    examples_independent = True  # the same table added to every example
    recompute_per_example = True  # no key, no state: one example's forward is its own rows

    def __post_init__(self):
        for name in ("context", "features"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"PositionEmbedding: {name} must be an int, got {value!r}")
            if value <= 0:
                raise ValueError(f"PositionEmbedding: {name} must be positive, got {value}")

    def init(self, key: PRNGKey, input_shape: Shape) -> tuple[Shape, Params]:
        """input_shape: (T, C), T <= context, C = features."""
        if len(input_shape) != 2 or input_shape[-1] != self.features:
            raise ValueError(
                f"{self!r}: input shape must be (T, {self.features}), got {tuple(input_shape)}"
            )
        self._check_length(input_shape[0])
        table = INIT_STD * jax.random.normal(key, (self.context, self.features))
        return tuple(input_shape), {"table": table}

    def forward(self, params, x, *, key=None):
        self._check(params, x)
        return x + params["table"][: x.shape[1]], ()

    def backward(self, params, residuals, dy):
        T = dy.shape[1]
        dtable = jnp.zeros_like(params["table"]).at[:T].set(dy.sum(0).astype(params["table"].dtype))
        return {"table": dtable}, dy

    def _check(self, params, x) -> None:
        """Raise at trace time when x or params cannot be this layer's."""
        want = (self.context, self.features)
        if not (
            isinstance(params, Mapping)
            and set(params) == {"table"}
            and getattr(params["table"], "shape", None) == want
        ):
            raise ValueError(
                f"{self!r}: params must be {{'table': {want}}}, got {describe(params)}"
            )
        check_input(self, x, min_ndim=0)  # an array, floating point
        if x.ndim != 3 or x.shape[-1] != self.features:
            raise ValueError(
                f"{self!r}: expects inputs of shape (batch, T, {self.features}), "
                f"got {tuple(x.shape)}"
            )
        self._check_length(x.shape[1])

    def _check_length(self, T: int) -> None:
        if T > self.context:
            raise ValueError(
                f"{self!r}: a sequence of T = {T} positions is longer than the context of "
                f"{self.context} positions this table holds"
            )
