"""Gelu's rule inside one jitted forward-and-backward, where XLA sees both tanh u's at once.

Gelu.backward recomputes df behind an optimization barrier (so the forward is a single pass);
these check the barrier changes nothing the rule computes: float64 against jax.vjp, both forms,
and under vmap (the per-example sweeps batch backward).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from conftest import assert_trees_close

from jaxbp import layers as L


def _data(dtype):
    kx, kd = jax.random.split(jax.random.PRNGKey(0))
    # Scale 3: both tails and the curved middle of Phi; (4, 7, 16) is a (batch, T, C) block.
    return 3 * jax.random.normal(kx, (4, 7, 16), dtype), jax.random.normal(kd, (4, 7, 16), dtype)


@pytest.mark.parametrize("approximate", [True, False])
def test_jitted_forward_and_backward_match_vjp_float64(approximate, x64):
    layer = L.Gelu(approximate=approximate)
    x, dy = _data(jnp.float64)

    @jax.jit
    def rule(x, dy):
        y, saved = layer.forward((), x)
        return y, layer.backward((), saved, dy)[1]

    y, dx = rule(x, dy)
    y_ref, vjp = jax.vjp(lambda x: layer.apply((), x), x)
    # 1e-12: the same float64 formulas on both sides; only XLA's rounding order differs.
    assert_trees_close((y, dx), (y_ref, vjp(dy)[0]), rtol=1e-12, what="jitted Gelu")


def test_backward_under_vmap_matches_the_batch_float64(x64):
    layer = L.Gelu()
    x, dy = _data(jnp.float64)
    _, saved = layer.forward((), x)
    batched = jax.jit(jax.vmap(lambda s, d: layer.backward((), s[None], d[None])[1][0]))(saved, dy)
    # 1e-12: one example at a time computes the same elementwise formula as the whole batch.
    assert_trees_close(batched, layer.backward((), saved, dy)[1], rtol=1e-12, what="vmap")
