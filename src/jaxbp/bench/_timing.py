"""Side-by-side timing: candidates run interleaved, so machine noise hits them alike."""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import numpy as np


def block(out) -> None:
    jax.block_until_ready(out) if not isinstance(out, np.ndarray) else None


def _inner_count(fn: Callable, min_sample: float) -> int:
    """How many calls make one sample last at least min_sample seconds (timer noise ~us)."""
    t0 = time.perf_counter()
    block(fn())
    once = max(time.perf_counter() - t0, 1e-7)
    return max(1, int(np.ceil(min_sample / once)))


def interleaved(
    fns: dict[str, Callable[[], object]], *, reps: int, warmup: int = 3, min_sample: float = 2e-3
) -> dict[str, np.ndarray]:
    """Seconds per call of each fn, `reps` samples each, in rotating order to cancel drift."""
    for fn in fns.values():
        for _ in range(warmup):
            block(fn())
    inner = {name: _inner_count(fn, min_sample) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for rep in range(reps):
        # Rotate, then reverse: every candidate runs in every position equally often.
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order if (rep // len(names)) % 2 == 0 else order[::-1]:
            fn, n = fns[name], inner[name]
            t0 = time.perf_counter()
            for _ in range(n):
                out = fn()
            block(out)
            samples[name].append((time.perf_counter() - t0) / n)
    return {name: np.asarray(s) for name, s in samples.items()}


def ratio(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Median and interquartile range of the paired ratios a_i / b_i (same rep, same noise)."""
    r = a / b
    return {
        "median": float(np.median(r)),
        "q25": float(np.quantile(r, 0.25)),
        "q75": float(np.quantile(r, 0.75)),
    }


def compile_seconds(fn: Callable, *args) -> float:
    """Wall time to lower and compile jit(fn) for args (no cache: a fresh jit each call)."""
    t0 = time.perf_counter()
    jax.jit(fn).lower(*args).compile()
    return time.perf_counter() - t0
