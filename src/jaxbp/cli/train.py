"""Train an MLP or a preset network with backprop on a bundled or user dataset (~97% on digits),
or a character model (--model gpt or lstm) on the bundled surnames.

Before training, backprop's gradient on the first batch is checked against jax.grad: its relative
error is printed, and above 1e-4 a warning says a backward rule is wrong. Into --out go
config.json (the settings, defaults resolved), metrics.jsonl (one JSON object per epoch),
checkpoint.npz (every --checkpoint-every epochs, at the end, and at the last good epoch when the
loss turns NaN or inf) and plot.png. One run at a time writes a folder: another one stops at once.
--resume continues from the checkpoint with the same settings; a run that has trained all its
--epochs has nothing to do, and a larger --epochs trains it further (a cosine schedule is then
stretched to the new length, so its learning rate rises again).

--model gpt and --model lstm train next-character models on --dataset names (their default):
each epoch prints the validation loss in nats per character, and the end of the run puts it next
to two baselines on the same characters, a bigram and makemore's MLP (--no-baselines skips them).
`jaxbp sample RUN_DIR` then draws names from the checkpoint.

examples:
  jaxbp train
  jaxbp train --dataset moons --layers 32,32 --activation tanh --epochs 50
  jaxbp train --dataset xor --layers 2 --activation sigmoid --output-activation sigmoid \\
      --loss mse --optimizer sgd --lr 2 --batch-size 4 --epochs 2000 --out runs/xor
  jaxbp train --dataset my.npz --grad autodiff --out runs/mine
  jaxbp train --out runs/digits --resume
  jaxbp train --model residual-bn --epochs 20 --out runs/resnet-mlp
  jaxbp train --model gpt --out runs/gpt        # ~35 s on 2 cores; jaxbp sample runs/gpt
  jaxbp train --model lstm --out runs/lstm
  jaxbp train --grad dp --clip-norm 1 --noise-multiplier 1.1 --out runs/dp
  jaxbp train --optimizer kfac --out runs/kfac   # K-FAC: the curvature from the same sweep
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxbp.cli._common import number
from jaxbp.cli._train_options import (
    DEFAULTS,
    KFAC_DEFAULTS,
    PRESET_DEFAULTS,
    SEQUENCE_DEFAULTS,
    SEQUENCE_MODELS,
)
from jaxbp.layers.models import PRESETS

HELP = "train a network (default: an MLP on digits, ~97% test accuracy)"
OPTIMIZERS = ("adamw", "adam", "sgd", "momentum", "rmsprop", "kfac")
GRADS = ("backprop", "autodiff", "fa", "dfa", "dp")


def _sizes(text):
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {text!r}")
    return sizes


def _delta(text):
    value = number(float)(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--dataset",
        default=None,
        help="digits, moons, spirals, xor, names, or a .npz/.csv path "
        "(default digits; names for --model gpt or lstm)",
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
        + "; ".join(f"{name}: {text}" for name, (text, _) in PRESETS.items())
        + "; or a character model on --dataset names: "
        + "; ".join(f"{name}: {text}" for name, text in SEQUENCE_MODELS.items()),
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
    add("--lr", type=number(float), help=f"peak learning rate (default 1e-3{_for_models('lr')})")
    add("--schedule", choices=("cosine", "constant"), default="cosine", help="default cosine")
    add(
        "--weight-decay",
        type=number(float, zero=True),
        help=f"adamw's decoupled decay; refused with other optimizers (default 1e-4"
        f"{_for_models('weight_decay')})",
    )
    kfac = parser.add_argument_group(
        "K-FAC (--optimizer kfac: each Dense and Conv layer's gradient preconditioned by its "
        "Kronecker-factored curvature, jaxbp.kfac; other layers' gradients as they are)"
    ).add_argument
    kfac(
        "--damping",
        type=number(float),
        metavar="LAMBDA",
        help=f"Tikhonov damping, split over the two factors (default {KFAC_DEFAULTS['damping']:g})",
    )
    kfac(
        "--inverse-every",
        type=number(int),
        metavar="K",
        help=f"recompute the factors' inverses every K steps (default "
        f"{KFAC_DEFAULTS['inverse_every']})",
    )
    add("--epochs", type=number(int), help=f"default 40{_for_models('epochs')}")
    add("--batch-size", type=number(int), help=f"default 32{_for_models('batch_size')}")
    add(
        "--seed",
        type=int,
        default=0,
        help="seeds init, shuffling and feedback matrices (default 0)",
    )
    add("--grad", choices=GRADS, default="backprop", help="gradient engine (default backprop)")
    dp = parser.add_argument_group(
        "differential privacy (--grad dp: DP-SGD, Poisson-sampled batches of expected size "
        "--batch-size, epsilon per epoch by dp-accounting's RDP accountant)"
    ).add_argument
    dp("--clip-norm", type=number(float), metavar="C", help="per-example clip norm (default 1)")
    dp(
        "--noise-multiplier",
        type=number(float, zero=True),
        metavar="SIGMA",
        help="noise std over C; 0 clips only, with no privacy (default 1)",
    )
    dp("--delta", type=_delta, help="epsilon is reported at this delta (default 1e-5)")
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
    _configure_sequences(parser)
    either = parser.add_mutually_exclusive_group().add_argument
    either(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint, with the same settings; "
        "--epochs, --checkpoint-every and --devices may change",
    )
    either("--overwrite", action="store_true", help="replace a finished or stopped run in --out")
    add("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _for_models(name: str) -> str:
    """', cnn: 3e-3, gpt: 6e-3, ...': the defaults that a --model (or kfac) sets otherwise."""
    models = PRESET_DEFAULTS | SEQUENCE_DEFAULTS
    shown = [f"{m}: {d[name]:g}" for m, d in models.items() if d[name] != DEFAULTS[name]]
    if name in KFAC_DEFAULTS:
        shown.append(f"--optimizer kfac: {KFAC_DEFAULTS[name]:g}")
    return "".join(f", {text}" for text in shown)


def _configure_sequences(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("character models (--model gpt or lstm, --dataset names)")
    add = group.add_argument
    add("--context", type=number(int), help="characters a window holds (default 32)")
    add("--width", type=number(int), help="gpt: features per position (default 64); lstm: "
        "hidden units (default 128)")  # fmt: skip
    add("--depth", type=number(int), help="gpt: transformer blocks (default 2)")
    add("--heads", type=number(int), help="gpt: attention heads, dividing --width (default 4)")
    add(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="skip the bigram and MLP baselines at the end (the MLP trains for ~30 s)",
    )


def run(args: argparse.Namespace) -> int:
    from jaxbp.cli._train_run import train

    return train(args)
