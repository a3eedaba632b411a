"""jaxbp train's settings that the verb and the code that runs it share: a leaf of both, so
neither imports the other."""

from __future__ import annotations

import argparse

from jaxbp.cli._common import UsageError

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


def resolve_defaults(args: argparse.Namespace) -> None:
    """Fill the settings left to defaults that depend on --model, and check the combination of
    --model and --dataset (a character model trains on names, and only it does)."""
    sequence = args.model in SEQUENCE_MODELS
    if args.dataset is None:
        args.dataset = "names" if sequence else "digits"
    if sequence and args.dataset != "names":
        raise UsageError(
            f"--model {args.model} is a character model: it trains on --dataset names "
            f"(its default), not {args.dataset}"
        )
    if args.dataset == "names" and not sequence:
        raise UsageError(
            "--dataset names holds character sequences: train it with --model gpt or --model lstm"
        )
    given = [n for n in SEQUENCE_ONLY if getattr(args, n) is not None]
    if not sequence and given:
        raise UsageError(f"--{given[0]} applies to --model gpt or lstm only")
    if args.model == "lstm" and (args.depth is not None or args.heads is not None):
        raise UsageError("--depth and --heads apply to --model gpt only")
    defaults = SEQUENCE_DEFAULTS[args.model] | {"context": 32} if sequence else DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
