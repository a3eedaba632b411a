"""Normalisation: LayerNorm and RMSNorm over the last axis, BatchNorm over every other axis.

Each saves xhat, the normalised input, and the reciprocal of the standard deviation it divided
by; every backward is the affine part (g = dy * scale) followed by the normaliser's VJP.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

import jax.numpy as jnp
from jax import lax

from jaxbp._types import Array, Params, PRNGKey, Shape
from jaxbp.layers._base import Layer, _check_input, _describe


def _sum_but_last(a: Array) -> Array:
    """(batch, ..., C) -> (C,): the sum over every axis but the channels."""
    return a.reshape(-1, a.shape[-1]).sum(0)


def _per_example_sum(a: Array) -> Array:
    """(batch, ..., C) -> (batch, C): _sum_but_last for each example (per-example gradients)."""
    return a.reshape(a.shape[0], -1, a.shape[-1]).sum(1)


def _mean_last(a: Array) -> Array:
    return jnp.mean(a, axis=-1, keepdims=True)


def _centred(x: Array, axes: tuple[int, ...], shift: Array) -> tuple[Array, Array]:
    """(x - mean, mean) over axes (kept). Subtracting one sample first (shift; exact in the
    derivative, as it cancels) centres a constant slice to exactly 0 and keeps a large common
    offset from eating float32 digits of the mean."""
    d = x - shift
    m = jnp.mean(d, axis=axes, keepdims=True)
    return d - m, shift + m


# ---------------------------------------------------------------------------------------------
# Checks shared by the three layers


def _check_options(layer: Any, **options: Any) -> None:
    """eps must be positive (a constant row has variance 0); momentum must lie in [0, 1]."""
    for name, value in options.items():
        if isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(f"{type(layer).__name__}: {name} must be a number, got {value!r}")
    if "eps" in options and not options["eps"] > 0:
        raise ValueError(f"{type(layer).__name__}: eps must be positive, got {options['eps']}")
    if "momentum" in options and not 0 <= options["momentum"] <= 1:
        raise ValueError(
            f"{type(layer).__name__}: momentum must lie in [0, 1], got {options['momentum']}"
        )


def _channels(layer: Any, input_shape: Shape) -> int:
    if len(input_shape) < 1:
        raise ValueError(f"{layer!r}: input shape must be (..., C), got {tuple(input_shape)}")
    return int(input_shape[-1])


def _check_vectors(
    layer: Any, tree: Any, keys: Sequence[str], x: Array | None, what: str = "params"
) -> None:
    """Raise unless tree is {key: (C,) for key in keys}, C being x's last axis (when x is given)."""
    shapes = (
        {k: getattr(v, "shape", None) for k, v in tree.items()} if isinstance(tree, Mapping) else {}
    )
    ok = set(shapes) == set(keys) and all(s is not None and len(s) == 1 for s in shapes.values())
    if not ok or len(set(shapes.values())) != 1:
        want = ", ".join(f"{k!r}: (C,)" for k in keys)
        raise ValueError(
            f"{layer!r}: {what} must be {{{want}}}, C the input's last axis; got {_describe(tree)}"
        )
    (C,) = shapes[keys[0]]
    if x is not None and x.shape[-1] != C:
        raise ValueError(
            f"{layer!r}: {what} hold C = {C} channels: expects inputs of shape (batch, ..., {C}), "
            f"got {tuple(x.shape)}"
        )


