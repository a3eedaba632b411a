"""Benchmark backprop against jax.grad, NumPy by hand and PyTorch eager (when installed).

For each config (or a model you name), measured side by side in one process: gradient time,
a full optax training step, a whole epoch as one compiled lax.scan against a Python loop of jitted
steps, compile time, and on `wide` the fraction of the bare-matmul roofline reached. Writes
results.json and results.md to --out (default runs/bench; files already there are kept unless
--overwrite) and prints the Markdown tables.

configs: seed (2-2-1 sigmoid, MSE, batch 4), digits (64-128-128-10 relu, softmax CE, batch 128),
wide (784-1024-1024-10 relu, batch 512), deep (32 -> 16 x 64 tanh -> 1, MSE, batch 64);
convolutional, BatchNorm's state carried, PyTorch eager and torch.compile as peers (no epoch or
roofline): cnn (the cnn preset on 8x8 digits, batch 128), resnet (8 residual blocks at 16-32
channels on random 32x32x3 images, batch 64).

examples:
  jaxbp bench --quick
  jaxbp bench --configs digits wide --out runs/bench-wide
  jaxbp bench --configs cnn resnet --out runs/bench-vision
  jaxbp bench --out benchmarks/results --overwrite      # refresh the committed results
  jaxbp bench --model 784:1024,1024,10:relu:softmax_cross_entropy:512
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "benchmark backprop against jax.grad, NumPy and PyTorch"
CONFIG_NAMES = ("seed", "digits", "wide", "deep", "cnn", "resnet")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=CONFIG_NAMES,
        default=None,
        help="which built-in configs (default all; with --quick: seed digits)",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="IN:LAYERS:ACT:LOSS:BATCH",
        help="also benchmark this MLP, e.g. 784:1024,1024,10:relu:softmax_cross_entropy:512",
    )
    parser.add_argument(
        "--quick", action="store_true", help="few repetitions: a smoke run, not a measurement"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/bench"), help="output folder (default runs/bench)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")


def run(args: argparse.Namespace) -> int:
    import json

    from jaxbp import bench
    from jaxbp.checkpoint import atomic_write
    from jaxbp.cli import UsageError

    customs = [bench.parse_config(spec) for spec in args.model]
    names = args.configs or (["seed", "digits"] if args.quick else list(CONFIG_NAMES))
    files = [args.out / "results.json", args.out / "results.md"]
    if not args.overwrite and any(f.exists() for f in files):  # before minutes of measuring
        raise UsageError(f"{args.out} already holds results; pass --overwrite or another --out")
    try:  # a folder we cannot write is found now, not after the measuring
        args.out.mkdir(parents=True, exist_ok=True)
        probe = args.out / ".jaxbp-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UsageError(
            f"cannot write to output folder {args.out}: {error.strerror or error}"
        ) from None
    results = bench.run([bench.CONFIGS[n] for n in names] + customs, quick=args.quick)
    table = bench.to_markdown(results)
    atomic_write(files[0], lambda f: f.write(json.dumps(results, indent=2).encode()))
    atomic_write(files[1], lambda f: f.write((table + "\n").encode()))
    print(table)
    print(f"\nwrote {args.out}/results.json and results.md")
    return 0
