"""Type aliases shared by every module, in one place."""

from __future__ import annotations

from typing import Any

import jax

Array = jax.Array
PRNGKey = jax.Array
Shape = tuple[int, ...]
# Params, gradients and residuals are plain pytrees (dicts and tuples of arrays).
Params = Any
Grads = Any
Residuals = Any
