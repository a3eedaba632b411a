"""Losses: the cost C and its hand-written derivative dC/dy_pred, the first factor of backprop.

The protocol, stated once. A loss is an immutable object with three pure methods:

    forward(y_pred, y) -> (value, residuals)
        value is the cost C: the mean over the batch of per-example losses L_i.
    backward(residuals, g=1.0) -> dy_pred
        g * dC/dy_pred, with the shape and dtype of y_pred.
    apply(y_pred, y) -> value
        forward(...)[0].

Optional, for curvature (jaxbp's diag_ggn, diag_ggn_mc, kfac_factors). The Hessian
d2C/dy_pred2 of each built-in loss is block diagonal, one (k, k) block per position (k: the last
axis; positions: the axes before it, the batch's included):

    hessian_sqrt(y_pred, y) -> S: (*y_pred.shape, k)
        S[..., :, c] is column c of a square root of the position's block: sum_c s_c s_c^T = block.
    hessian_sqrt_sample(y_pred, y, key) -> s: y_pred.shape
        A random cotangent with E[s s^T] = d2C/dy_pred2 (Monte Carlo: the gradient of C at a
        label drawn from the model's own predictive distribution, positions independent).

Optional, what a loss knows of its targets (read by jaxbp.check and fit):

    targets: str
        How the checker draws targets: "normal", "unit" (in [0, 1]), "labels" or "probs".
    scorer(y) -> None, or accuracy(y_pred, y) -> the fraction right
        Whether these targets (NumPy, values known) have a right or wrong answer, and how to
        count it.

The typed protocol is `jaxbp.protocols.Loss`, the built-ins' base (it supplies `apply`).
Shapes are validated at trace time: nothing is broadcast silently ((m, 1) against (m,) raises).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._types import Array
from jaxbp.protocols import Loss

__all__ = [
    "Loss", "MSE", "BinaryCrossEntropy", "SoftmaxCrossEntropy", "mse", "binary_cross_entropy",
    "softmax_cross_entropy", "LOSSES", "get",
]  # fmt: skip


def _check_pred(loss: Loss, y_pred: Array) -> None:
    if not hasattr(y_pred, "shape") or not jnp.issubdtype(y_pred.dtype, jnp.floating):
        raise TypeError(f"{loss!r}: y_pred must be a floating-point array, got {y_pred!r:.80}")
    if y_pred.ndim < 1 or y_pred.shape[0] == 0:
        raise ValueError(
            f"{loss!r}: y_pred needs a non-empty batch axis, got {tuple(y_pred.shape)}"
        )


def _check_same_shape(loss: Loss, y_pred: Array, y: Array) -> None:
    _check_pred(loss, y_pred)
    if not hasattr(y, "shape"):
        raise TypeError(f"{loss!r}: y must be an array, got {type(y).__name__}")
    if tuple(y.shape) != tuple(y_pred.shape):
        raise ValueError(
            f"{loss!r}: y has shape {tuple(y.shape)} but y_pred has shape {tuple(y_pred.shape)}; "
            "they must match exactly (nothing is broadcast)"
        )


def _concrete(y: Array) -> np.ndarray | None:
    """y's values when they are known now (not traced), so value checks can run early."""
    try:
        return np.asarray(y)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


