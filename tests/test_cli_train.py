"""`jaxbp train` as a user runs it: real processes, files left, kill and resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from jaxbp import checkpoint
from jaxbp.cli import main

SMALL = ["--layers", "16", "--batch-size", "64", "--no-progress"]


def _jaxbp(*args, timeout=120, **kw):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "jaxbp", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kw,
    )


def test_train_writes_every_file_and_reports(tmp_path):
    result = _jaxbp("train", *SMALL, "--epochs", "3", "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert "largest relative error" in result.stdout and "test accuracy" in result.stdout
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.npz",
        "config.json",
        "metrics.jsonl",
        "plot.png",
    ]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert {"loss", "eval_loss", "eval_accuracy"} <= set(lines[0])
    assert json.loads((run / "config.json").read_text())["layers"] == [16]
    assert (run / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert checkpoint.load(run / "checkpoint.npz")[1]["epoch"] == 3


def _params(path):
    arrays, _ = checkpoint.load(path)
    return {k: v for k, v in arrays.items() if k.startswith("['params']")}


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    args = [*SMALL, "--epochs", "40", "--checkpoint-every", "2"]
    whole = _jaxbp("train", *args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    killed = tmp_path / "killed"
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jaxbp", "train", *args, "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    metrics = killed / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until a checkpoint exists and training goes on
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = checkpoint.load(killed / "checkpoint.npz")[1]["epoch"]
    assert 2 <= saved < 40, "the kill must land mid-training, after a checkpoint"
    resumed = _jaxbp("train", *args, "--out", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = _params(tmp_path / "whole" / "checkpoint.npz"), _params(killed / "checkpoint.npz")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert epochs == list(range(1, 41)), "metrics.jsonl holds each epoch once"


def test_divergence_exits_1_with_one_line_and_keeps_files(tmp_path, capsys):
    code = main(["train", *SMALL, "--optimizer", "sgd", "--lr", "1e38", "--schedule", "constant",
                 "--epochs", "3", "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "loss became" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "-3"], "--epochs: must be positive"),
        (["--batch-size", "0"], "--batch-size: must be positive"),
        (["--dataset", "mnits"], "unknown dataset 'mnits'"),
        (["--activation", "rectifier"], "unknown activation 'rectifier'"),
        (["--loss", "l2"], "unknown loss 'l2'"),
        (["--layers", "a,b"], "comma-separated ints"),
        (["--out", "/proc/jaxbp-cannot-write"], "cannot write to output folder"),
        (["--optimizer", "lbfgs2"], "invalid choice"),
        (["--devices", "64"], "local device(s) present"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, message):
    try:
        code = main(["train", "--out", str(tmp_path / "run"), *args])
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_arguments_in_a_real_process():
    result = _jaxbp("train", "--epochs", "-3")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr


def test_an_existing_run_is_not_overwritten(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *SMALL, "--epochs", "1", "--out", out]) == 0
    before = (tmp_path / "run" / "checkpoint.npz").read_bytes()
    capsys.readouterr()
    assert main(["train", *SMALL, "--epochs", "1", "--out", out]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoint.npz").read_bytes() == before
    assert main(["train", *SMALL, "--lr", "0.5", "--epochs", "2", "--out", out, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "lr" in err
    assert main(["train", *SMALL, "--epochs", "2", "--out", out, "--resume"]) == 0
    assert checkpoint.load(tmp_path / "run" / "checkpoint.npz")[1]["epoch"] == 2


@pytest.mark.parametrize("grad", ["fa", "dfa", "autodiff"])
def test_other_gradient_engines_train(tmp_path, capsys, grad):
    assert main(["train", *SMALL, "--epochs", "2", "--grad", grad, "--out", str(tmp_path)]) == 0
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("verb", ["train", "check", "explain", "bench"])
def test_every_verb_has_help(verb):
    result = _jaxbp(verb, "--help")
    assert result.returncode == 0 and "usage: jaxbp " + verb in result.stdout


FOUR_DEVICES = textwrap.dedent("""
    import jax, numpy as np, optax
    from jaxbp import datasets, mlp, softmax_cross_entropy
    from jaxbp.train import fit
    assert len(jax.devices()) == 4, jax.devices()
    (x, y), test = datasets.load("digits")
    model = mlp([32, 10], "relu")
    _, params = model.init(jax.random.PRNGKey(0), (64,))
    run = lambda devices: fit(model, softmax_cross_entropy, params, (x, y),
                              optimizer=optax.adam(1e-3),
                              epochs=3, batch_size=64, key=jax.random.PRNGKey(1), devices=devices,
                              eval_data=test, progress=False)
    multi, h4 = run(None)
    single, h1 = run(jax.devices()[:1])
    err = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in
              zip(jax.tree.leaves(multi), jax.tree.leaves(single)))
    acc4, acc1 = h4["eval_accuracy"][-1], h1["eval_accuracy"][-1]
    print(f"max_rel_diff={err:.2e} acc4={acc4:.4f} acc1={acc1:.4f}")
    assert err < 1e-4, err
""")


def test_data_parallel_on_four_cpu_devices_matches_one():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    result = subprocess.run(
        [sys.executable, "-c", FOUR_DEVICES], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max_rel_diff=" in result.stdout
    print(result.stdout)
