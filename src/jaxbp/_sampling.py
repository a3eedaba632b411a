"""Poisson sampling inside a compiled epoch, for engines that ask for it (DP-SGD's accounting).

Each step, every one of the n training examples joins the batch independently with probability
q = b / n (b: fit's batch_size, now the expected batch size), so the batch size is Binomial(n, q).
Shapes must not change from step to step, or every step would recompile: the sampled examples
are gathered into a buffer of fixed capacity K (b plus a margin, `capacity`) with weights 1 for
them and 0 for the padding. A step whose sample is larger than K (probability <= OVERFLOW per
step) takes the other branch of a lax.cond instead: the whole training set with the mask as
weights. So no example is ever dropped, the accountant's Poisson assumption holds exactly, and
the rare slow branch costs about OVERFLOW * n / K of a step on average.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._types import Array, PRNGKey

__all__ = ["OVERFLOW", "capacity", "poisson_mask", "gather", "for_epoch"]

OVERFLOW = 1e-4  # the slow branch's probability per step: ~1e-4 * n / K extra on average


def capacity(n: int, batch_size: int, *, multiple: int = 1, overflow: float = OVERFLOW) -> int:
    """The smallest K >= batch_size with P(Binomial(n, batch_size / n) > K) <= overflow, rounded
    up to a multiple of `multiple` (the devices a batch is split over); at most n rounded up."""
    q = batch_size / n
    if q >= 1:
        k = n
    else:
        j = np.arange(n)
        # log P(X = k) by the ratio P(k+1)/P(k) = (n-k)/(k+1) * q/(1-q), summed from P(0).
        steps = np.log((n - j) / (j + 1)) + np.log(q) - np.log1p(-q)
        log_pmf = np.concatenate([[n * np.log1p(-q)], n * np.log1p(-q) + np.cumsum(steps)])
        tail = np.cumsum(np.exp(log_pmf)[::-1])[::-1]  # tail[k] = P(X >= k)
        above = np.append(tail[1:], 0.0)  # P(X > k)
        k = int(np.argmax((above <= overflow) & (np.arange(n + 1) >= batch_size)))
    return min(-(-k // multiple) * multiple, -(-n // multiple) * multiple)


def poisson_mask(key: PRNGKey, n: int, rate: float) -> Array:
    """(n,) bool: example i joins this step with probability `rate`, independently of the rest."""
    return jax.random.bernoulli(key, rate, (n,))


def gather(mask: Array, size: int) -> tuple[Array, Array]:
    """The indices of mask's True entries in a buffer of `size` (padding: index 0), and weights
    (size,) that are 1 for them, 0 for the padding. Exact when mask.sum() <= size."""
    idx = jnp.nonzero(mask, size=size, fill_value=0)[0]
    return idx, (jnp.arange(size) < jnp.sum(mask)).astype(jnp.float32)


def for_epoch(engine: Any, x: Array, y: Array, *, batch_size: int, shard=None) -> Callable:
    """The engine fit's step calls: `engine` itself, unless it asks for Poisson sampling
    (engine.sampling == "poisson"); then a function with the engine's signature that ignores the
    shuffled batch it is handed (XLA drops that gather) and draws its own from x, y."""
    if getattr(engine, "sampling", None) != "poisson":
        return engine
    n = len(x)
    devices = 1 if shard is None else shard.mesh.size
    size, rate = capacity(n, batch_size, multiple=devices), min(batch_size / n, 1.0)

    def run(model, loss, params, xb, yb, *, key=None, state=None):
        sample_key, key = jax.random.split(key)
        mask = poisson_mask(sample_key, n, rate)
        options = {"key": key, "expected_size": batch_size} | (
            {} if state is None else {"state": state}
        )

        def call(xs, ys, w):
            if shard is not None and len(xs) % devices == 0:
                xs, ys, w = jax.lax.with_sharding_constraint((xs, ys, w), shard)
            return engine(model, loss, params, xs, ys, weights=w, **options)

        def buffer(_):
            idx, w = gather(mask, size)
            return call(x[idx], y[idx], w)

        if size >= n:
            return call(x, y, mask.astype(jnp.float32))
        whole = lambda _: call(x, y, mask.astype(jnp.float32))  # noqa: E731
        return jax.lax.cond(jnp.sum(mask) <= size, buffer, whole, None)

    return run
