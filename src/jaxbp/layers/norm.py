"""Normalisation: LayerNorm and RMSNorm over the last axis, BatchNorm over every other axis.

Each saves xhat, the normalised input, and the reciprocal of the standard deviation it divided
by; every backward is the affine part (g = dy * scale) followed by the normaliser's VJP.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import lax

from jaxbp._types import Array, Params, PRNGKey, Shape
from jaxbp.layers._base import check_input
from jaxbp.layers._normalise import (
    affine_params,
    centred,
    channels,
    check_options,
    check_vectors,
    mean_last,
    per_example_sum,
    sum_but_last,
)  # fmt: skip
from jaxbp.protocols import Layer

# ---------------------------------------------------------------------------------------------
# Over the last axis


@dataclasses.dataclass(frozen=True)
class LayerNorm(Layer):
    """LayerNorm: y = xhat scale + bias, xhat = (x - mean) rstd, rstd = 1/sqrt(var + eps);
    dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy scale (mean, var over the last axis).

    dscale = sum dy xhat, dbias = sum dy (sums over every axis but the last).
    x: (batch, ..., C). Residuals: xhat (batch, ..., C), rstd (batch, ..., 1).
    """

    eps: float = 1e-5
    examples_independent = True  # statistics over each position's own channels

    def __post_init__(self):
        check_options(self, eps=self.eps)

    def init(self, key: PRNGKey, input_shape: Shape) -> tuple[Shape, Params]:
        return tuple(input_shape), affine_params(channels(self, input_shape))

    def forward(self, params, x, *, key=None):
        check_input(self, x)
        check_vectors(self, params, ("scale", "bias"), x)
        xc, _ = centred(x, (-1,), x[..., :1])
        rstd = lax.rsqrt(mean_last(xc * xc) + self.eps)
        xhat = xc * rstd
        return xhat * params["scale"] + params["bias"], (xhat, rstd)

    def backward(self, params, residuals, dy):
        xhat, rstd = residuals
        g = dy * params["scale"]
        dx = rstd * (g - mean_last(g) - xhat * mean_last(g * xhat))
        return {"scale": sum_but_last(dy * xhat), "bias": sum_but_last(dy)}, dx

    def per_example_grads(self, params, residuals, dy):
        """Optional rule (jaxbp.quantities): dscale_i = sum dy_i xhat_i, dbias_i = sum dy_i."""
        return {"scale": per_example_sum(dy * residuals[0]), "bias": per_example_sum(dy)}


@dataclasses.dataclass(frozen=True)
class RMSNorm(Layer):
    """RMSNorm: y = xhat scale, xhat = x rrms, rrms = 1/sqrt(mean(x^2) + eps);
    dx = rrms (g - xhat mean(g xhat)), g = dy scale (mean over the last axis).

    dscale = sum dy xhat (over every axis but the last).
    x: (batch, ..., C). Residuals: xhat (batch, ..., C), rrms (batch, ..., 1).
    """

    eps: float = 1e-6
    examples_independent = True  # statistics over each position's own channels

    def __post_init__(self):
        check_options(self, eps=self.eps)

    def init(self, key: PRNGKey, input_shape: Shape) -> tuple[Shape, Params]:
        return tuple(input_shape), {"scale": jnp.ones((channels(self, input_shape),))}

    def forward(self, params, x, *, key=None):
        check_input(self, x)
        check_vectors(self, params, ("scale",), x)
        rrms = lax.rsqrt(mean_last(x * x) + self.eps)
        xhat = x * rrms
        return xhat * params["scale"], (xhat, rrms)

    def backward(self, params, residuals, dy):
        xhat, rrms = residuals
        g = dy * params["scale"]
        return {"scale": sum_but_last(dy * xhat)}, rrms * (g - xhat * mean_last(g * xhat))

    def per_example_grads(self, params, residuals, dy):
        """Optional rule (jaxbp.quantities): dscale_i = sum dy_i xhat_i."""
        return {"scale": per_example_sum(dy * residuals[0])}


# ---------------------------------------------------------------------------------------------
# Over every axis but the last


@dataclasses.dataclass(frozen=True)
class BatchNorm(Layer):
    """BatchNorm: y = xhat scale + bias, xhat = (x - mean) rstd, rstd = 1/sqrt(var + eps);
    training: dx = rstd/N (N g - sum g - xhat sum(g xhat)), g = dy scale; evaluation: dx = g rstd.

    mean, var and the sums run over every axis but the last (N values per channel): the batch's
    in training (they depend on x, hence the two extra terms), the running ones in evaluation
    (constants). dscale = sum dy xhat, dbias = sum dy.

    x: (batch, ..., C). Residuals: xhat (batch, ..., C), rstd (C,).
    State {"mean": (C,), "var": (C,)}, from zeros and ones; a training step moves it to
    momentum * state + (1 - momentum) * the batch's statistic, the variance being the biased
    one (divided by N, the one that normalised the batch), as Flax keeps it (PyTorch keeps the
    unbiased one). forward (no state) works in training only.
    """

    momentum: float = 0.9
    eps: float = 1e-5
    train: bool = True

    def __post_init__(self):
        check_options(self, momentum=self.momentum, eps=self.eps)

    @property
    def examples_independent(self) -> bool:
        """In evaluation only: in training the batch's mean and variance couple the examples."""
        return not self.train

    def init(self, key: PRNGKey, input_shape: Shape) -> tuple[Shape, Params]:
        return tuple(input_shape), affine_params(channels(self, input_shape))

    def init_state(self, params: Params) -> dict[str, Array]:
        check_vectors(self, params, ("scale", "bias"), None)
        return {"mean": jnp.zeros_like(params["scale"]), "var": jnp.ones_like(params["scale"])}

    def forward(self, params, x, *, key=None):
        if not self.train:
            raise TypeError(
                f"{self!r}: evaluation reads the running statistics, which forward has no "
                "access to: call forward_state(params, state, x) (or use a state-aware sweep)"
            )
        y, residuals, _ = self.forward_state(params, self.init_state(params), x, key=key)
        return y, residuals

    def forward_state(self, params, state, x, *, key=None):
        check_input(self, x)
        check_vectors(self, params, ("scale", "bias"), x)
        check_vectors(self, state, ("mean", "var"), x, what="state")
        if self.train:
            axes = tuple(range(x.ndim - 1))
            xc, mean = centred(x, axes, x.reshape(-1, x.shape[-1])[0])
            mean, var = mean.reshape(-1), jnp.mean(xc * xc, axis=axes)
            state = {k: self._running(state[k], v) for k, v in (("mean", mean), ("var", var))}
        else:
            xc, var = x - state["mean"], state["var"]
        rstd = lax.rsqrt(var + self.eps)
        xhat = xc * rstd
        return xhat * params["scale"] + params["bias"], (xhat, rstd), state

    def backward(self, params, residuals, dy):
        xhat, rstd = residuals
        g = dy * params["scale"]
        dparams = {"scale": sum_but_last(dy * xhat), "bias": sum_but_last(dy)}
        if not self.train:
            return dparams, g * rstd
        n = g.size // g.shape[-1]
        return dparams, rstd / n * (n * g - sum_but_last(g) - xhat * sum_but_last(g * xhat))

    def per_example_grads(self, params, residuals, dy):
        """Optional rule (jaxbp.quantities), evaluation only (the running statistics are
        constants): dscale_i = sum dy_i xhat_i, dbias_i = sum dy_i. In training the batch's
        statistics couple the examples, and it raises."""
        if not self.examples_independent:
            raise NotImplementedError(
                f"{self!r}: in training the batch's mean and variance couple the examples, so "
                "per-example gradients are undefined; use eval_mode(model) with its state"
            )
        return {"scale": per_example_sum(dy * residuals[0]), "bias": per_example_sum(dy)}

    def _running(self, old: Array, batch: Array) -> Array:
        # Kept in the state's dtype, so a training scan's carry keeps its type.
        return (self.momentum * old + (1 - self.momentum) * batch).astype(old.dtype)
