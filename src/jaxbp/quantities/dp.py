"""DP-SGD (Abadi et al. 2016) in one backward pass: every example's gradient clipped, then noised.

    g_i = grad L_i,   c_i = min(1, C / ||g_i||),   g = (sum_i w_i c_i g_i + N(0, sigma^2 C^2 I)) / b

w_i in {0, 1} marks the examples the step sampled (Poisson: each joins with probability q, so
fit's batch has a fixed capacity and a mask), b the expected batch size q n.

Book-keeping (Bu et al. 2023): one forward and one backward sweep keep each leaf layer's input
x and delta dy = dC/d(output); per-example norms come from them (a Dense layer's ||g_i||^2 =
||x_i||^2 ||dy_i||^2 + ||dy_i||^2, nothing of (batch, in, out) size), and every parameter
gradient is then taken once, from re-weighted deltas: dW = x^T (c * dy). No per-example gradient
is kept and no second sweep runs: under jit XLA drops the unclipped dW, which nothing reads, so
the step does backprop's matrix products plus the norms and the noise.

A parameter that two layers read (`Tied`) gets the sum of two per-example gradients, whose norm
the leaves' norms cannot give; such a model (any whose combinators do not all declare
params_disjoint, checked by `_leaves.owns_params`) pays for exact per-example gradients of
every leaf, assembled into the params tree.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp

from jaxbp import _threefry, privacy
from jaxbp._types import Array, Grads, Params, PRNGKey
from jaxbp.protocols import State
from jaxbp.quantities import _leaves
from jaxbp.quantities._leaves import assemble, check_supported, each_leaf, owns_params, record
from jaxbp.walk import Trace

__all__ = ["DPSGD", "dp_sgd", "clip_factors", "per_example_norms_of", "clipped_sum"]


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, like a function
class DPSGD:
    """A DP-SGD gradient engine: backprop's signature, fit(grad=...) takes it.

    sampling = "poisson" tells fit to draw each step's examples by Poisson sampling, as the
    accountant assumes, and to pass weights= (the mask) and expected_size= (b).
    """

    clip_norm: float
    noise_multiplier: float
    delta: float | None = 1e-5
    accountant: str = "rdp"
    sampling = "poisson"

    def __repr__(self) -> str:
        return f"dp_sgd(clip_norm={self.clip_norm:g}, noise_multiplier={self.noise_multiplier:g})"

    def __call__(
        self, model: Any, loss: Any, params: Params, x: Array, y: Array, *,
        key: PRNGKey | None = None, state: State = None, weights: Array | None = None,
        expected_size: float | None = None,
    ) -> tuple:  # fmt: skip
        """(value, grads) like backprop, grads being the noisy clipped mean above; with
        state=..., (value, grads, new_state). value is the mean loss of the weighted examples.

        weights: (batch,) in [0, 1], default all ones; expected_size: b, default the batch's
        rows. key: required when noise_multiplier > 0 (the noise, and the model's Dropout).
        """
        value, grads, stats = self.with_stats(
            model, loss, params, x, y, key=key, state=state, weights=weights,
            expected_size=expected_size,
        )  # fmt: skip
        return (value, grads) if state is None else (value, grads, stats["state"])

    def with_stats(
        self, model: Any, loss: Any, params: Params, x: Array, y: Array, *,
        key: PRNGKey | None = None, state: State = None, weights: Array | None = None,
        expected_size: float | None = None,
    ) -> tuple[Array, Grads, dict]:  # fmt: skip
        """(value, grads, stats): stats["norms"] the per-example gradient norms (batch,),
        stats["clipped"] the fraction of weighted examples whose norm exceeded C,
        stats["noise"] the noise added before dividing by b, stats["state"] the new state."""
        if key is None and self.noise_multiplier > 0:
            raise ValueError(f"{self!r} adds Gaussian noise: pass key= (fit passes one per step)")
        forward_key, noise_key = (None, None) if key is None else jax.random.split(key)
        check_supported(model, "clipped per-example gradients")  # before any work
        rec = record(model, loss, params, x, y, key=forward_key, state=state)
        w = _weights(weights, rec.batch, rec.dy_pred.dtype)
        norms = per_example_norms_of(model, params, rec)
        total = clipped_sum(model, params, rec, w * clip_factors(norms, self.clip_norm))
        noise = _gaussian_like(noise_key, total, self.noise_multiplier * self.clip_norm)
        b = rec.batch if expected_size is None else _positive("expected_size", expected_size)
        grads = jax.tree.map(lambda s, z: (s + z) / b, total, noise)
        value = rec.value if weights is None else _weighted_value(loss, rec.y_pred, y, w)
        counted = jnp.maximum(jnp.sum(w), 1)
        clipped = jnp.sum(w * (norms > self.clip_norm)) / counted
        stats = {"norms": norms, "clipped": clipped, "noise": noise, "state": rec.state}
        return value, grads, stats

    def epoch_metrics(self, *, steps: int, n: int, batch_size: int) -> dict[str, float]:
        """fit's hook after each epoch: the epsilon spent by `steps` steps of expected size
        batch_size out of n examples, at this engine's delta ({} without delta or noise)."""
        if self.delta is None or self.noise_multiplier == 0:
            return {}
        q = min(batch_size / n, 1.0)
        sigma, account = self.noise_multiplier, self.accountant
        return {"epsilon": privacy.epsilon(steps, q, sigma, self.delta, accountant=account)}


def dp_sgd(
    clip_norm: float,
    noise_multiplier: float,
    *,
    delta: float | None = 1e-5,
    accountant: str = "rdp",
) -> DPSGD:
    """A DP-SGD gradient engine for fit(grad=...): clip each example's gradient to norm
    clip_norm C, add N(0, (noise_multiplier * C)^2) to each coordinate of the sum, divide by the
    expected batch size. fit samples its batches by Poisson sampling for it and, with delta
    (None: no accounting), adds history["epsilon"] per epoch from dp-accounting's `accountant`
    ("rdp" or "pld"). noise_multiplier 0 clips without noise: no privacy, no epsilon.
    """
    C = _positive("clip_norm", clip_norm)
    sigma = _number("noise_multiplier", noise_multiplier)
    if sigma < 0:
        raise ValueError(f"dp_sgd: noise_multiplier must be >= 0, got {sigma}")
    if delta is not None:
        d = _number("delta", delta)
        if not 0 < d < 1:
            raise ValueError(f"dp_sgd: delta must be in (0, 1), got {d}")
        if accountant not in privacy.ACCOUNTANTS:
            valid = ", ".join(privacy.ACCOUNTANTS)
            raise ValueError(f"dp_sgd: unknown accountant {accountant!r}; valid: {valid}")
        privacy.require_dp_accounting()  # now, not after the first epoch has trained
        delta = d
    return DPSGD(C, sigma, delta, accountant)


# ---------------------------------------------------------------------------------------------
# The three pieces: norms from the kept deltas, clip factors, one weighted backward per leaf


def per_example_norms_of(model: Any, params: Params, rec: Trace) -> Array:
    """||grad L_i|| over all params, (batch,), from the recording: sqrt of the sum of the leaves'
    squared norms, times m (the deltas carry C's 1/m); exact per-example gradients assembled
    into the params tree where the leaves do not each own their params (their norms do not
    add: Tied, or any combinator that does not declare params_disjoint)."""
    if owns_params(model, params, rec):
        sq = sum(each_leaf(rec, _leaves.leaf_sq_norms).values())
    else:
        grads = each_leaf(rec, _leaves.leaf_per_example_grads)
        tree = assemble(model, params, rec, grads, rec.dy_pred, batched=True, through=True)
        sq = _leaves.sq_norms_per_example(tree)
    return rec.batch * jnp.sqrt(sq)


def clip_factors(norms: Array, clip_norm: float) -> Array:
    """c_i = min(1, C / ||g_i||), written C / max(||g_i||, C): 1 at a zero gradient, no 0/0."""
    return clip_norm / jnp.maximum(norms, clip_norm)


def clipped_sum(model: Any, params: Params, rec: Trace, w: Array) -> Grads:
    """sum_i w_i grad L_i, params-shaped: each leaf's backward on its delta re-weighted by m w_i
    (m undoes C's 1/m), placed in the params tree by the model's own walk, whose cotangent is
    weighted the same way for a combinator with params of its own."""
    scale = rec.batch * w

    def weighted(path, layer, params, x_in, delta, residuals):
        return _leaves.leaf_weighted_grad(path, layer, params, residuals, delta, scale)

    values = each_leaf(rec, weighted)
    dy = rec.dy_pred * scale.reshape(-1, *(1,) * (rec.dy_pred.ndim - 1))
    owned = owns_params(model, params, rec)
    return assemble(model, params, rec, values, dy, batched=False, through=not owned)


def _gaussian_like(key: PRNGKey | None, tree: Grads, std: float) -> Grads:
    """std * N(0, I) shaped like tree, Threefry normals from one key for all its leaves
    (jaxbp._threefry: jax.random's generator, unrolled so that it fuses on CPU); zeros when std
    is 0."""
    leaves, treedef = jax.tree.flatten(tree)
    if std == 0 or not leaves:
        return jax.tree.map(jnp.zeros_like, tree)
    dtype = jnp.result_type(*leaves)
    draws = _threefry.normals(key, [a.shape for a in leaves], dtype)
    parts = [(std * z).astype(a.dtype) for a, z in zip(leaves, draws)]
    return jax.tree.unflatten(treedef, parts)


def _weights(weights: Array | None, batch: int, dtype) -> Array:
    if weights is None:
        return jnp.ones((batch,), dtype)
    if jnp.shape(weights) != (batch,):
        raise ValueError(
            f"dp_sgd: weights must be (batch,) = ({batch},), got shape {jnp.shape(weights)}"
        )
    return jnp.asarray(weights, dtype)


def _weighted_value(loss: Any, y_pred: Array, y: Array, w: Array) -> Array:
    """sum_i w_i L_i / sum_i w_i: the mean loss of the sampled examples (L_i by the loss on one
    example's rows, so a sequence's L_i is its mean over positions, as C's is)."""
    per_example = jax.vmap(lambda a, b: loss.apply(a[None], b[None]))(y_pred, y)
    return jnp.sum(w * per_example) / jnp.maximum(jnp.sum(w), 1)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"dp_sgd: {name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"dp_sgd: {name} must be finite, got {value}")
    return float(value)


def _positive(name: str, value: Any) -> float:
    value = _number(name, value)
    if value <= 0:
        raise ValueError(f"dp_sgd: {name} must be positive, got {value}")
    return value
