"""What `jaxbp train` builds when given no network, and its gradient check on the first batch: the
README's first command, one epoch of it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxbp import checkpoint
from jaxbp import layers as L
from jaxbp.cli import build_parser, main
from jaxbp.cli._sequence import sequence_model
from jaxbp.cli._train_options import resolve_defaults

KEY = jax.random.PRNGKey(0)

ONE_EPOCH = ["--epochs", "1", "--no-progress"]


def _first_batch_error(printed: str) -> float:
    found = re.findall(r"backprop vs jax\.grad, relative error (\S+) \(float32\)", printed)
    assert len(found) == 1, printed
    return float(found[0])


def test_the_default_run_is_the_readmes_network_and_its_check_passes(tmp_path, capsys):
    """No flags: 64-512-256-10 ReLU on digits. Its first-batch check prints backprop's relative
    error against jax.grad; float32 sums in another order put it near 1e-7, and 1e-5 (~80 ulps)
    is the README's bound for the same comparison."""
    run = tmp_path / "run"
    assert main(["train", *ONE_EPOCH, "--out", str(run)]) == 0
    out, err = capsys.readouterr()
    assert _first_batch_error(out) <= 1e-5 and "warning" not in err
    config = json.loads((run / "config.json").read_text())
    assert config["layers"] == [512, 256] and config["activation"] == "relu"
    # and with no --out, the run goes to runs/train (the README's first command)
    assert build_parser().parse_args(["train"]).out == Path("runs/train")
    assert config["dataset"] == "digits"
    arrays, _ = checkpoint.load(run / "checkpoint.npz")
    shapes = sorted(a.shape for k, a in arrays.items() if k.startswith("['params']"))
    assert shapes == sorted([(64, 512), (512,), (512, 256), (256,), (256, 10), (10,)])


def test_a_wrong_rule_is_flagged_by_the_first_batch_check(tmp_path, capsys, monkeypatch):
    """Dense's dW doubled: the check's relative error is far above its 1e-4 bound, and a warning
    on stderr says so (training goes on)."""

    def doubled(self, params, x, dy):
        dparams, dx = original(self, params, x, dy)
        return {"W": 2 * dparams["W"], "b": dparams["b"]}, dx

    original = L.Dense.backward
    monkeypatch.setattr(L.Dense, "backward", doubled)
    args = ["--layers", "8", "--batch-size", "16", *ONE_EPOCH, "--out", str(tmp_path / "run")]
    assert main(["train", *args]) == 0
    out, err = capsys.readouterr()
    assert _first_batch_error(out) > 0.1
    assert err.startswith("warning: backprop and jax.grad disagree on the first batch"), err


@pytest.mark.parametrize(
    "model, expected",
    [
        ("gpt", dict(epochs=12, depth=2, width=64, heads=4, context=32, parameters=105_627)),
        ("lstm", dict(width=128, context=32, parameters=104_027)),
    ],
)
def test_the_character_runs_are_the_readmes(model, expected):
    """`jaxbp train --model gpt|lstm` resolves to the README's network (2 blocks, width 64, 4
    heads, context 32, 12 epochs; an LSTM of 128 units) with its table's parameter count."""
    args = build_parser().parse_args(["train", "--model", model])
    resolve_defaults(args)
    params = jax.eval_shape(lambda: sequence_model(vars(args)).init(KEY, (args.context,))[1])
    got = {name: getattr(args, name) for name in expected if name != "parameters"}
    got["parameters"] = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    assert got == expected


@pytest.mark.parametrize(
    "model, epochs, lr", [("cnn", 60, 3e-3), ("resnet", 40, 1e-3), (None, 40, 1e-3)]
)
def test_the_image_recipes_are_the_readmes(model, epochs, lr):
    """The cnn trains 60 epochs at a peak rate of 3e-3 (the README's recipe); the rest 40 at
    1e-3, adamw with decay 1e-4."""
    args = build_parser().parse_args(["train", *(["--model", model] if model else [])])
    resolve_defaults(args)
    assert (args.epochs, args.lr, args.optimizer, args.weight_decay) == (epochs, lr, "adamw", 1e-4)


def test_the_kfac_defaults_are_the_readmes():
    """--optimizer kfac: lr 0.05, 10 epochs, damping 0.1, inverses every 5 steps, no weight
    decay (the README's K-FAC section); given flags still win."""
    args = build_parser().parse_args(["train", "--optimizer", "kfac"])
    resolve_defaults(args)
    assert (args.lr, args.epochs, args.damping, args.inverse_every, args.weight_decay) == (
        0.05, 10, 0.1, 5, None,
    )  # fmt: skip
    args = build_parser().parse_args(["train", "--optimizer", "kfac", "--epochs", "3"])
    resolve_defaults(args)
    assert args.epochs == 3
