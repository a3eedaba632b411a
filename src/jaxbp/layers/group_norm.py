"""GroupNorm (Wu and He 2018): each example's channels in groups, normalised over a group's
positions and channels together; statistics never cross examples, so it works at batch size 1
and its per-example gradients are defined (BatchNorm's are not, in training)."""

from __future__ import annotations

import dataclasses
from numbers import Integral

import jax.numpy as jnp
from jax import lax

from jaxbp._types import Array, Params, PRNGKey, Shape
from jaxbp.layers._base import check_input
from jaxbp.layers._normalise import (
    affine_params,
    channels,
    check_options,
    check_vectors,
    per_example_sum,
)  # fmt: skip
from jaxbp.protocols import Layer


def _grouped(a: Array, groups: int) -> Array:
    """(batch, *spatial, C) -> (batch, P, G, C/G), P = prod(spatial): a group is [b, :, g, :]."""
    return a.reshape(a.shape[0], -1, groups, a.shape[-1] // groups)


def _group_mean(a: Array) -> Array:
    """(batch, P, G, C/G) -> (batch, 1, G, 1): the mean over each example's group."""
    return jnp.mean(a, axis=(1, 3), keepdims=True)


@dataclasses.dataclass(frozen=True)
class GroupNorm(Layer):
    r"""GroupNorm: y = xhat scale + bias, xhat = (x - mean) rstd, rstd = 1/sqrt(var + eps);
    dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy scale (means over each example's group).

    A group is one example's N = prod(spatial) C/G values of C/G adjacent channels; mean and
    var (biased) are taken over it. dscale = sum dy xhat, dbias = sum dy (sums over every axis
    but the last). G = 1 is LayerNorm over all of an example's axes; G = C is InstanceNorm.
    x: (batch, *spatial, C), C divisible by num_groups. Residuals: xhat (batch, *spatial, C),
    rstd (batch, G). Params {"scale": (C,), "bias": (C,)}, from ones and zeros.

    **Forward.** $x$ `(batch, *spatial, C)` is split into $G$ = `num_groups` groups of $C/G$
    adjacent channels; for example $b$ and group $k$, the statistics run over its
    $N = P\,C/G$ values ($P$ = prod(spatial)):

    $$
    \mu_{b,k} = \frac1N \sum_{p,\,c \in k} x_{b,p,c}, \qquad
    \sigma^2_{b,k} = \frac1N \sum_{p,\,c \in k} (x_{b,p,c} - \mu_{b,k})^2
    $$

    $$
    r_{b,k} = \frac{1}{\sqrt{\sigma^2_{b,k} + \epsilon}}, \qquad
    \hat x_{b,p,c} = (x_{b,p,c} - \mu_{b,k})\, r_{b,k} \quad (c \in k), \qquad
    y = \hat x \odot \gamma + \beta
    $$

    **Backward.** With $g = \mathrm{d}y \odot \gamma$ and $\overline{v}$ the mean of $v$ over each
    example's group:

    $$
    \mathrm{d}x = r \bigl(g - \overline{g} - \hat x\, \overline{g \odot \hat x}\bigr)
    $$

    $$
    \mathrm{d}\gamma = \sum_{b,p} \mathrm{d}y_{b,p} \odot \hat x_{b,p}, \qquad
    \mathrm{d}\beta = \sum_{b,p} \mathrm{d}y_{b,p}
    $$

    LayerNorm's rule, over a group instead of a row.

    **Shapes.** $\gamma$, $\beta$: `(C,)`. **Residuals.** $\hat x$ `(batch, *spatial, C)` and $r$
    `(batch, G)`.
    """

    num_groups: int
    eps: float = 1e-5
    examples_independent = True  # statistics over each example's own groups

    def __post_init__(self):
        G = self.num_groups
        if isinstance(G, bool) or not isinstance(G, Integral) or G < 1:
            raise ValueError(f"GroupNorm: num_groups must be a positive int, got {G!r}")
        check_options(self, eps=self.eps)  # a constant group has variance 0: eps > 0

    def init(self, key: PRNGKey, input_shape: Shape) -> tuple[Shape, Params]:
        if len(input_shape) < 1:
            raise ValueError(f"{self!r}: input shape must be (..., C), got {tuple(input_shape)}")
        return tuple(input_shape), affine_params(self._channels(channels(self, input_shape)))

    def forward(self, params, x, *, key=None):
        check_input(self, x)
        self._channels(x.shape[-1])
        check_vectors(self, params, ("scale", "bias"), x)
        xg = _grouped(x, self.num_groups)
        # Subtracting one sample of the group first (exact: it cancels in x - mean) centres a
        # constant group to exactly 0 and keeps a large offset from eating float32 digits.
        d = xg - xg[:, :1, :, :1]
        xc = d - _group_mean(d)
        rstd = lax.rsqrt(_group_mean(xc * xc) + self.eps)
        xhat = (xc * rstd).reshape(x.shape)
        return xhat * params["scale"] + params["bias"], (xhat, rstd[:, 0, :, 0])

    def backward(self, params, residuals, dy):
        xhat, rstd = residuals
        g, xh = _grouped(dy * params["scale"], self.num_groups), _grouped(xhat, self.num_groups)
        dx = rstd[:, None, :, None] * (g - _group_mean(g) - xh * _group_mean(g * xh))
        dparams = {"scale": per_example_sum(dy * xhat).sum(0), "bias": per_example_sum(dy).sum(0)}
        return dparams, dx.reshape(dy.shape)

    def per_example_grads(self, params, residuals, dy):
        """Optional rule (jaxbp.quantities): dscale_i = sum dy_i xhat_i, dbias_i = sum dy_i
        (over example i's positions): (batch, C) each."""
        return {"scale": per_example_sum(dy * residuals[0]), "bias": per_example_sum(dy)}

    def _channels(self, C: int) -> int:
        if C % self.num_groups:
            raise ValueError(
                f"{self!r}: C = {C} channels do not split into num_groups = {self.num_groups} "
                "equal groups (C must be divisible by num_groups)"
            )
        return C
