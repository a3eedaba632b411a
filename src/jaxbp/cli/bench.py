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
channels on random 32x32x3 images, batch 64); sequence models on next-token prediction, PyTorch
eager and torch.compile as peers: gpt (4 layers, 128 features, 4 heads, context 32, vocab 28,
batch 64), lstm (char_rnn: embedding 64, LSTM 256, T 32, batch 64; nn.LSTM a peer too).
GPT-2 124M, only when named (10-15 minutes each here): gpt2 (batch 4 x 64, llm.c's CPU shapes),
gpt2-t256 and gpt2-t1024 (batch 1): AdamW steps, the roofline, memory with and without attention
recompute, where the time goes, PyTorch eager and torch.compile.

examples:
  jaxbp bench --quick
  jaxbp bench --configs digits wide --out runs/bench-wide
  jaxbp bench --configs cnn resnet --out runs/bench-vision
  jaxbp bench --configs gpt lstm --out runs/bench-sequence
  jaxbp bench --configs gpt2 --out runs/bench-gpt2
  jaxbp bench --out benchmarks/results --overwrite      # refresh the committed results
  jaxbp bench --model 784:1024,1024,10:relu:softmax_cross_entropy:512
  jaxbp bench --quantities --out runs/bench-quantities   # vs vmap(jax.grad), BackPACK, Opacus
  jaxbp bench --quantities dp --configs digits wide cnn gpt --out runs/bench-dp  # + jax-privacy
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxbp.cli._common import UsageError, bad_input, require_writable

HELP = "benchmark backprop against jax.grad, NumPy and PyTorch"
DEFAULT_CONFIGS = ("seed", "digits", "wide", "deep", "cnn", "resnet", "gpt", "lstm")
CONFIG_NAMES = (*DEFAULT_CONFIGS, "gpt2", "gpt2-t256", "gpt2-t1024")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=CONFIG_NAMES,
        default=None,
        help="which built-in configs (default all but the gpt2 ones; with --quick: seed digits)",
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
    parser.add_argument(
        "--quantities",
        nargs="*",
        choices=("first_order", "curvature", "dp"),
        default=None,
        metavar="GROUP",
        help="instead, time per-example, curvature and DP quantities against vmap(jax.grad), "
        "BackPACK, Opacus and jax-privacy (groups: first_order curvature dp; default all) on the "
        "MLP configs, cnn and gpt (default digits wide cnn; with --quick: digits); writes "
        "quantities.json/.md",
    )


def run(args: argparse.Namespace) -> int:
    import json

    from jaxbp import bench
    from jaxbp.checkpoint import atomic_write

    with bad_input("--model"):
        customs = [bench.parse_config(spec) for spec in args.model]
    names = args.configs or (["seed", "digits"] if args.quick else list(DEFAULT_CONFIGS))
    stem, measure, markdown = "results", bench.run, bench.to_markdown
    if args.quantities is not None:  # the quantity benchmark instead, into files of its own
        stem, measure, markdown, names = _quantities(args, bool(customs))
    files = [args.out / f"{stem}.json", args.out / f"{stem}.md"]
    if not args.overwrite and any(f.exists() for f in files):  # before minutes of measuring
        raise UsageError(f"{args.out} already holds results; pass --overwrite or another --out")
    require_writable(args.out, "output folder")  # now, not after the measuring
    results = measure([bench.CONFIGS[n] for n in names] + customs, quick=args.quick)
    table = markdown(results)
    atomic_write(files[0], lambda f: f.write(json.dumps(results, indent=2).encode()))
    atomic_write(files[1], lambda f: f.write((table + "\n").encode()))
    print(table)
    print(f"\nwrote {args.out}/{stem}.json and {stem}.md")
    return 0


def _quantities(args: argparse.Namespace, customs: bool) -> tuple:
    """(file stem, measure, to_markdown, config names) of `--quantities [GROUP ...]`."""
    from functools import partial

    from jaxbp import bench
    from jaxbp.bench import quantities

    default = [] if customs else ["digits"] if args.quick else list(quantities.DEFAULT_CONFIGS)
    groups = tuple(args.quantities) or quantities.GROUPS
    with bad_input():  # resnet's BatchNorm, lstm: refused before any measuring
        for name in args.configs or default:
            quantities.check(bench.CONFIGS[name])
    measure = partial(quantities.run, groups=groups)
    return "quantities", measure, quantities.to_markdown, args.configs or default
