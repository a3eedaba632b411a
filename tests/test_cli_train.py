"""`jaxbp train` as a user runs it: real processes, files left, kill and resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SUBPROCESS_TIMEOUT_S

from jaxbp import checkpoint, mlp, softmax_cross_entropy
from jaxbp.cli import main
from jaxbp.train import CHECKPOINT_NAME, TrainingDiverged, fit

SMALL = ["--layers", "16", "--batch-size", "64", "--no-progress"]


def _jaxbp(*args, timeout=SUBPROCESS_TIMEOUT_S, **kw):
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
    assert "relative error" in result.stdout and "test accuracy" in result.stdout
    assert "done: 3 epochs in" in result.stdout and "steps/s after compiling" in result.stdout
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
    config = json.loads((run / "config.json").read_text())
    assert config["layers"] == [16]
    # defaults the data decides are recorded as they were resolved, not as null
    assert config["loss"] == "softmax_cross_entropy" and config["task"] == "classification"
    assert config["devices"] >= 1
    assert (run / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert checkpoint.load(run / "checkpoint.npz")[1]["epoch"] == 3


def _params(path):
    arrays, _ = checkpoint.load(path)
    return {k: v for k, v in arrays.items() if k.startswith("['params']")}


# Runs `jaxbp train` and sends itself SIGKILL right after its k-th checkpoint is on disk: the
# kill lands at a known epoch, mid-run, on any machine however fast or slow.
KILL_AFTER_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    from jaxbp import checkpoint
    from jaxbp.cli import main

    save, saves = checkpoint.save, []

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        saves.append(1)
        if len(saves) == int(os.environ["KILL_AFTER_SAVES"]):
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.save = save_then_die
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.parametrize(
    "model", [SMALL, ["--model", "residual-bn", "--batch-size", "64", "--no-progress"]],
    ids=["mlp", "residual-bn (state)"],
)  # fmt: skip
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, capsys, model):
    """Only the run that is killed needs a process of its own: the uninterrupted run and the
    resume run in this one (no start-up cost), with the same XLA flags the child inherits."""
    args = [*model, "--epochs", "10", "--checkpoint-every", "2"]
    assert main(["train", *args, "--out", str(tmp_path / "whole")]) == 0
    killed = tmp_path / "killed"
    env = {**os.environ, "MPLBACKEND": "Agg", "KILL_AFTER_SAVES": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_SAVE, "train", *args, "--out", str(killed)],
        capture_output=True, text=True, env=env, timeout=SUBPROCESS_TIMEOUT_S,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert checkpoint.load(killed / "checkpoint.npz")[1]["epoch"] == 6  # the third save
    capsys.readouterr()
    assert main(["train", *args, "--out", str(killed), "--resume"]) == 0
    assert "resumed from epoch 6" in capsys.readouterr().out
    # The same program on the same machine, in two pieces: the same bits, state included.
    a, b = (checkpoint.load(p / "checkpoint.npz")[0] for p in (tmp_path / "whole", killed))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    if "--model" in model:
        assert any(k.startswith("['state']") for k in a), sorted(a)
    metrics = killed / "metrics.jsonl"
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert epochs == list(range(1, 11)), "metrics.jsonl holds each epoch once"


def test_divergence_exits_1_with_one_line_and_keeps_files(tmp_path, capsys):
    code = main(["train", *SMALL, "--optimizer", "sgd", "--lr", "1e38", "--schedule", "constant",
                 "--epochs", "3", "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "loss became" in err and len(err.strip().splitlines()) == 1
    # it blows up in epoch 1: there is nothing to keep, and the message must not claim otherwise
    assert "no epoch had finished" in err and "kept" not in err
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


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
        (["--lr", "nan"], "--lr: must be finite"),
        (["--weight-decay", "-1"], "--weight-decay: must be >= 0"),
        (["--optimizer", "sgd", "--weight-decay", "0.1"], "applies to --optimizer adamw only"),
        (["--loss", "mse"], "digits has integer class labels: use softmax_cross_entropy"),
        (["--loss", "binary_cross_entropy"], "integer class labels"),
        (["--dataset", "xor", "--loss", "softmax_cross_entropy"], "single output is always 0"),
        (["--resume"], "no run to resume"),
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
    assert not (tmp_path / "run").exists(), "nothing is written before the arguments check out"


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
    assert "--lr: run has 0.001, you gave 0.5" in err
    assert main(["train", *SMALL, "--epochs", "2", "--out", out, "--resume"]) == 0
    assert checkpoint.load(tmp_path / "run" / "checkpoint.npz")[1]["epoch"] == 2


# Runs `jaxbp train` and, once epoch PAUSE_AT_EPOCH's metrics line is written, prints "paused"
# and waits, holding its folder's lock, to be killed: the kill lands at a known point on any
# machine. With --checkpoint-every 2 and epoch 3, metrics.jsonl is then one epoch ahead of the
# checkpoint, which a resume must cut back.
PAUSE_AFTER_METRICS = textwrap.dedent(
    """
    import os, sys, time
    from jaxbp.cli import _run_folder, main

    writer = _run_folder.metrics_writer

    def pausing_writer(path, resume):
        on_epoch = writer(path, resume)

        def write_then_wait(epoch, metrics):
            on_epoch(epoch, metrics)
            if epoch == int(os.environ["PAUSE_AT_EPOCH"]):
                print("paused", flush=True)
                time.sleep(3600)

        return write_then_wait

    _run_folder.metrics_writer = pausing_writer
    sys.exit(main(sys.argv[1:]))
    """
)


def test_a_second_run_into_a_busy_folder_stops_and_names_the_first(tmp_path, capsys):
    """The first run is another process, holding the folder's flock; the second runs in this
    process (it meets the lock before any work, so no subprocess start is needed), as does the
    resume after the first is killed, paused after epoch 3's metrics line, past the checkpoint
    of epoch 2."""
    run = tmp_path / "run"
    args = [*SMALL, "--schedule", "constant", "--checkpoint-every", "2", "--out", str(run)]
    first = subprocess.Popen(
        [sys.executable, "-c", PAUSE_AFTER_METRICS, "train", *args, "--epochs", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "MPLBACKEND": "Agg", "PAUSE_AT_EPOCH": "3"},
    )
    # a hang guard: if no line comes, the kill ends the read with EOF
    guard = threading.Timer(SUBPROCESS_TIMEOUT_S, first.kill)
    guard.start()
    try:
        assert "paused\n" in first.stdout, "the first run ended before epoch 3"
        capsys.readouterr()
        for extra in (["--overwrite"], ["--resume"], []):
            assert main(["train", *args, "--epochs", "3", *extra]) == 2
            err = capsys.readouterr().err
            assert f"in use by another run (pid {first.pid} on " in err
            assert len(err.strip().splitlines()) == 1
        assert first.poll() is None, "the first run goes on undisturbed"
    finally:
        guard.cancel()
        first.kill()  # SIGKILL: its lock file stays, its lock goes with it
        first.wait()
        first.stdout.close()
    assert checkpoint.load(run / "checkpoint.npz")[1]["epoch"] == 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3  # one past the checkpoint
    assert main(["train", *args, "--epochs", "3", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resumed from epoch 2 " in out and "done: epoch 3 (1 this run) in" in out
    assert "compilation included" in out  # one epoch: no time after compiling
    epochs = [
        json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()
    ]
    assert epochs == [1, 2, 3], "cut back to the checkpoint's epochs, then epoch 3 once"
    assert not (run / checkpoint.LOCK_NAME).exists()


def test_resume_by_any_path_says_where_it_starts_and_what_differs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["train", *SMALL, "--schedule", "constant", "--checkpoint-every", "1"]
    assert main([*args, "--epochs", "1", "--out", "run"]) == 0
    capsys.readouterr()
    assert main([*args, "--epochs", "3", "--out", str(tmp_path / "run"), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resumed from epoch 1 " in out and "done: epochs 2-3 (2 this run) in" in out
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    stale = tmp_path / "run" / ".checkpoint.npz.0123456789ab.tmp"  # as a kill -9 may leave
    stale.write_bytes(b"half a checkpoint")
    assert main([*args, "--epochs", "4", "--out", "../run", "--resume"]) == 0
    assert "done: epoch 4 (1 this run)" in capsys.readouterr().out
    assert not stale.exists()
    files = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    changed = ["--lr", "0.01", "--layers", "8", "--epochs", "5", "--out", "../run", "--resume"]
    assert main([*args, *changed]) == 2
    err = capsys.readouterr().err
    assert "--lr: run has 0.001, you gave 0.01" in err and "--layers: run has 16, you gave 8" in err
    assert main([*args, "--epochs", "3", "--out", "../run", "--resume"]) == 2
    assert "has already trained 4 epochs" in capsys.readouterr().err
    # a finished run resumed: nothing to do, exit 0, and every file stays as it was
    assert main([*args, "--epochs", "4", "--out", "../run", "--resume"]) == 0
    assert "has trained all its 4 epochs; nothing to do" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == files


def test_resume_of_a_folder_without_a_checkpoint_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "missing"):
        assert main(["train", *SMALL, "--out", str(out), "--resume"]) == 2
        assert "no run to resume" in capsys.readouterr().err
    assert list((tmp_path / "empty").iterdir()) == [] and not (tmp_path / "missing").exists()


def _nan_after(steps: int, learning_rate: float = 0.1) -> optax.GradientTransformation:
    """SGD whose updates turn NaN from step `steps` on: training diverges where the test says."""

    def init(params):
        return jnp.zeros((), jnp.int32)

    def update(grads, count, params=None):
        scale = jnp.where(count >= steps, jnp.nan, -learning_rate)
        return jax.tree.map(lambda g: scale * g, grads), count + 1

    return optax.GradientTransformation(init, update)


def test_divergence_keeps_the_last_good_epoch_in_a_checkpoint(tmp_path, key):
    x = jax.random.normal(key, (64, 3))
    y = (x[:, 0] > 0).astype(jnp.int32)
    model = mlp([4, 2], "tanh")
    _, params = model.init(key, (3,))
    options = dict(epochs=6, batch_size=16, key=key, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(TrainingDiverged) as error:  # 4 steps an epoch: epoch 3 goes NaN
        fit(model, softmax_cross_entropy, params, (x, y), optimizer=_nan_after(8),
            checkpoint_every=5, **options)  # fmt: skip
    path = tmp_path / CHECKPOINT_NAME
    assert f"in epoch 3; stopped: kept the parameters of epoch 2 in {path}" in str(error.value)
    arrays, metadata = checkpoint.load(path)
    assert metadata["epoch"] == 2 and len(metadata["history"]["loss"]) == 2
    kept = jax.tree.leaves(error.value.params)
    saved = [v for k, v in arrays.items() if k.startswith("['params']")]
    assert len(kept) == len(saved) and all(np.array_equal(a, b) for a, b in zip(kept, saved))
    # that checkpoint resumes (and, same key and optimizer, diverges in epoch 3 again)
    with pytest.raises(TrainingDiverged, match="epoch 3; stopped: kept the parameters of epoch 2"):
        fit(model, softmax_cross_entropy, params, (x, y), optimizer=_nan_after(8),
            resume=True, **options)  # fmt: skip


@pytest.mark.parametrize("grad", ["fa", "dfa", "autodiff"])
def test_other_gradient_engines_train(tmp_path, capsys, grad):
    assert main(["train", *SMALL, "--epochs", "2", "--grad", grad, "--out", str(tmp_path)]) == 0
    assert "test accuracy" in capsys.readouterr().out


FOUR_DEVICES = textwrap.dedent("""
    import jax, numpy as np, optax
    from jaxbp import datasets, mlp, softmax_cross_entropy
    from jaxbp.train import fit
    assert len(jax.devices()) == 4, jax.devices()
    (x, y), test = datasets.load("digits")
    model = mlp([32, 10], "relu")
    _, params = model.init(jax.random.PRNGKey(0), (64,))
    run = lambda devices: fit(model, softmax_cross_entropy, params, (x, y),
                              optimizer=optax.sgd(0.1),
                              epochs=1, batch_size=64, key=jax.random.PRNGKey(1), devices=devices,
                              eval_data=test, progress=False)
    multi, h4 = run(None)
    single, h1 = run(jax.devices()[:1])
    assert {len(a.sharding.device_set) for a in jax.tree.leaves(multi)} == {4}  # really split
    pairs = list(zip(jax.tree.leaves(multi), jax.tree.leaves(single), strict=True))
    assert len(pairs) == 4
    err = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in pairs)
    acc4, acc1 = h4["eval_accuracy"][-1], h1["eval_accuracy"][-1]
    print(f"max_rel_diff={err:.2e} acc4={acc4:.4f} acc1={acc1:.4f}")
    # Each step's gradient is a mean over 64 examples: one float32 sum on one device, four
    # partial sums of 16 and an all-reduce of 4 on four. A float32 sum of k terms is within
    # (k - 1) u of the sum of their magnitudes (u = 2^-24), so the two means differ by at most
    # (63 + 15 + 3) u = 4.8e-6 of mean_i |g_i| for each entry. SGD passes that on times lr: after
    # S = 22 steps of lr 0.1, 1.1e-5 of the largest mean_i |g_i|, which on this net is at most
    # 2.4 times a leaf's largest entry (the biases, which start at 0; measured at init and after
    # training): 2.5e-5. 1e-4 leaves 4x for the trajectory to amplify it. (Not Adam: its step
    # lr m / sqrt(v) is scale-free, so where a gradient entry is ~0 by cancellation, rounding can
    # flip its sign and move the weight by a whole lr.) A shard seen by the wrong device changes
    # a step's gradient by about its size, so weights by ~lr S |g| ~ 1e-1 of their size.
    assert err < 1e-4, err
""")


def test_data_parallel_on_four_cpu_devices_matches_one():
    # conftest.py's XLA flags (LLVM's optimisations off) as the suite's other processes have
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    env = {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", FOUR_DEVICES],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max_rel_diff=" in result.stdout
    print(result.stdout)