@dataclasses.dataclass(frozen=True)
class MSE(Loss):
    r"""Half squared error: L_i = 1/2 ||y_i - y'_i||^2, C = mean_i L_i; dC/dy'_i = (y'_i - y_i)/m.

    Note the sign: dL/dy' = y' - y (the usual write-up of step 2 drops the minus from y - y').

    **Forward.** With $\hat y$ = `y_pred`, $y$ the targets (same shape) and $m$ the batch size
    (axis 0; $L_i$ sums over every other axis):

    $$
    C = \frac1m \sum_i L_i, \qquad L_i = \tfrac12 \lVert \hat y_i - y_i \rVert^2
    $$

    **Backward.** `backward(residuals, g)` returns $g\, \partial C/\partial \hat y$:

    $$
    \mathrm{d}\hat y = \frac{g}{m} (\hat y - y)
    $$

    **Residuals.** $\hat y - y$. The instance is `jaxbp.losses.mse`.
    """

    targets = "normal"

    def __repr__(self):
        return "mse"

    def scorer(self, y):
        """Targets all 0 or 1 (the seed's XOR) are right where y' falls on their side of 1/2."""
        if not np.isin(y, (0, 1)).all():
            return None
        return lambda y_pred, y: jnp.mean((y_pred > 0.5) == (y > 0.5))

    def forward(self, y_pred, y):
        _check_same_shape(self, y_pred, y)
        diff = y_pred - y.astype(y_pred.dtype)
        return 0.5 * jnp.sum(diff * diff) / y_pred.shape[0], diff

    def backward(self, diff, g=1.0):
        return (g / diff.shape[0]) * diff

    def hessian_sqrt(self, y_pred, y):
        """d2C/dy'2 = I/m: each block's root is I/sqrt(m)."""
        _check_same_shape(self, y_pred, y)
        eye = jnp.eye(y_pred.shape[-1], dtype=y_pred.dtype)
        return jnp.broadcast_to(eye, (*y_pred.shape, y_pred.shape[-1])) / math.sqrt(y_pred.shape[0])

    def hessian_sqrt_sample(self, y_pred, y, key):
        """s = (y' - y~)/sqrt(m), y~ ~ N(y', I): s = e/sqrt(m), e standard normal."""
        _check_same_shape(self, y_pred, y)
        e = jax.random.normal(key, y_pred.shape, y_pred.dtype)
        return e / math.sqrt(y_pred.shape[0])


@dataclasses.dataclass(frozen=True)
class BinaryCrossEntropy(Loss):
    r"""Binary cross-entropy on logits z: L_i = sum_j softplus(z_ij) - y_ij z_ij;
    dC/dz = (s(z)-y)/m.

    Targets y in [0, 1], same shape as z; L_i sums over the outputs of example i.

    **Forward.** With $z$ the logits, targets $y \in [0, 1]$ of the same shape, $m$ the batch size
    and $\sigma$ the sigmoid:

    $$
    C = \frac1m \sum_{i,j} \bigl(\mathrm{softplus}(z_{ij}) - y_{ij} z_{ij}\bigr)
    $$

    which equals the usual form

    $$
    C = -\frac1m \sum_{i,j} \bigl(y_{ij} \log \sigma(z_{ij})
        + (1 - y_{ij}) \log(1 - \sigma(z_{ij}))\bigr)
    $$

    The first form is what the code computes: `softplus` is finite for every $z$, where
    $\log \sigma(z)$ of a probability would not be.

    **Backward.** $g\, \partial C/\partial z$:

    $$
    \mathrm{d}z = \frac{g}{m} \bigl(\sigma(z) - y\bigr)
    $$

    **Residuals.** $\sigma(z) - y$. The instance is `jaxbp.losses.binary_cross_entropy`.
    """

    targets = "unit"

    def __repr__(self):
        return "binary_cross_entropy"

    def scorer(self, y):
        """Right where the logit's sign is the side of 1/2 the target is on."""
        return lambda z, y: jnp.mean((z > 0) == (y > 0.5))

    def forward(self, z, y):
        _check_same_shape(self, z, y)
        values = _concrete(y)
        if values is not None and values.size and (values.min() < 0 or values.max() > 1):
            raise ValueError(
                f"{self!r}: targets must lie in [0, 1], got [{values.min()}, {values.max()}]"
            )
        y = y.astype(z.dtype)
        value = jnp.sum(jax.nn.softplus(z) - y * z) / z.shape[0]
        return value, jax.nn.sigmoid(z) - y

    def backward(self, err, g=1.0):
        return (g / err.shape[0]) * err

    def hessian_sqrt(self, z, y):
        """d2C/dz2 = diag(s(z)(1 - s(z)))/m: each block's root is diag(sqrt(s(1 - s)/m))."""
        _check_same_shape(self, z, y)
        root = jnp.sqrt(jax.nn.sigmoid(z) * jax.nn.sigmoid(-z) / z.shape[0])
        return root[..., None] * jnp.eye(z.shape[-1], dtype=z.dtype)

    def hessian_sqrt_sample(self, z, y, key):
        """s = (s(z) - b)/sqrt(m), b ~ Bernoulli(s(z)) per output: E[s^2] = s(1 - s)/m."""
        _check_same_shape(self, z, y)
        p = jax.nn.sigmoid(z)
        b = jax.random.bernoulli(key, p).astype(z.dtype)
        return (p - b) / math.sqrt(z.shape[0])


