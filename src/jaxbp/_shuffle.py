"""Epoch shuffling on device: jax.random.permutation's algorithm, with a sort XLA runs fast.

jax.random.permutation sorts (random key, index) pairs, and XLA:CPU's two-operand sort is slow.
Here each round packs the index into the low bits of its random key and sorts that single uint32
array: at 6,400 indices (the digits benchmark's epoch), `python benchmarks/shuffle.py`, which
times both side by side, printed `jax / jaxbp 3.08 [2.92-3.20]` on 2 CPU cores. Ties between
equal random parts keep index order; as in jax, rounds repeat until the random bits add up to
3 log2(n), so the expected number of pairs tied in every round is under 1/(2n).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp._types import Array, PRNGKey

MAX_INDEX_BITS = 20  # past 2^20 indices a round has under 12 random bits: use jax's own


def permutation(key: PRNGKey, n: int) -> Array:
    """A uniformly random ordering of 0..n-1 (int32), the same for the same key."""
    bits = max((n - 1).bit_length(), 1)
    if bits > MAX_INDEX_BITS:
        return jax.random.permutation(key, n).astype(jnp.int32)
    rounds = -(-3 * bits // (32 - bits))
    index = lax.iota(jnp.uint32, n)
    order = lax.iota(jnp.int32, n)
    for r in range(rounds):
        keys = jax.random.bits(jax.random.fold_in(key, r), (n,), jnp.uint32)
        moved = lax.sort((keys << bits) | index) & jnp.uint32((1 << bits) - 1)
        order = order[moved.astype(jnp.int32)]
    return order
