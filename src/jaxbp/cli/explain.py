"""Walk through the seed's example: a 2-2-1 sigmoid network with the MSE cost on the XOR points.

Prints, for dC/dv1 (a weight into the output node), each factor of the chain rule: dL/dy', the
activation's derivative f_B'(z_B), dz_B/dv1 = o1, and their batch mean; then the same for w11, one
layer further back; then every weight's gradient from jaxbp.backprop and from jax.grad side by side.
Computed in float64.

--plot draws it: the network on one example (--example), each unit's z and o and each edge's
weight above it, the backward pass below (dL/dy' = y' - y, f'(z), dL/dz, each weight's dL/dw), the
factors of dL/dv1 and dL/dw11 numbered where they live; then each of those gradients' batch mean
beside jax.grad's. --model draws a small MLP of your own instead, its weights from --seed, on the
XOR points when it has 2 inputs and 1 output, else on 4 random examples (inputs ~ N(0, 1), targets
~ U(0, 1)) from --seed; only the picture is made for it.

examples:
  jaxbp explain
  jaxbp explain --seed 3
  jaxbp explain --weights 0.5 -0.3 0.8 0.2 0 0 1.2 -0.7 0.1
  jaxbp explain --plot docs/explain.png
  jaxbp explain --plot net.svg --model 2,3,1:tanh:sigmoid --example 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxbp.cli._common import UsageError, bad_input, number, require_writable

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
    parser.add_argument(
        "--plot",
        type=_picture_path,
        metavar="PATH",
        help="also draw the example as a picture, PNG or SVG by the extension",
    )
    parser.add_argument(
        "--model",
        type=_model_spec,
        metavar="SPEC",
        help="with --plot, draw this MLP instead of the seed: IN,UNITS,...:ACTIVATION"
        "[:OUTPUT_ACTIVATION], e.g. 2,3,1:tanh:sigmoid (no output activation: linear); "
        "at most 4 units per layer and 3 layers",
    )
    parser.add_argument(
        "--example",
        type=number(int),
        default=4,
        metavar="N",
        help="which of the 4 examples the picture follows (default 4)",
    )


def _picture_path(text: str) -> str:
    from jaxbp._explain_plot import check_path

    try:
        check_path(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _model_spec(text: str) -> str:
    from jaxbp._explain_graph import parse_model

    try:
        parse_model(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def run(args: argparse.Namespace) -> int:
    import jax.numpy as jnp

    from jaxbp._compat import enable_x64
    from jaxbp.explain import plot, seed_params, walkthrough, xor_data

    if args.model is not None and args.plot is None:
        raise UsageError("--model is drawn, not printed: give --plot PATH too")
    if args.model is not None and args.weights is not None:
        raise UsageError("--weights sets the seed network's nine weights; --model takes --seed")
    if not 1 <= args.example <= 4:
        raise UsageError(f"--example must be 1 to 4 (the batch has 4 examples), got {args.example}")
    if args.plot is not None:  # now, not after the printing and drawing
        require_writable(Path(args.plot).parent, "the folder of --plot")
    if args.model is None:
        with enable_x64():
            params = seed_params(seed=args.seed, weights=args.weights, dtype=jnp.float64)
            print(walkthrough(params, *xor_data(jnp.float64)))
    if args.plot is not None:
        with bad_input(f"cannot write {args.plot}", (OSError,)):
            what = plot(
                args.plot, args.model, seed=args.seed, weights=args.weights, example=args.example
            )
        print(f"\nwrote {args.plot}: {what}")
    return 0