@dataclasses.dataclass(frozen=True)
class SoftmaxCrossEntropy(Loss):
    r"""Softmax cross-entropy on logits z: (m, ..., k), over the last axis.

    Labels as integer classes (m, ...): L_i = -log p_i[y_i], dC/dz = (p - onehot(y))/N;
    as probability rows (m, ..., k): L_i = -sum_j y_ij log p_ij, dC/dz = (p sum_j y_ij - y)/N.
    C is the mean over every position, N = m times the middle axes' sizes (a sequence model's
    C is the mean over batch and time); for (m, k) logits, N = m.

    **Forward.** With $p = \mathrm{softmax}(z)$ over the last axis (computed as
    `exp(log_softmax(z))`) and $N$ the number of positions (every axis but the last):

    $$
    \text{labels } y_i \in \{0, \dots, k-1\}: \quad C = -\frac1N \sum_i \log p_{i, y_i}
    $$

    $$
    \text{rows } y_i: \quad C = -\frac1N \sum_{i,j} y_{ij} \log p_{ij}
    $$

    **Backward.** $g\, \partial C/\partial z$:

    $$
    \text{labels:}\quad \mathrm{d}z = \frac{g}{N} \bigl(p - \mathrm{onehot}(y)\bigr)
    $$

    $$
    \text{rows:}\quad \mathrm{d}z_i = \frac{g}{N} \Bigl(p_i \sum_j y_{ij} - y_i\Bigr)
    $$

    (rows that sum to 1 give $p - y$).

    **Residuals.** $(p,\ t,\ \mathrm{mass})$: $t$ the one-hot labels or the rows $y$, mass
    $= \sum_j y_{ij}$ for rows, `None` for labels. The instance is
    `jaxbp.losses.softmax_cross_entropy`.
    """

    targets = "labels"

    def __repr__(self):
        return "softmax_cross_entropy"

    def scorer(self, y):
        """Right where the largest logit is the label's class (a probability row's largest)."""
        if np.issubdtype(np.asarray(y).dtype, np.integer):
            return lambda z, y: jnp.mean(jnp.argmax(z, -1) == y)
        return lambda z, y: jnp.mean(jnp.argmax(z, -1) == jnp.argmax(y, -1))

    def forward(self, z, y):
        self._check(z, y)
        logp = jax.nn.log_softmax(z, axis=-1)
        if jnp.issubdtype(y.dtype, jnp.integer):
            target = jax.nn.one_hot(y, z.shape[-1], dtype=z.dtype)
            mass = None
        else:
            target = y.astype(z.dtype)
            mass = jnp.sum(target, axis=-1, keepdims=True)
        value = -jnp.sum(target * logp) / _positions(z)
        return value, (jnp.exp(logp), target, mass)

    def backward(self, residuals, g=1.0):
        p, target, mass = residuals
        grad = p - target if mass is None else p * mass - target
        return (g / _positions(p)) * grad

    def hessian_sqrt(self, z, y):
        """Block mass/N (diag p - p p^T), mass = sum_j y_j (1 for class labels); its root
        sqrt(mass/N) (diag sqrt(p) - p sqrt(p)^T): column c is sqrt(p_c) (e_c - p)."""
        p, scale = self._curvature_terms(z, y)
        eye = jnp.eye(z.shape[-1], dtype=z.dtype)
        return scale[..., None] * (eye - p[..., :, None]) * jnp.sqrt(p)[..., None, :]

    def hessian_sqrt_sample(self, z, y, key):
        """s = sqrt(mass/N) (p - onehot(c)), c ~ Categorical(p) per position: E[s s^T] = block."""
        p, scale = self._curvature_terms(z, y)
        c = jax.random.categorical(key, z, axis=-1)  # z: the logits of p
        return scale * (p - jax.nn.one_hot(c, z.shape[-1], dtype=z.dtype))

    def _curvature_terms(self, z, y):
        """p = softmax(z) and sqrt(mass/N), (..., 1), which scales the Hessian's root."""
        self._check(z, y)
        p = jax.nn.softmax(z, axis=-1)
        if jnp.issubdtype(y.dtype, jnp.integer):
            mass = jnp.ones((*z.shape[:-1], 1), z.dtype)
        else:
            mass = jnp.sum(y.astype(z.dtype), axis=-1, keepdims=True)
        return p, jnp.sqrt(mass / _positions(z))

    def _check(self, z, y):
        _check_pred(self, z)
        if z.ndim < 2:
            raise ValueError(
                f"{self!r}: logits must have shape (batch, ..., classes), got {tuple(z.shape)}"
            )
        if not hasattr(y, "dtype"):
            raise TypeError(f"{self!r}: labels must be an array, got {type(y).__name__}")
        if jnp.issubdtype(y.dtype, jnp.integer):
            if tuple(y.shape) != z.shape[:-1]:
                raise ValueError(
                    f"{self!r}: integer labels must have shape {z.shape[:-1]} for logits "
                    f"{tuple(z.shape)}, got {tuple(y.shape)}"
                )
            values = _concrete(y)
            if (
                values is not None
                and values.size
                and (values.min() < 0 or values.max() >= z.shape[-1])
            ):
                raise ValueError(
                    f"{self!r}: labels must lie in [0, {z.shape[-1] - 1}] for {z.shape[-1]} "
                    f"classes, got [{values.min()}, {values.max()}]"
                )
        elif jnp.issubdtype(y.dtype, jnp.floating):
            if tuple(y.shape) != tuple(z.shape):
                hint = (
                    " (float labels of shape (m,)? class labels must be integers)"
                    if y.ndim == z.ndim - 1
                    else ""
                )
                raise ValueError(
                    f"{self!r}: probability rows must have the logits' shape {tuple(z.shape)}, "
                    f"got {tuple(y.shape)}{hint}"
                )
        else:
            raise TypeError(
                f"{self!r}: labels must be integers or float probability rows, got {y.dtype}"
            )


def _positions(z: Array) -> int:
    """How many predictions the mean runs over: every axis but the last (classes)."""
    return z.size // z.shape[-1]


mse = MSE()
"""Half squared error, C = mean_i 1/2 ||y'_i - y_i||^2: the instance of `MSE`."""
binary_cross_entropy = BinaryCrossEntropy()
"""Binary cross-entropy on logits: the instance of `BinaryCrossEntropy`."""
softmax_cross_entropy = SoftmaxCrossEntropy()
"""Softmax cross-entropy on logits, integer labels or probability rows: the instance of
`SoftmaxCrossEntropy`."""

LOSSES: dict[str, Loss] = {
    "mse": mse, "binary_cross_entropy": binary_cross_entropy,
    "softmax_cross_entropy": softmax_cross_entropy,
}  # fmt: skip


def get(name: str) -> Loss:
    """The built-in loss called `name`."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSSES)}")
    return LOSSES[name]
