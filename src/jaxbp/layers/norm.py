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
    r"""LayerNorm: y = xhat scale + bias, xhat = (x - mean) rstd, rstd = 1/sqrt(var + eps);
    dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy scale (mean, var over the last axis).

    dscale = sum dy xhat, dbias = sum dy (sums over every axis but the last).
    x: (batch, ..., C). Residuals: xhat (batch, ..., C), rstd (batch, ..., 1).

    **Forward.** Over the last axis (the $C$ channels of each position), $\epsilon$ = `eps`,
    $\gamma$ = `scale`, $\beta$ = `bias`:

    $$
    \mu = \frac1C \sum_c x_c, \quad
    \sigma^2 = \frac1C \sum_c (x_c - \mu)^2, \quad
    r = \frac{1}{\sqrt{\sigma^2 + \epsilon}}
    $$

    $$
    \hat x = (x - \mu)\, r, \qquad
    y = \hat x \odot \gamma + \beta
    $$

    (the code subtracts the row's first entry before taking $\mu$: exact, as it cancels, and it
    keeps a large common offset from eating float32 digits).

    **Backward.** With $g = \mathrm{d}y \odot \gamma$ and $\overline{v}$ the mean of $v$ over the
    last axis:

    $$
    \mathrm{d}x = r \bigl(g - \overline{g} - \hat x\, \overline{g \odot \hat x}\bigr), \qquad
    \mathrm{d}\gamma = \sum_n \mathrm{d}y_n \odot \hat x_n, \qquad
    \mathrm{d}\beta = \sum_n \mathrm{d}y_n
    $$

    the sums running over every axis but the last. The two subtracted terms are the paths through
    $\mu$ and through $\sigma^2$.

    **Shapes.** $x$, $y$: `(batch, ..., C)`; $\gamma$, $\beta$: `(C,)`, from ones and zeros.

    **Residuals.** $\hat x$ `(batch, ..., C)` and $r$ `(batch, ..., 1)`.
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
    r"""RMSNorm: y = xhat scale, xhat = x rrms, rrms = 1/sqrt(mean(x^2) + eps);
    dx = rrms (g - xhat mean(g xhat)), g = dy scale (mean over the last axis).

    dscale = sum dy xhat (over every axis but the last).
    x: (batch, ..., C). Residuals: xhat (batch, ..., C), rrms (batch, ..., 1).

    **Forward.** Over the last axis, $\epsilon$ = `eps`, $\gamma$ = `scale` (no bias, no centring):

    $$
    r = \frac{1}{\sqrt{\frac1C \sum_c x_c^2 + \epsilon}}, \qquad \hat x = x\, r, \qquad
    y = \hat x \odot \gamma
    $$

    **Backward.** With $g = \mathrm{d}y \odot \gamma$ and $\overline{v}$ the mean over the last
    axis:

    $$
    \mathrm{d}x = r \bigl(g - \hat x\, \overline{g \odot \hat x}\bigr), \qquad
    \mathrm{d}\gamma = \sum_n \mathrm{d}y_n \odot \hat x_n
    $$

    the sum running over every axis but the last.

    **Shapes.** $x$, $y$: `(batch, ..., C)`; $\gamma$: `(C,)`, from ones.

    **Residuals.** $\hat x$ `(batch, ..., C)` and $r$ `(batch, ..., 1)`.
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
    r"""BatchNorm: y = xhat scale + bias, xhat = (x - mean) rstd, rstd = 1/sqrt(var + eps);
    training: dx = rstd/N (N g - sum g - xhat sum(g xhat)), g = dy scale; evaluation: dx = g rstd.

    mean, var and the sums run over every axis but the last (N values per channel): the batch's
    in training (they depend on x, hence the two extra terms), the running ones in evaluation
    (constants). dscale = sum dy xhat, dbias = sum dy.

    x: (batch, ..., C). Residuals: xhat (batch, ..., C), rstd (C,).
    State {"mean": (C,), "var": (C,)}, from zeros and ones; a training step moves it to
    momentum * state + (1 - momentum) * the batch's statistic, the variance being the biased
    one (divided by N, the one that normalised the batch), as Flax keeps it (PyTorch keeps the
    unbiased one). forward (no state) works in training only.

    **Forward, training.** Per channel $c$, over the $N$ values of every axis but the last (the
    batch, and the positions of an image), $\epsilon$ = `eps`, $\gamma$ = `scale`, $\beta$ = `bias`:

    $$
    \mu_c = \frac1N \sum_n x_{n,c}, \quad
    \sigma^2_c = \frac1N \sum_n (x_{n,c} - \mu_c)^2, \quad
    r_c = \frac{1}{\sqrt{\sigma^2_c + \epsilon}}
    $$

    $$
    \hat x = (x - \mu)\, r, \qquad
    y = \hat x \odot \gamma + \beta
    $$

    and the state moves: $\mathrm{mean} \leftarrow m\,\mathrm{mean} + (1 - m)\,\mu$,
    $\mathrm{var} \leftarrow m\,\mathrm{var} + (1 - m)\,\sigma^2$, $m$ = `momentum`.

    **Forward, evaluation** (`train=False`). The running statistics, constants:
    $\hat x = (x - \mathrm{mean})\, r$, $r = 1/\sqrt{\mathrm{var} + \epsilon}$; the state is
    unchanged.

    **Backward.** With $g = \mathrm{d}y \odot \gamma$ and the sums over the $N$ values of each
    channel:

    $$
    \text{training:}\quad
    \mathrm{d}x = \frac{r}{N} \Bigl(N g - \sum_n g_n - \hat x \sum_n g_n \odot \hat x_n\Bigr),
    \qquad
    \text{evaluation:}\quad \mathrm{d}x = g\, r
    $$

    $$
    \mathrm{d}\gamma = \sum_n \mathrm{d}y_n \odot \hat x_n, \qquad
    \mathrm{d}\beta = \sum_n \mathrm{d}y_n
    $$

    In training every output depends on every example through $\mu$ and $\sigma^2$: hence the two
    extra terms, and `examples_independent` is False.

    **Shapes.** $x$, $y$: `(batch, ..., C)`; $\gamma$, $\beta$, and the state's mean and var:
    `(C,)`.

    **Residuals.** $\hat x$ `(batch, ..., C)` and $r$ `(C,)`.
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
