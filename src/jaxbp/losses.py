"""Losses: the cost C and its hand-written derivative dC/dy_pred, the first factor of backprop.

The protocol, stated once. A loss is an immutable object with three pure methods:

    forward(y_pred, y) -> (value, residuals)
        value is the cost C: the mean over the batch of per-example losses L_i.
    backward(residuals, g=1.0) -> dy_pred
        g * dC/dy_pred, with the shape and dtype of y_pred.
    apply(y_pred, y) -> value
        forward(...)[0].

Shapes are validated at trace time: nothing is broadcast silently ((m, 1) against (m,) raises).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._types import Array

__all__ = [
    "Loss", "MSE", "BinaryCrossEntropy", "SoftmaxCrossEntropy", "mse", "binary_cross_entropy",
    "softmax_cross_entropy", "LOSSES", "get",
]  # fmt: skip


class Loss:
    """Base for the built-in losses: supplies `apply` and a short name."""

    def apply(self, y_pred: Array, y: Array) -> Array:
        return self.forward(y_pred, y)[0]


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
    """Half squared error: L_i = 1/2 ||y_i - y'_i||^2, C = mean_i L_i; dC/dy'_i = (y'_i - y_i)/m.

    Note the sign: dL/dy' = y' - y (the usual write-up of step 2 drops the minus from y - y').
    """

    def __repr__(self):
        return "mse"

    def forward(self, y_pred, y):
        _check_same_shape(self, y_pred, y)
        diff = y_pred - y.astype(y_pred.dtype)
        return 0.5 * jnp.sum(diff * diff) / y_pred.shape[0], diff

    def backward(self, diff, g=1.0):
        return (g / diff.shape[0]) * diff


@dataclasses.dataclass(frozen=True)
class BinaryCrossEntropy(Loss):
    """Binary cross-entropy on logits z: L_i = sum_j softplus(z_ij) - y_ij z_ij; dC/dz = (s(z)-y)/m.

    Targets y in [0, 1], same shape as z; L_i sums over the outputs of example i.
    """

    def __repr__(self):
        return "binary_cross_entropy"

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


@dataclasses.dataclass(frozen=True)
class SoftmaxCrossEntropy(Loss):
    """Softmax cross-entropy on logits z: (m, ..., k), over the last axis.

    Labels as integer classes (m, ...): L_i = -log p_i[y_i], dC/dz = (p - onehot(y))/N;
    as probability rows (m, ..., k): L_i = -sum_j y_ij log p_ij, dC/dz = (p sum_j y_ij - y)/N.
    C is the mean over every position, N = m times the middle axes' sizes (a sequence model's
    C is the mean over batch and time); for (m, k) logits, N = m.
    """

    def __repr__(self):
        return "softmax_cross_entropy"

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
binary_cross_entropy = BinaryCrossEntropy()
softmax_cross_entropy = SoftmaxCrossEntropy()

LOSSES: dict[str, Loss] = {
    "mse": mse, "binary_cross_entropy": binary_cross_entropy,
    "softmax_cross_entropy": softmax_cross_entropy,
}  # fmt: skip


def get(name: str) -> Loss:
    """The built-in loss called `name`."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSSES)}")
    return LOSSES[name]
