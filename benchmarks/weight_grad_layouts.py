"""Time the three layouts of dW = x^T dy that jaxbp._matmul chooses between, side by side.

    python benchmarks/weight_grad_layouts.py [--reps 30]

For each (batch, in, out) of the benchmark configs: x.T @ dy as written, the transpose of x
materialized first, and (dy^T x)^T; the layout jaxbp picks on this platform is starred.
Re-run after a jax/XLA upgrade: the thresholds in src/jaxbp/_matmul.py come from this table.
"""

from __future__ import annotations

import argparse
from functools import partial

import jax
import numpy as np
from jax import lax

from jaxbp import _matmul
from jaxbp.bench._timing import interleaved

SHAPES = [  # (batch, in, out) of every Dense layer in benchmarks' seed, digits, wide and deep
    (4, 2, 2), (4, 2, 1), (128, 64, 128), (128, 128, 128), (128, 128, 10),
    (512, 784, 1024), (512, 1024, 1024), (512, 1024, 10), (64, 32, 64), (64, 64, 64), (64, 64, 1),
]  # fmt: skip

LAYOUTS = {
    "x.T @ dy": lambda x, dy: x.T @ dy,
    "copy(x.T) @ dy": lambda x, dy: lax.optimization_barrier(x.T) @ dy,
    "(dy.T @ x).T": lambda x, dy: lax.optimization_barrier(dy.T @ x).T,
}


def chosen(batch: int, n_in: int, n_out: int) -> str:
    if jax.default_backend() != "cpu":
        return "x.T @ dy"
    return {"plain": "x.T @ dy", "large": "copy(x.T) @ dy", "narrow": "(dy.T @ x).T"}[
        _matmul.cpu_layout(batch, n_in, n_out)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    print(f"{jax.default_backend()} ({jax.devices()[0].device_kind}), jax {jax.__version__}")
    print(f"| batch, in, out | {' | '.join(LAYOUTS)} |\n|---|{'---|' * len(LAYOUTS)}")
    key_x, key_dy = jax.random.split(jax.random.PRNGKey(0))
    for batch, n_in, n_out in SHAPES:
        x = jax.random.normal(key_x, (batch, n_in))
        dy = jax.random.normal(key_dy, (batch, n_out))
        fns = {name: partial(jax.jit(f), x, dy) for name, f in LAYOUTS.items()}
        times = interleaved(fns, reps=args.reps)
        pick = chosen(batch, n_in, n_out)
        cells = [f"{np.median(t) * 1e6:.1f} us{' *' * (n == pick)}" for n, t in times.items()]
        print(f"| {batch}, {n_in}, {n_out} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
