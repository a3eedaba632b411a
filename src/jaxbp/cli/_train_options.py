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
PRESET_DEFAULTS = {  # the cnn: at the defaults it ended at 98.33-98.61% on digits, under its goal
    "cnn": DEFAULTS | dict(epochs=60, lr=3e-3),
}
SEQUENCE_DEFAULTS = {  # sized so a run takes under a minute on 2 idle CPU cores
    "gpt": DEFAULTS | dict(epochs=12, lr=6e-3, weight_decay=0.1, width=64, depth=2, heads=4),
    "lstm": DEFAULTS | dict(epochs=12, lr=6e-3, weight_decay=0.1, width=128),
}
SEQUENCE_ONLY = ("context", "width", "depth", "heads")
# --optimizer kfac's own settings, its learning rate (a natural-gradient step, larger than
# adamw's) and fewer epochs (each costs more, and it needs fewer): on digits' default MLP damping
# 1e-2 diverged at every learning rate tried (0.01-0.2), 0.1 trained at 0.01 and 0.05.
KFAC_DEFAULTS = {"damping": 0.1, "inverse_every": 5, "lr": 0.05, "epochs": 10}
KFAC_ONLY = ("damping", "inverse_every")


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
    if args.weight_decay is not None and args.optimizer != "adamw":
        raise UsageError(
            f"--weight-decay applies to --optimizer adamw only (decoupled decay), not "
            f"{args.optimizer}: drop it, or train with adamw"
        )
    given = [n for n in KFAC_ONLY if getattr(args, n, None) is not None]
    if args.optimizer != "kfac" and given:
        flag = "--" + given[0].replace("_", "-")
        raise UsageError(f"{flag} applies to --optimizer kfac only, not {args.optimizer}")
    if args.optimizer == "kfac" and args.grad != "backprop":
        raise UsageError(
            f"--optimizer kfac takes its curvature from backprop's own sweep: it trains with "
            f"--grad backprop only, not {args.grad}"
        )
    defaults = PRESET_DEFAULTS.get(args.model, DEFAULTS)
    if sequence:
        defaults = SEQUENCE_DEFAULTS[args.model] | {"context": 32}
    if args.optimizer == "kfac":
        defaults = defaults | KFAC_DEFAULTS
    for name, value in defaults.items():
        if name == "weight_decay" and args.optimizer != "adamw":
            continue  # no decay to default: config.json records none
        if getattr(args, name, None) is None:
            setattr(args, name, value)
