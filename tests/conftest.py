"""Shared fixtures: a fixed key, a float64 context, and the one tree comparison helper."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp._compat import enable_x64


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)


@pytest.fixture
def x64():
    """float64 inside the test only: the global x64 flag is left as it was."""
    with enable_x64():
        yield


def rel_error(a, b) -> float:
    """Largest relative error over the leaves of two trees: ||a - b|| / max(||b||, tiny)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b), (
        jax.tree.structure(a),
        jax.tree.structure(b),
    )
    errs = [0.0]
    for u, v in zip(la, lb):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        assert u.shape == v.shape, (u.shape, v.shape)
        errs.append(float(np.linalg.norm(u - v) / max(np.linalg.norm(v), 1e-300)))
    return max(errs)


def assert_trees_close(a, b, *, rtol: float, what: str = "trees") -> None:
    """Same structure, shapes and dtypes, and relative error (per leaf, in norm) at most rtol."""
    chex.assert_trees_all_equal_shapes_and_dtypes(a, b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert jnp.result_type(u) == jnp.result_type(v), (
            f"{what}: dtype {jnp.result_type(u)} != {jnp.result_type(v)}"
        )
    err = rel_error(a, b)
    assert err <= rtol, f"{what}: relative error {err:.3e} > {rtol:.1e}"


def cast(tree, dtype):
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)
