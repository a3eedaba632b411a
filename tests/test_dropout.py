"""Dropout: its rule against jax.vjp with one key on both sides, the mask's statistics, keys and
modes, and its errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close

from jaxbp.layers.dropout import Dropout

SHAPES = [(6, 5), (4, 3, 5)]  # (batch, C) and (batch, T, C)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_backward_matches_jax_vjp_float64(rate, shape, key, x64):
    layer = Dropout(rate)
    kx, kd, kmask = jax.random.split(key, 3)
    x, dy = jax.random.normal(kx, shape), jax.random.normal(kd, shape)
    y, mask = layer.forward((), x, key=kmask)
    dparams, dx = layer.backward((), mask, dy)
    # The same key on both sides: the reference draws the same mask.
    y_ref, vjp = jax.vjp(lambda x: layer.apply((), x, key=kmask), x)
    (dx_ref,) = vjp(dy)
    assert dparams == ()
    # 1e-12: both sides are exact formulas in float64; only rounding order differs.
    assert_trees_close(y, y_ref, rtol=1e-14, what="forward")
    assert_trees_close(dx, dx_ref, rtol=1e-12, what="dx")
    # The residual is the scaled mask, in x's dtype: 0 where dropped, 1/(1 - rate) where kept.
    assert mask.shape == x.shape and mask.dtype == x.dtype
    assert set(np.unique(np.asarray(mask)).tolist()) <= {0.0, 1 / (1 - rate)}


def test_backward_under_jit_float32(key):
    layer = Dropout(0.3)
    kx, kd, kmask = jax.random.split(key, 3)
    x, dy = jax.random.normal(kx, (4, 3, 5)), jax.random.normal(kd, (4, 3, 5))

    @jax.jit
    def rule(x, dy, key):
        _, mask = layer.forward((), x, key=key)
        return layer.backward((), mask, dy)

    _, vjp = jax.vjp(lambda x: layer.apply((), x, key=kmask), x)
    # float32: one multiplication per element on each side, so at most an ulp apart.
    assert_trees_close(rule(x, dy, kmask), ((), *vjp(dy)), rtol=1e-6, what="float32 under jit")


def test_the_key_decides_the_mask(key):
    layer, x = Dropout(0.5), jnp.ones((8, 16))
    y1 = layer.apply((), x, key=key)
    assert_trees_close(y1, layer.apply((), x, key=key), rtol=0, what="same key")
    assert not np.array_equal(y1, layer.apply((), x, key=jax.random.fold_in(key, 1)))


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.9])
def test_keep_rate_and_mean_are_statistically_right(rate, key):
    n = 100_000
    layer, x = Dropout(rate), jnp.ones((10, n // 10))
    y, mask = jax.jit(lambda x, k: layer.forward((), x, key=k))(x, key)
    keep = 1 - rate
    # The kept fraction is a mean of n Bernoulli(keep) draws: sd sqrt(keep (1 - keep) / n).
    kept = float(jnp.mean(mask > 0))
    assert abs(kept - keep) <= 5 * math.sqrt(keep * (1 - keep) / n), kept
    # Inverted scaling keeps E[y] = x = 1: each y_i is 0 or 1/keep, with variance rate/keep.
    assert abs(float(jnp.mean(y)) - 1) <= 5 * math.sqrt(rate / keep / n), float(jnp.mean(y))


def test_evaluation_and_rate_zero_are_the_identity_without_a_key(key):
    x = jax.random.normal(key, (4, 3, 5))
    dy = jax.random.normal(jax.random.fold_in(key, 1), x.shape)
    for layer in (Dropout(0.5, train=False), Dropout(0.0), Dropout(0)):
        for k in (None, key):  # the key is ignored
            y, residuals = layer.forward((), x, key=k)
            assert y is x and residuals == ()
            assert layer.backward((), residuals, dy) == ((), dy)


def test_training_without_a_key_raises_never_a_silent_identity():
    want = (
        r"Dropout\(rate=0\.1, train=True\) in training needs a key: pass key= \(backprop, fit "
        r"and forward take one\), or eval_mode\(model\) to evaluate"
    )
    with pytest.raises(ValueError, match=want):
        Dropout(0.1).forward((), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="needs a key"):
        jax.jit(lambda x: Dropout(0.1).apply((), x))(jnp.ones((2, 3)))  # at trace time


def test_bad_rates_and_inputs(key):
    for rate in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"rate must lie in \[0, 1\)"):
            Dropout(rate)
    for rate in ("0.5", None, True):
        with pytest.raises(TypeError, match="rate must be a number"):
            Dropout(rate)
    with pytest.raises(ValueError, match=r"Dropout\(.*batch axis"):
        Dropout(0.5).forward((), jnp.ones(3), key=key)
    with pytest.raises(TypeError, match=r"Dropout\(.*floating point"):
        Dropout(0.5).forward((), jnp.ones((2, 3), jnp.int32), key=key)


def test_init_keeps_the_shape_and_has_no_params(key):
    assert Dropout(0.5).init(key, (3, 5)) == ((3, 5), ())
    assert Dropout(0.5, train=False) != Dropout(0.5)  # the mode is part of the value
