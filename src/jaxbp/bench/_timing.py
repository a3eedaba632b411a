"""Side-by-side timing: candidates run interleaved, so machine noise hits them alike."""

from __future__ import annotations

import time
from collections.abc import Callable
from math import lgamma, log

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
    fns: dict[str, Callable[[], object]],
    *,
    reps: int,
    warmup: int = 3,
    min_sample: float = 2e-3,
    seconds: float = 0.0,
    settle: float = 0.0,
) -> dict[str, np.ndarray]:
    """Seconds per call of each fn, in rotating order to cancel drift.

    At least `reps` samples each; more, in whole rotations, until `seconds` have gone by, so fast
    candidates get the thousands of samples a 0.5% difference needs. With `settle`, each sample
    follows that many seconds of untimed calls to the same fn: OpenBLAS's threads spin for ~0.1 s
    after a NumPy call, and on 2 cores that made the next XLA matmul 1.5x slower.
    """
    if not fns or reps < 1:
        raise ValueError(f"interleaved needs candidates and reps >= 1, got {len(fns)} and {reps}")
    for fn in fns.values():
        for _ in range(warmup):
            block(fn())
    inner = {name: _inner_count(fn, min_sample) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    cycle = 2 * len(names)  # a rotation and its reverse: every position, both directions
    start, rep = time.perf_counter(), 0
    while rep < reps or rep % cycle or time.perf_counter() - start < seconds:
        # Rotate, then reverse: every candidate runs in every position equally often.
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order if (rep // len(names)) % 2 == 0 else order[::-1]:
            fn, n = fns[name], inner[name]
            _run_for(fn, settle)
            t0 = time.perf_counter()
            for _ in range(n):
                out = fn()
            block(out)
            samples[name].append((time.perf_counter() - t0) / n)
        rep += 1
    return {name: np.asarray(s) for name, s in samples.items()}


def _run_for(fn: Callable, seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        block(fn())


def ratio(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Median, its 95% confidence interval, and the interquartile range of the paired ratios
    a_i / b_i (same rep, same noise)."""
    r = a / b
    low, high = median_ci(r)
    return {
        "median": float(np.median(r)),
        "ci95_low": low,
        "ci95_high": high,
        "q25": float(np.quantile(r, 0.25)),
        "q75": float(np.quantile(r, 0.75)),
    }


def engines(t: dict[str, np.ndarray]) -> dict:
    """Medians, paired ratios and the null of an interleaved run of "backprop", "jax.grad" and
    "null" (jax.grad against a second, separately compiled copy of itself)."""
    return {
        "backprop_s": float(np.median(t["backprop"])),
        "jax_grad_s": float(np.median(t["jax.grad"])),
        "ratio": ratio(t["backprop"], t["jax.grad"]),
        "null_ratio": ratio(t["null"], t["jax.grad"]),
        "samples": len(t["backprop"]),
    }


def median_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval for the median: the sign-test interval.

    For independent samples the count below the true median is Binomial(n, 1/2), so the a-th and
    (n-1-a)-th order statistics enclose it with probability 1 - 2 P(B <= a); a is the largest that
    keeps this at least `level`. Exact for any distribution. Below 6 samples no interval reaches
    95%: it is then the whole range, which covers the median with probability 1 - 2^(1-n).
    """
    s = np.sort(np.asarray(samples, dtype=float))
    n = len(s)
    if n == 0:
        raise ValueError("median_ci needs at least one sample")
    log_pmf = [lgamma(n + 1) - lgamma(k + 1) - lgamma(n - k + 1) - n * log(2) for k in range(n + 1)]
    tail = np.cumsum(np.exp(log_pmf))  # P(B <= k)
    a = max(int(np.sum(tail <= (1 - level) / 2)) - 1, 0)
    return float(s[a]), float(s[n - 1 - a])


def compile_seconds(fn: Callable, *args) -> float:
    """Wall time to lower and compile jit(fn) for args (no cache: a fresh jit each call)."""
    t0 = time.perf_counter()
    jax.jit(fn).lower(*args).compile()
    return time.perf_counter() - t0