def _affine_params(C: int) -> Params:
    return {"scale": jnp.ones((C,)), "bias": jnp.zeros((C,))}


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

    def __post_init__(self):
        _check_options(self, eps=self.eps)

    def init(self, key: PRNGKey, input_shape: Shape) -> tuple[Shape, Params]:
        return tuple(input_shape), _affine_params(_channels(self, input_shape))

    def forward(self, params, x, *, key=None):
        _check_input(self, x)
        _check_vectors(self, params, ("scale", "bias"), x)
        xc, _ = _centred(x, (-1,), x[..., :1])
        rstd = lax.rsqrt(_mean_last(xc * xc) + self.eps)
        xhat = xc * rstd
        return xhat * params["scale"] + params["bias"], (xhat, rstd)

    def backward(self, params, residuals, dy):
        xhat, rstd = residuals
        g = dy * params["scale"]
        dx = rstd * (g - _mean_last(g) - xhat * _mean_last(g * xhat))
        return {"scale": _sum_but_last(dy * xhat), "bias": _sum_but_last(dy)}, dx

    def per_example_grads(self, params, residuals, dy):
        """Optional rule (jaxbp.quantities): dscale_i = sum dy_i xhat_i, dbias_i = sum dy_i."""
        return {"scale": _per_example_sum(dy * residuals[0]), "bias": _per_example_sum(dy)}


@dataclasses.dataclass(frozen=True)
class RMSNorm(Layer):
    """RMSNorm: y = xhat scale, xhat = x rrms, rrms = 1/sqrt(mean(x^2) + eps);
    dx = rrms (g - xhat mean(g xhat)), g = dy scale (mean over the last axis).

    dscale = sum dy xhat (over every axis but the last).
    x: (batch, ..., C). Residuals: xhat (batch, ..., C), rrms (batch, ..., 1).
    """

    eps: float = 1e-6

    def __post_init__(self):
        _check_options(self, eps=self.eps)

    def init(self, key: PRNGKey, input_shape: Shape) -> tuple[Shape, Params]:
        return tuple(input_shape), {"scale": jnp.ones((_channels(self, input_shape),))}

    def forward(self, params, x, *, key=None):
        _check_input(self, x)
        _check_vectors(self, params, ("scale",), x)
        rrms = lax.rsqrt(_mean_last(x * x) + self.eps)
        xhat = x * rrms
        return xhat * params["scale"], (xhat, rrms)

    def backward(self, params, residuals, dy):
        xhat, rrms = residuals
        g = dy * params["scale"]
        return {"scale": _sum_but_last(dy * xhat)}, rrms * (g - xhat * _mean_last(g * xhat))

    def per_example_grads(self, params, residuals, dy):
        """Optional rule (jaxbp.quantities): dscale_i = sum dy_i xhat_i."""
        return {"scale": _per_example_sum(dy * residuals[0])}


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
        _check_options(self, momentum=self.momentum, eps=self.eps)

    def init(self, key: PRNGKey, input_shape: Shape) -> tuple[Shape, Params]:
        return tuple(input_shape), _affine_params(_channels(self, input_shape))

    def init_state(self, params: Params) -> dict[str, Array]:
        _check_vectors(self, params, ("scale", "bias"), None)
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
        _check_input(self, x)
        _check_vectors(self, params, ("scale", "bias"), x)
        _check_vectors(self, state, ("mean", "var"), x, what="state")
        if self.train:
            axes = tuple(range(x.ndim - 1))
            xc, mean = _centred(x, axes, x.reshape(-1, x.shape[-1])[0])
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
        dparams = {"scale": _sum_but_last(dy * xhat), "bias": _sum_but_last(dy)}
        if not self.train:
            return dparams, g * rstd
        n = g.size // g.shape[-1]
        return dparams, rstd / n * (n * g - _sum_but_last(g) - xhat * _sum_but_last(g * xhat))

    def per_example_grads(self, params, residuals, dy):
        """Optional rule (jaxbp.quantities), evaluation only (the running statistics are
        constants): dscale_i = sum dy_i xhat_i, dbias_i = sum dy_i. In training the batch's
        statistics couple the examples, and it raises."""
        if self.train:
            raise NotImplementedError(
                f"{self!r}: in training the batch's mean and variance couple the examples, so "
                "per-example gradients are undefined; use eval_mode(model) with its state"
            )
        return {"scale": _per_example_sum(dy * residuals[0]), "bias": _per_example_sum(dy)}

    def _running(self, old: Array, batch: Array) -> Array:
        # Kept in the state's dtype, so a training scan's carry keeps its type.
        return (self.momentum * old + (1 - self.momentum) * batch).astype(old.dtype)
