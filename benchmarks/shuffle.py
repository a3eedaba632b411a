"""Time the epoch shuffle against jax.random.permutation, side by side in one process.

    python benchmarks/shuffle.py [--n 6400] [--seconds 5]

Both jitted, interleaved (jaxbp.bench._timing), on the same n: jax.random.permutation sorts
(random key, index) pairs; jaxbp._shuffle.permutation packs the index into each key and sorts one
uint32 array. Prints each one's median time and the paired ratio with its 95% interval.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from jaxbp import _shuffle
from jaxbp.bench._timing import interleaved, ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6400, help="indices to shuffle (digits: 128 x 50)")
    parser.add_argument("--seconds", type=float, default=5.0, help="time spent sampling")
    args = parser.parse_args()
    key = jax.random.PRNGKey(0)
    jax_perm = jax.jit(lambda k: jax.random.permutation(k, args.n))
    ours = jax.jit(lambda k: _shuffle.permutation(k, args.n))
    t = interleaved(
        {"jax": lambda: jax_perm(key), "jaxbp": lambda: ours(key)}, reps=20, seconds=args.seconds
    )
    r = ratio(t["jax"], t["jaxbp"])
    print(
        f"n {args.n}: jax.random.permutation {1e3 * float(np.median(t['jax'])):.2f} ms, "
        f"jaxbp {1e3 * float(np.median(t['jaxbp'])):.2f} ms; jax / jaxbp "
        f"{r['median']:.2f} [{r['ci95_low']:.2f}-{r['ci95_high']:.2f}] "
        f"({jax.devices()[0].platform})"
    )


if __name__ == "__main__":
    main()
