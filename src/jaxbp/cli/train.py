"""Train an MLP or a preset network with backprop on a bundled or user dataset (~97% on digits),
or a character model (--model gpt or lstm) on the bundled surnames.

Before training, backprop's gradient on the first batch is checked against jax.grad. Into --out
go config.json (the settings, defaults resolved), metrics.jsonl (one JSON object per epoch),
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
  jaxbp train --model gpt --out runs/gpt        # a few minutes on 2 cores; jaxbp sample runs/gpt
  jaxbp train --model lstm --out runs/lstm
  jaxbp train --grad dp --clip-norm 1 --noise-multiplier 1.1 --out runs/dp
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxbp.cli import number
from jaxbp.layers.models import PRESETS

HELP = "train a network (default: an MLP on digits, ~97% test accuracy)"
OPTIMIZERS = ("adamw", "adam", "sgd", "momentum", "rmsprop")
GRADS = ("backprop", "autodiff", "fa", "dfa", "dp")
# What --resume may change; `out` names the same folder however it is spelt.
RESUMABLE = {"epochs", "resume", "overwrite", "progress", "checkpoint_every", "devices", "out"}
RESUMABLE |= {"coordinator", "num_processes", "process_id"}  # where it runs, not what it computes
RESUMABLE |= {"baselines"}  # a report at the end, not part of the training
SEQUENCE_MODELS = {
    "gpt": "a small GPT (pre-norm transformer, causal attention) over --context characters",
    "lstm": "an LSTM character model (Karpathy's char-rnn): embedding 64, --width hidden units",
}
# Settings whose default depends on --model: None on the command line, resolved here.
DEFAULTS = {"epochs": 40, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-4}
SEQUENCE_DEFAULTS = {  # sized so a run takes a few minutes on 2 CPU cores
    "gpt": DEFAULTS | dict(epochs=12, lr=6e-3, weight_decay=0.1, width=64, depth=2, heads=4),
    "lstm": DEFAULTS | dict(epochs=12, lr=6e-3, weight_decay=0.1, width=128),
}
SEQUENCE_ONLY = ("context", "width", "depth", "heads")


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
    add("--lr", type=number(float), help=f"peak learning rate (default 1e-3{_for_sequences('lr')})")
    add("--schedule", choices=("cosine", "constant"), default="cosine", help="default cosine")
    add(
        "--weight-decay",
        type=number(float, zero=True),
        help=f"for adamw (default 1e-4{_for_sequences('weight_decay')})",
    )
    add("--epochs", type=number(int), help=f"default 40{_for_sequences('epochs')}")
    add("--batch-size", type=number(int), help=f"default 32{_for_sequences('batch_size')}")
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


def _for_sequences(name: str) -> str:
    """', gpt: 6e-3, ...': the defaults that --model gpt or lstm sets otherwise."""
    shown = [f"{m}: {d[name]:g}" for m, d in SEQUENCE_DEFAULTS.items() if d[name] != DEFAULTS[name]]
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


def resolve_defaults(args: argparse.Namespace) -> None:
    """Fill the settings left to defaults that depend on --model, and check the combination of
    --model and --dataset (a character model trains on names, and only it does)."""
    sequence = args.model in SEQUENCE_MODELS
    if args.dataset is None:
        args.dataset = "names" if sequence else "digits"
    if sequence and args.dataset != "names":
        raise ValueError(
            f"--model {args.model} is a character model: it trains on --dataset names "
            f"(its default), not {args.dataset}"
        )
    if args.dataset == "names" and not sequence:
        raise ValueError(
            "--dataset names holds character sequences: train it with --model gpt or --model lstm"
        )
    given = [n for n in SEQUENCE_ONLY if getattr(args, n) is not None]
    if not sequence and given:
        raise ValueError(f"--{given[0]} applies to --model gpt or lstm only")
    if args.model == "lstm" and (args.depth is not None or args.heads is not None):
        raise ValueError("--depth and --heads apply to --model gpt only")
    defaults = SEQUENCE_DEFAULTS[args.model] | {"context": 32} if sequence else DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


def run(args: argparse.Namespace) -> int:
    from jaxbp.cli._train_run import train

    return train(args)
