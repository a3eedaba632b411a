"""Train an MLP or a preset network with backprop on a bundled or user dataset (~97% on digits).

Before training, backprop's gradient on the first batch is checked against jax.grad. Into --out
go config.json (the settings, defaults resolved), metrics.jsonl (one JSON object per epoch),
checkpoint.npz (every --checkpoint-every epochs, at the end, and at the last good epoch when the
loss turns NaN or inf) and plot.png. One run at a time writes a folder: another one stops at once.
--resume continues from the checkpoint with the same settings; a run that has trained all its
--epochs has nothing to do, and a larger --epochs trains it further (a cosine schedule is then
stretched to the new length, so its learning rate rises again).

examples:
  jaxbp train
  jaxbp train --dataset moons --layers 32,32 --activation tanh --epochs 50
  jaxbp train --dataset xor --layers 2 --activation sigmoid --output-activation sigmoid \\
      --loss mse --optimizer sgd --lr 2 --batch-size 4 --epochs 2000 --out runs/xor
  jaxbp train --dataset my.npz --grad autodiff --out runs/mine
  jaxbp train --out runs/digits --resume
  jaxbp train --model residual-bn --epochs 20 --out runs/resnet-mlp
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxbp.cli import number
from jaxbp.layers.models import PRESETS

HELP = "train a network (default: an MLP on digits, ~97% test accuracy)"
OPTIMIZERS = ("adamw", "adam", "sgd", "momentum", "rmsprop")
GRADS = ("backprop", "autodiff", "fa", "dfa")
# What --resume may change; `out` names the same folder however it is spelt.
RESUMABLE = {"epochs", "resume", "overwrite", "progress", "checkpoint_every", "devices", "out"}
RESUMABLE |= {"coordinator", "num_processes", "process_id"}  # where it runs, not what it computes


def _sizes(text):
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {text!r}")
    return sizes


def configure(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--dataset",
        default="digits",
        help="digits, moons, spirals, xor, or a .npz/.csv path (default digits)",
    )
    add(
        "--task",
        choices=("classification", "regression"),
        default=None,
        help="what a file's labels are (default: classification if they are classes 0..K-1, "
        "K <= 1000, each in 2+ rows; anything else must say)",
    )
    add(
        "--model",
        default=None,
        metavar="PRESET",
        help="a preset network instead of --layers/--activation (jaxbp.layers.PRESETS): "
        + "; ".join(f"{name}: {text}" for name, (text, _) in PRESETS.items()),
    )
    add(
        "--layers",
        type=_sizes,
        default=[512, 256],
        help="hidden sizes, e.g. 512,256; '' for none (default 512,256)",
    )
    add("--activation", default="relu", help="hidden activation (default relu)")
    add("--output-activation", default=None, help="after the last layer (default none: logits)")
    add(
        "--loss",
        default=None,
        help="softmax_cross_entropy (the default for class labels), mse (the default for "
        "targets), binary_cross_entropy; mse and binary_cross_entropy need targets shaped like "
        "the output, not class labels",
    )
    add("--optimizer", choices=OPTIMIZERS, default="adamw", help="default adamw")
    add("--lr", type=number(float), default=1e-3, help="peak learning rate (default 1e-3)")
    add("--schedule", choices=("cosine", "constant"), default="cosine", help="default cosine")
    add(
        "--weight-decay",
        type=number(float, zero=True),
        default=1e-4,
        help="for adamw (default 1e-4)",
    )
    add("--epochs", type=number(int), default=40, help="default 40")
    add("--batch-size", type=number(int), default=32, help="default 32")
    add(
        "--seed",
        type=int,
        default=0,
        help="seeds init, shuffling and feedback matrices (default 0)",
    )
    add("--grad", choices=GRADS, default="backprop", help="gradient engine (default backprop)")
    add("--out", type=Path, default=Path("runs/train"), help="output folder (default runs/train)")
    add(
        "--checkpoint-every",
        type=number(int),
        default=5,
        help="epochs between checkpoints (default 5)",
    )
    add(
        "--devices",
        type=number(int),
        default=None,
        help="use the first N local devices (default all), on every process",
    )
    multi = parser.add_argument_group(
        "multi-process (jax.distributed; only process 0 writes --out and prints)"
    ).add_argument
    multi(
        "--coordinator",
        metavar="HOST:PORT",
        help="process 0's address, the same for every process (default $JAX_COORDINATOR_ADDRESS)",
    )
    multi("--num-processes", type=number(int), metavar="N", help="how many processes run")
    multi("--process-id", type=number(int, zero=True), metavar="I", help="this one's, 0 to N-1")
    either = parser.add_mutually_exclusive_group().add_argument
    either(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint, with the same settings; "
        "--epochs, --checkpoint-every and --devices may change",
    )
    either("--overwrite", action="store_true", help="replace a finished or stopped run in --out")
    add("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from jaxbp.cli._train_run import train

    return train(args)
