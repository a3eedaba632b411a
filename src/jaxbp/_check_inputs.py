"""What `jaxbp.check` draws, on the host with NumPy and seeded by the key, so that nothing compiles:
inputs of both signs or with ties, targets, directions and cotangents, and the casts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._types import Array, PRNGKey, Shape

TARGETS = ("auto", "normal", "unit", "labels", "probs")
"""How `check_loss` draws targets: normal floats, unit floats in [0, 1], integer labels,
probability rows, or the loss's own choice (auto)."""
# Three values: a window of 4 entries has a tied maximum with probability 1 - 36/81 = 56% (of 9
# entries, 88%), and a third of the entries sit exactly at a relu kink.
TIE_VALUES = (-1.0, 0.0, 1.0)


def both_signs(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """2|z| with z normal, half of the entries (at random places) negated."""
    signs = rng.permutation(np.where(np.arange(int(np.prod(shape))) % 2 == 0, 1.0, -1.0))
    return 2 * np.abs(rng.standard_normal(shape)) * signs.reshape(shape)


def with_ties(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Entries drawn from TIE_VALUES: equal entries in most windows, zeros at every kink."""
    return rng.choice(np.array(TIE_VALUES), size=shape)


def draw_targets(loss, kind: str | Array, rng: np.random.Generator, shape: Shape, dtype: str):
    """(targets, how they were drawn): an array as given, or drawn as `kind` says ("auto": the
    loss's own `targets`, else "normal")."""
    if not isinstance(kind, str):
        return cast(kind, dtype), "given"
    kind = getattr(loss, "targets", "normal") if kind == "auto" else kind
    draw = {
        "normal": lambda: rng.standard_normal(shape),
        "unit": lambda: rng.uniform(size=shape),
        "labels": lambda: rng.integers(0, shape[-1], size=shape[:1]),
        "probs": lambda: _softmax(2 * rng.standard_normal(shape)),
    }
    if kind not in draw:
        raise ValueError(f"targets must be an array or one of {', '.join(TARGETS)}, got {kind!r}")
    return cast(draw[kind](), dtype), kind


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def direction(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def cotangent(rng: np.random.Generator, like) -> np.ndarray:
    z = rng.standard_normal(like.shape)
    return (z + 0.5 * np.sign(z)).astype(like.dtype)  # away from 0, so a rule ignoring g fails


def cast(tree, dtype: str):
    """Floating leaves to `dtype`, others as they are; through NumPy, so nothing compiles."""

    def one(a):
        a = np.asarray(a)
        return jnp.asarray(a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a)

    return jax.tree.map(one, tree)


def as_float64(tree):
    """Floating leaves to float64 NumPy arrays, others as they are."""

    def one(a):
        a = np.asarray(a)
        return a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a

    return jax.tree.map(one, tree)


def numpy_rng(key: PRNGKey | int) -> np.random.Generator:
    """The NumPy generator of every draw, seeded by an int or a JAX key."""
    if isinstance(key, (int, np.integer)):
        return np.random.default_rng(int(key))
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key).ravel().tolist())


def jax_key(key: PRNGKey | int) -> PRNGKey:
    return jax.random.PRNGKey(int(key)) if isinstance(key, (int, np.integer)) else key
