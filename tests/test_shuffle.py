"""The epoch shuffle: a permutation, random, and a function of its key only."""

from __future__ import annotations

import collections
import itertools

import jax
import numpy as np
import pytest

import jaxbp._shuffle as shuffle
from jaxbp._shuffle import permutation


@pytest.mark.parametrize("n", [1, 2, 3, 7, 128, 1000, 6400])
def test_is_a_permutation_of_range_n(key, n):
    order = np.asarray(jax.jit(permutation, static_argnums=1)(key, n))
    assert order.dtype == np.int32
    np.testing.assert_array_equal(np.sort(order), np.arange(n))


def test_same_key_same_order_other_key_other_order(key):
    a, b = permutation(key, 500), permutation(key, 500)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, permutation(jax.random.fold_in(key, 1), 500))


def test_every_ordering_of_four_is_equally_likely():
    keys = jax.random.split(jax.random.PRNGKey(1), 24_000)
    orders = np.asarray(jax.jit(jax.vmap(lambda k: permutation(k, 4)))(keys))
    counts = collections.Counter(map(tuple, orders))
    observed = np.array([counts[p] for p in itertools.permutations(range(4))])
    chi2 = ((observed - 1000) ** 2 / 1000).sum()
    assert chi2 < 49.7  # chi-square, 23 degrees of freedom: exceeded with probability 0.001


def test_positions_are_uniform_and_uncorrelated_with_the_index():
    keys = jax.random.split(jax.random.PRNGKey(2), 400)
    n = 1000  # 10 bits of index: 3 rounds, each with 22 random bits
    orders = np.asarray(jax.jit(jax.vmap(lambda k: permutation(k, n)))(keys))
    where = np.argsort(orders, axis=1)  # where[k, i]: the position index i was sent to
    # Uniform positions: each index lands in each tenth of the order 40 times on average.
    tenths = np.stack([np.bincount(w * 10 // n, minlength=10) for w in where.T])
    chi2 = ((tenths - 40) ** 2 / 40).sum(axis=1)
    assert np.mean(chi2) == pytest.approx(9, abs=0.6)  # mean of chi-square(9) over 1000 indices
    r = np.corrcoef(np.tile(np.arange(n), len(keys)), where.ravel())[0, 1]
    assert abs(r) < 4 / np.sqrt(where.size)


def test_beyond_the_packed_range_it_is_jaxs_permutation(key, monkeypatch):
    monkeypatch.setattr(shuffle, "MAX_INDEX_BITS", 3)
    np.testing.assert_array_equal(permutation(key, 10), jax.random.permutation(key, 10))
