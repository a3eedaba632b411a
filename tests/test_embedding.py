"""Embedding: its rule against jax.vjp (the table's cotangent; ids have none), repeated and
out-of-range ids, and its errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close, rel_error

from jaxbp.layers.embedding import Embedding

LAYER = Embedding(num_embeddings=7, features=4)


def _ids(shape, key):
    """Random ids from only 4 of the 7 rows: every draw repeats some id, and leaves rows unused."""
    return jax.random.randint(key, shape, 1, 5)


def _numpy_dtable(ids, dy, n):
    """dtable[i] = sum of dy where ids == i, by np.add.at (which accumulates repeated indices)."""
    ids, dy = np.asarray(ids), np.asarray(dy, np.float64)
    dtable = np.zeros((n, dy.shape[-1]))
    ok = (ids >= 0) & (ids < n)
    np.add.at(dtable, ids[ok], dy[ok])
    return dtable


@pytest.mark.parametrize("shape", [(6,), (4, 3)], ids=str)  # ids (batch,) and (batch, T)
def test_backward_matches_jax_vjp_float64(shape, key, x64):
    ki, kp, kd = jax.random.split(key, 3)
    _, params = LAYER.init(kp, shape[1:])
    ids, dy = _ids(shape, ki), jax.random.normal(kd, (*shape, 4))
    assert len(np.unique(ids)) < ids.size  # repeated ids: their rows must accumulate
    y, residuals = LAYER.forward(params, ids)
    dparams, dx = LAYER.backward(params, residuals, dy)
    _, vjp = jax.vjp(lambda p, i: LAYER.apply(p, i), params, ids)
    dparams_ref, dx_ref = vjp(dy)
    # 1e-12: a gather and a scatter-add, exact but for the order of the additions.
    np.testing.assert_array_equal(y, np.asarray(params["table"])[np.asarray(ids)])  # a gather
    assert_trees_close(dparams, dparams_ref, rtol=1e-12, what="dtable")
    assert rel_error(dparams["table"], _numpy_dtable(ids, dy, 7)) <= 1e-12
    # ids have no cotangent: float0 zeros of ids' shape, as jax.vjp itself gives.
    assert dx.dtype == dx_ref.dtype == jax.dtypes.float0 and dx.shape == dx_ref.shape == shape
    assert residuals is ids


def test_repeated_ids_accumulate(key):
    _, params = LAYER.init(key, (3,))
    ids = jnp.array([[1, 1, 1], [1, 2, 1]])
    dy = jax.random.normal(key, (2, 3, 4))
    dtable = LAYER.backward(params, LAYER.forward(params, ids)[1], dy)[0]["table"]
    # Row 1 collects five cotangents; overwriting (.set) would keep one of them.
    np.testing.assert_allclose(dtable[1], dy[0].sum(0) + dy[1, 0] + dy[1, 2], rtol=1e-6)
    np.testing.assert_allclose(dtable[2], dy[1, 1], rtol=1e-6)
    assert not np.any(np.delete(np.asarray(dtable), [1, 2], axis=0))


def test_backward_under_jit_float32(key):
    ki, kp, kd = jax.random.split(key, 3)
    _, params = LAYER.init(kp, (3,))
    ids, dy = _ids((4, 3), ki), jax.random.normal(kd, (4, 3, 4))

    @jax.jit
    def rule(params, ids, dy):
        return LAYER.backward(params, LAYER.forward(params, ids)[1], dy)[0]

    _, vjp = jax.vjp(lambda p: LAYER.apply(p, ids), params)
    # float32: sums of at most 12 rows, added in possibly different orders.
    assert_trees_close(rule(params, ids, dy), vjp(dy)[0], rtol=1e-6, what="float32 under jit")


def test_out_of_range_ids_give_nan_rows_under_jit_and_add_nothing(key):
    _, params = LAYER.init(key, ())
    ids = jnp.array([0, 7, -1, 100, -8, 6])  # -1 must not wrap to the last row
    y, residuals = jax.jit(LAYER.forward)(params, ids)
    bad = np.array([False, True, True, True, True, False])
    assert np.isnan(y[bad]).all()
    np.testing.assert_array_equal(y[~bad], params["table"][jnp.array([0, 6])])
    dy = jnp.ones((6, 4))
    dtable = jax.jit(LAYER.backward)(params, residuals, dy)[0]["table"]
    np.testing.assert_array_equal(dtable, _numpy_dtable(ids, dy, 7))  # rows 0 and 6 only


def test_check_ids_names_the_extremes_and_the_valid_range():
    for ids in ([[0, 3], [7, 2]], np.array([-2, 0, 5]), jnp.array([[9]])):
        with pytest.raises(ValueError, match=r"Embedding\(.*0\.\.6.*smallest -?\d+, largest \d+"):
            LAYER.check_ids(ids)
    with pytest.raises(ValueError, match="smallest -2, largest 5"):
        LAYER.check_ids(np.array([-2, 0, 5]))
    LAYER.check_ids(jnp.array([[0, 6], [3, 3]]))  # in range: no error
    LAYER.check_ids(np.zeros((0, 3), np.int32))  # nothing to check
    with pytest.raises(TypeError, match="float32"):
        LAYER.check_ids(np.array([0.0, 1.0], np.float32))


def test_init_shapes_and_table(key):
    assert LAYER.init(key, (5,))[0] == (5, 4)
    assert LAYER.init(key, ())[0] == (4,)
    big = Embedding(1000, 64).init(key, (3,))[1]["table"]
    assert big.shape == (1000, 64)
    # Standard normal: the sample sd of 64,000 draws is 1 within a few percent.
    assert abs(float(jnp.std(big)) - 1) < 0.02


def test_bad_inputs_are_rejected(key):
    _, params = LAYER.init(key, (3,))
    for dtype in (jnp.float32, jnp.bool_):
        with pytest.raises(
            TypeError, match=rf"Embedding\(.*integers, got dtype {jnp.dtype(dtype)}"
        ):
            LAYER.forward(params, jnp.zeros((2, 3), dtype))
    with pytest.raises(ValueError, match=r"Embedding\(.*batch axis"):
        LAYER.forward(params, jnp.array(3))
    with pytest.raises(TypeError, match="must be an array"):
        LAYER.forward(params, [[1, 2]])
    for bad in ({"tabel": params["table"]}, {"table": params["table"][:5]}, (params["table"],)):
        with pytest.raises(ValueError, match=r"Embedding\(.*params must be \{'table': \(7, 4\)\}"):
            jax.jit(LAYER.forward)(bad, jnp.zeros((2, 3), jnp.int32))  # at trace time
    for n, f in ((0, 4), (7, -1)):
        with pytest.raises(ValueError, match="must be positive"):
            Embedding(n, f)
    with pytest.raises(TypeError, match="must be an int"):
        Embedding(7.0, 4)
