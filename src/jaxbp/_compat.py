"""Version shims, so the rest of the code reads as if there were one JAX."""

from __future__ import annotations

import contextlib

import jax


def enable_x64() -> contextlib.AbstractContextManager:
    """A context in which arrays default to 64 bits, leaving the global flag as it was."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64 as legacy  # jax < 0.7

    return legacy()
