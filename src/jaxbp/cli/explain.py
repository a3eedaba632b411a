"""Walk through the seed's example: a 2-2-1 sigmoid network with the MSE cost on the XOR points.

Prints, for dC/dv1 (a weight into the output node), each factor of the chain rule: dL/dy', the
activation's derivative f_B'(z_B), dz_B/dv1 = o1, and their batch mean; then the same for w11, one
layer further back; then every weight's gradient from jaxbp.backprop and from jax.grad side by side.
Computed in float64.

examples:
  jaxbp explain
  jaxbp explain --seed 3
  jaxbp explain --weights 0.5 -0.3 0.8 0.2 0 0 1.2 -0.7 0.1
"""

from __future__ import annotations

import argparse

from jaxbp.cli import number

HELP = "the seed's example, step by step, with numbers"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed for the weights (default 0)")
    parser.add_argument(
        "--weights",
        type=number(float, negative=True),
        nargs=9,
        metavar="W",
        help="the nine weights w11 w12 w21 w22 b1 b2 v1 v2 bB instead of a seed; "
        "w_ij joins input i to hidden node j, v_j hidden node j to the output B",
    )


def run(args: argparse.Namespace) -> int:
    import jax.numpy as jnp

    from jaxbp._compat import enable_x64
    from jaxbp.explain import seed_params, walkthrough, xor_data

    with enable_x64():
        params = seed_params(seed=args.seed, weights=args.weights, dtype=jnp.float64)
        print(walkthrough(params, *xor_data(jnp.float64)))
    return 0
