"""Shared fixtures: a fixed key, a float64 context, the one tree comparison helper, and
references in NumPy/SciPy float64 that share no code with jaxbp or jax.nn."""

from __future__ import annotations

import contextlib
import logging
import math
import os

# The suite compiles a few thousand small programs that mostly run once: LLVM's optimisations
# cost more time than they save (the suite takes ~35% less time without them, as jaxbp.check
# compiles its own). XLA's graph passes still run, and the numerics are XLA's own. Subprocesses
# (the CLI, the experiments) inherit the flag. JAXBP_TEST_OPTIMIZED=1 tests fully optimised code.
# It must be set before jax starts its CPU backend, which happens at the first computation.
if os.environ.get("JAXBP_TEST_OPTIMIZED") != "1":
    flag = "--xla_backend_optimization_level=0"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()

# One persistent compilation cache for the whole run: the xdist workers and every subprocess (the
# CLI, the experiments, the documentation's pages) compile many of the same programs, and a second
# process reads the first one's executable instead of compiling it again (the same executable, so
# the same numbers). The process that loads this file first (pytest's controller) makes the
# folder, its workers and subprocesses inherit it through the environment, and it is removed at
# exit. Every program is cached, however quick to compile: without LLVM's optimisations most are.
# A JAX_COMPILATION_CACHE_DIR already set is the caller's, and is used as it is.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _cache = tempfile.mkdtemp(prefix="jaxbp-test-compilation-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"

import chex  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import special  # noqa: E402

from jaxbp._compat import enable_x64  # noqa: E402

# A subprocess's time limit: a guard against a hang, never a speed check (2 busy cores can make a
# 20 s run take minutes).
SUBPROCESS_TIMEOUT_S = 600


@contextlib.contextmanager
def compile_records():
    """Inside the block, the list of jax's compile log records: one per program compiled."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            yield records
    finally:
        logger.removeHandler(handler)


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


# ---------------------------------------------------------------------------------------------
# Independent references, float64: written from the formulas, in forms that neither overflow nor
# cancel at |x| = 1e4 (expit, logaddexp, erfc), so they are the truth a float32 result is held to.

_C = math.sqrt(2 / math.pi)


def _gelu_tanh(x, dy):
    s = special.expit(2 * _C * (x + 0.044715 * x**3))  # (1 + tanh u) / 2, without cancelling
    d = s + 2 * x * s * special.expit(-2 * _C * (x + 0.044715 * x**3)) * _C * (1 + 0.134145 * x * x)
    return x * s, dy * d


def _gelu_exact(x, dy):
    cdf = 0.5 * special.erfc(-x / math.sqrt(2))
    return x * cdf, dy * (cdf + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi))


def _softmax(x, dy):
    y = special.softmax(x, axis=-1)
    return y, y * (dy - np.sum(dy * y, axis=-1, keepdims=True))


def _log_softmax(x, dy):
    y = special.log_softmax(x, axis=-1)
    return y, dy - special.softmax(x, axis=-1) * np.sum(dy, axis=-1, keepdims=True)


def _tanh(x, dy):
    e = np.exp(-2 * np.abs(x))
    return np.tanh(x), dy * 4 * e / (1 + e) ** 2  # 1 - tanh^2, without cancelling


def np_activation(layer, x, dy):
    """(y, dx) of an activation layer at x for the cotangent dy, in float64."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    s = special.expit(x)
    a = getattr(layer, "negative_slope", getattr(layer, "alpha", None))
    rules = {
        "Sigmoid": lambda: (s, dy * s * special.expit(-x)),
        "Tanh": lambda: _tanh(x, dy),
        "Relu": lambda: (np.maximum(x, 0), dy * (x > 0)),
        "LeakyRelu": lambda: (np.where(x >= 0, x, a * x), dy * np.where(x >= 0, 1, a)),
        "Elu": lambda: (
            np.where(x > 0, x, a * np.expm1(np.minimum(x, 0))),
            dy * np.where(x > 0, 1, a * np.exp(np.minimum(x, 0))),
        ),
        "Gelu": lambda: (_gelu_tanh if getattr(layer, "approximate", True) else _gelu_exact)(x, dy),
        "Softplus": lambda: (np.logaddexp(0, x), dy * s),
        "Silu": lambda: (x * s, dy * s * (1 + x * special.expit(-x))),
        "Identity": lambda: (x, dy),
        "Softmax": lambda: _softmax(x, dy),
        "LogSoftmax": lambda: _log_softmax(x, dy),
    }
    return rules[_kind(layer, rules)]()


def _kind(layer, known) -> str:
    """The name of the built-in class the layer is, or derives from (a test's subclass)."""
    return next(c.__name__ for c in type(layer).__mro__ if c.__name__ in known)


def np_forward(layer, params, x) -> np.ndarray:
    """The output of a Dense, Flatten, activation or serial stack of them, in float64."""
    x = np.asarray(x, np.float64)
    if isinstance(getattr(layer, "layers", None), tuple):
        for inner, p in zip(layer.layers, params, strict=True):
            x = np_forward(inner, p, x)
        return x
    classes = {c.__name__ for c in type(layer).__mro__}
    if "Dense" in classes:
        return x @ np.asarray(params["W"], np.float64) + np.asarray(params["b"], np.float64)
    if "Flatten" in classes:
        return x.reshape(len(x), -1)
    return np_activation(layer, x, np.zeros_like(x))[0]


def np_loss(name: str, z, y) -> tuple[float, np.ndarray]:
    """(C, dC/dz) of a built-in loss in float64; C = mean over the batch of L_i."""
    z = np.asarray(z, np.float64)
    m = len(z)
    if name == "mse":
        d = z - np.asarray(y, np.float64)
        return 0.5 * np.sum(d * d) / m, d / m
    if name == "binary_cross_entropy":
        y = np.asarray(y, np.float64)
        return np.sum(np.logaddexp(0, z) - y * z) / m, (special.expit(z) - y) / m
    y = np.asarray(y)
    target = np.eye(z.shape[1])[y] if np.issubdtype(y.dtype, np.integer) else y.astype(np.float64)
    p = special.softmax(z, axis=-1)
    value = -np.sum(target * special.log_softmax(z, axis=-1)) / m
    return value, (p * target.sum(-1, keepdims=True) - target) / m
