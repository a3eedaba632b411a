"""Quantities beyond the gradient, each by the hand-written rules: per-example gradients and
their norms, the gradient's variance and the sum of squared per-example gradients; curvature
(Hessian- and GGN-vector products, the diagonal GGN, K-FAC factors); DP-SGD in one pass.

C = mean_i L_i; a per-example gradient is grad L_i (no 1/m). Each function is called like
`jaxbp.backprop`: f(model, loss, params, x, y, *, key=None, state=None, ...).
"""

from __future__ import annotations

from jaxbp.quantities.curvature import diag_ggn, diag_ggn_mc, ggn_vp, hvp, kfac_factors
from jaxbp.quantities.dp import DPSGD, dp_sgd
from jaxbp.quantities.first_order import (
    grad_variance,
    per_example_grads,
    per_example_norms,
    sum_grad_squared,
)

__all__ = [
    "per_example_grads", "per_example_norms", "grad_variance", "sum_grad_squared", "diag_ggn",
    "diag_ggn_mc", "kfac_factors", "hvp", "ggn_vp", "dp_sgd", "DPSGD",
]  # fmt: skip
