"""Multi-process training (jax.distributed): two real processes on a loopback port.

Each process has one CPU device and gloo collectives; together they must train like one process
over two simulated devices. Every launch is bounded in time (SUBPROCESS_TIMEOUT_S) and kills its
processes at the first failure, showing their stderr, so nothing hangs; one whose coordinator
could not bind its port (taken by another program since _free_port released it) is retried on a
fresh port.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import SUBPROCESS_TIMEOUT_S

from jaxbp import checkpoint
from jaxbp.cli import main

# Its module fixture is costly: one worker runs the whole module, so the fixture runs once.
pytestmark = pytest.mark.xdist_group("distributed")

LR = 0.05  # plain SGD, whose steps pass rounding on as it is; see below

# The tolerances, from the arithmetic. A step's loss and gradient are means over a batch of 32.
# One device sums the 32 terms in its own order; two devices each sum 16 and the all-reduce adds
# the two partial sums. A float32 sum of k terms is within (k - 1) u sum|terms| of the exact one,
# u = 2^-24, so the two means differ by at most (31 + 15 + 1) u = 2.8e-6 of the mean of the
# terms' magnitudes: of the loss (its terms are positive), and of mean_i |g_i| for each gradient
# entry, at most 0.9 here (|p - y| <= 1 at the output; measured at init and after training, for
# both nets). SGD moves a weight by lr times that: 32 steps at lr 0.05 give 4.0e-6 per weight;
# ATOL_PARAMS leaves 2x for the trajectory to amplify it. (Adam would not do: its step
# lr m / sqrt(v) is scale-free, so on an entry whose gradient is ~0 by cancellation, rounding
# can flip its sign and move the weight by a whole lr.) A loss moves by at most ||grad L|| ||dw||,
# each at most the norm over entries of mean_i |g_i|, 1.4 for both nets: 1.4 * 4.0e-6 * 1.4
# / 0.37 (the smallest loss) = 2.1e-5 relative, plus its own 2.8e-6; over jaxbp train's 62 steps
# 4.5e-5. RTOL_LOSS leaves 2x. A real mistake (another half of a batch, a shard summed twice)
# changes a step's gradient by about its size (~0.2), so weights by ~lr * 32 * 0.2 = 3e-2.
ATOL_PARAMS = 1e-5
RTOL_LOSS = 1e-4

WORKER = textwrap.dedent(
    """
    import json, sys
    import jax

    spec = json.loads(sys.argv[1])
    me = spec.get("id", 0)
    if "port" in spec:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            f"127.0.0.1:{spec['port']}", 2, me, initialization_timeout=300
        )

    import numpy as np
    import optax
    from jaxbp import checkpoint, datasets, mlp, softmax_cross_entropy
    from jaxbp.train import fit

    writes = []  # every checkpoint this process writes
    save = checkpoint.save
    checkpoint.save = lambda path, *a, **k: (writes.append(str(path)), save(path, *a, **k))[1]
    (x, y), test = datasets.load("moons", n_train=256, n_test=128)
    model = mlp([16, 2], "tanh")
    _, init = model.init(jax.random.PRNGKey(0), (2,))

    def run(epochs, folder=None, data=(x, y), seed=42, start=init, **options):
        params, history = fit(
            model, softmax_cross_entropy, start, data, optimizer=optax.sgd(spec["lr"]),
            epochs=epochs, batch_size=32, key=jax.random.PRNGKey(seed), eval_data=test,
            progress=False, checkpoint_dir=folder, **options,
        )
        return {
            "params": [np.asarray(leaf).tolist() for leaf in jax.tree.leaves(params)],
            "history": {k: v for k, v in history.items() if k != "epoch_time"},
        }

    def refusal(*args, **options):
        try:
            run(*args, **options)
        except ValueError as error:
            return str(error)

    tmp, out = spec["tmp"], {}
    if "port" not in spec:  # the reference: one process
        out["two devices"] = run(4)
        out["one device"] = run(4, devices=jax.devices()[:1])
    else:
        out["whole"] = run(4, f"{tmp}/whole")
        run(2, f"{tmp}/resumed")
        out["resumed"] = run(4, f"{tmp}/resumed", resume=True)
        # Process 1 cannot see process 0's checkpoint, as on a filesystem they do not share.
        out["unshared"] = refusal(4, f"{tmp}/resumed" if me == 0 else f"{tmp}/empty", resume=True)
        out["other data"] = refusal(1, data=(x, y) if me == 0 else (x[::-1], y[::-1]))
        out["other key"] = refusal(1, seed=42 + me)
        out["other params"] = refusal(1, start=jax.tree.map(lambda a: a + me, init))
        out["writes"] = writes
    with open(spec["out"], "w") as f:
        json.dump(out, f)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FLAGS = os.environ.get("XLA_FLAGS", "")


def _env(devices: int, port: int | None = None) -> dict:
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        # conftest.py's XLA flags (LLVM's optimisations off), as the suite's other processes have
        "XLA_FLAGS": f"{FLAGS} --xla_force_host_platform_device_count={devices}".strip(),
        "MPLBACKEND": "Agg",
    }
    if port is not None:  # process 0's coordinator listens on loopback only, not on every address
        env["JAX_COORDINATOR_BIND_ADDRESS"] = f"127.0.0.1:{port}"
    return env


class _PortTaken(Exception):
    """Process 0's coordinator could not bind its port."""


# What jax (gRPC) writes when the coordinator's port is taken.
PORT_TAKEN = ("Failed to add port to server", "Failed to start RPC server", "ddress already in use")


def _launch(
    commands: list[tuple[list[str], dict]], folder, timeout=SUBPROCESS_TIMEOUT_S
) -> list[str]:
    """Run every (argv, env) at once and return their stdouts; all must exit 0 within timeout.

    The first to fail, or the deadline, kills the others: a process whose peer died would
    otherwise wait minutes in a collective. Output goes to files, so no pipe fills and blocks.
    """
    procs, logs = [], []
    for i, (argv, env) in enumerate(commands):
        out, err = folder / f"process{i}.out", folder / f"process{i}.err"
        with out.open("w") as o, err.open("w") as e:
            procs.append(subprocess.Popen(argv, stdout=o, stderr=e, env=env))
        logs.append((out, err))
    deadline, late = time.monotonic() + timeout, False
    try:
        while any(p.poll() is None for p in procs):
            late = time.monotonic() > deadline
            if late or any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
    if any(p.returncode != 0 for p in procs):
        errors = [err.read_text() for _, err in logs]
        if not late and any(s in e for e in errors for s in PORT_TAKEN):
            raise _PortTaken(errors[0][-3000:])
        why = f"still running after {timeout} s" if late else "a process failed"
        report = [
            f"--- process {i}: exit {p.returncode}{' (killed)' * (p.returncode < 0)}, stderr:\n"
            f"{error[-3000:]}"
            for i, (p, error) in enumerate(zip(procs, errors))
        ]
        pytest.fail("\n".join([f"{why}; every process was stopped", *report]))
    return [out.read_text() for out, _ in logs]


def _launch_on_a_free_port(commands_for, folder, tries: int = 3):
    """_launch(commands_for(port, where), where) on a free port, in a fresh folder `where`; again
    on another port, up to `tries` times, if another program took it before the coordinator bound
    it (_free_port must release the port it finds). Returns (stdouts, where)."""
    for attempt in range(tries):
        where = folder / f"attempt{attempt}"
        where.mkdir()
        try:
            return _launch(commands_for(_free_port(), where), where), where
        except _PortTaken as error:
            last = str(error)
    pytest.fail(f"the coordinator found its port taken {tries} times; last stderr:\n{last}")


def _worker(spec: dict) -> list[str]:
    return [sys.executable, "-c", WORKER, json.dumps(spec)]


def _worker_commands(port: int, where) -> list[tuple[list[str], dict]]:
    """Two processes (one device each) and, at the same time, one process over two devices."""
    specs = [{"id": 0, "port": port}, {"id": 1, "port": port}, {}]
    for i, spec in enumerate(specs):
        spec |= {"tmp": str(where), "out": str(where / f"result{i}.json"), "lr": LR}
    return [(_worker(spec), _env(1, port) if "port" in spec else _env(2)) for spec in specs]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    _, tmp = _launch_on_a_free_port(_worker_commands, tmp_path_factory.mktemp("distributed"))
    first, second, reference = (json.loads((tmp / f"result{i}.json").read_text()) for i in range(3))
    return first, second, reference, tmp


def _assert_close(got: dict, want: dict, what: str) -> None:
    for u, v in zip(got["params"], want["params"], strict=True):
        np.testing.assert_allclose(u, v, rtol=0, atol=ATOL_PARAMS, err_msg=f"{what}: params")
    for name in ("loss", "eval_loss"):
        np.testing.assert_allclose(
            got["history"][name], want["history"][name], rtol=RTOL_LOSS, err_msg=f"{what}: {name}"
        )
    # A parameter that moves by ATOL_PARAMS may flip one borderline test example of 128.
    np.testing.assert_allclose(
        got["history"]["eval_accuracy"], want["history"]["eval_accuracy"], atol=1 / 128 + 1e-6
    )


def test_two_processes_train_like_one_process(runs):
    first, second, reference, _ = runs
    assert len(first["whole"]["history"]["loss"]) == 4
    # The replicas hold one value: both processes return the same bits.
    assert first["whole"] == second["whole"]
    _assert_close(first["whole"], reference["two devices"], "two processes vs two devices")
    _assert_close(first["whole"], reference["one device"], "two processes vs one device")


def test_only_process_zero_writes_the_checkpoint(runs):
    first, second, _, tmp = runs
    whole = str(tmp / "whole" / "checkpoint.npz")
    resumed = str(tmp / "resumed" / "checkpoint.npz")
    assert first["writes"] == [whole] * 4 + [resumed] * 4  # every epoch, then 2 and 2 resumed
    assert second["writes"] == []
    assert sorted(os.listdir(tmp / "whole")) == ["checkpoint.npz"]
    saved, metadata = checkpoint.load(whole)
    assert metadata["epoch"] == 4
    leaves = [leaf for name, leaf in saved.items() if name.startswith("['params']")]
    assert all(
        np.array_equal(u, np.asarray(v, np.float32))
        for u, v in zip(leaves, first["whole"]["params"], strict=True)
    )


def test_resume_across_processes_reaches_the_uninterrupted_bits(runs):
    first, second, _, _ = runs
    assert first["resumed"] == first["whole"]  # the same program, from the checkpoint's bits
    assert second["resumed"] == second["whole"]


def test_processes_that_disagree_are_refused_in_every_process(runs):
    first, second, _, _ = runs
    for out in (first, second):
        assert "the epoch to resume from differs between process 1 and process 0" in str(
            out["unshared"]
        )
        assert "train_data differs between process 1 and process 0" in str(out["other data"])
        assert "key differs between process 1 and process 0" in str(out["other key"])
        assert "params or optimizer state differs between process 1 and process 0" in str(
            out["other params"]
        )


def _done(stdout: str) -> dict[str, float]:
    line = next(s for s in stdout.splitlines() if s.startswith("done:"))
    numbers = re.search(
        r"train loss ([\d.]+), test loss ([\d.]+), test accuracy ([\d.]+)%", line
    ).groups()
    return dict(zip(("train loss", "test loss", "test accuracy"), map(float, numbers)))


def test_jaxbp_train_over_two_processes(tmp_path):
    common = [sys.executable, "-m", "jaxbp", "train", "--dataset", "moons", "--layers", "8"]
    common += ["--epochs", "2", "--optimizer", "sgd", "--lr", str(LR), "--no-progress"]

    def commands(port, where):
        def process(i, out):
            at = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
            return [*common, "--out", str(out), *at, "--process-id", str(i)], _env(1, port)

        single = ([*common, "--out", str(where / "single")], _env(2))
        return [process(0, where / "run"), process(1, where / "process1"), single]

    stdouts, where = _launch_on_a_free_port(commands, tmp_path)
    run, elsewhere, single = where / "run", where / "process1", where / "single"
    assert sorted(os.listdir(run)) == sorted(os.listdir(single))
    assert {"config.json", "metrics.jsonl", "checkpoint.npz", "plot.png"} <= set(os.listdir(run))
    assert not elsewhere.exists() and stdouts[1] == ""  # process 1 writes and prints nothing
    assert "2 device(s)" in stdouts[0]
    got, want = _done(stdouts[0]), _done(stdouts[2])
    # Printed to 4 decimals (losses: 5e-5 each) and 0.01% (accuracy, 500 examples: 0.2% each).
    for name in ("train loss", "test loss"):
        assert got[name] == pytest.approx(want[name], abs=1e-4 + RTOL_LOSS * want[name])
    assert got["test accuracy"] == pytest.approx(want["test accuracy"], abs=0.2 + 1e-6)
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(s) for s in (single / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    for name in ("loss", "eval_loss"):
        np.testing.assert_allclose(
            [m[name] for m in lines], [m[name] for m in reference], rtol=RTOL_LOSS
        )


@pytest.mark.parametrize(
    "options, message",
    [
        (
            ["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
            "--process-id 2 must be below --num-processes 2",
        ),
        (
            ["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"],
            "expected HOST:PORT",
        ),
        (
            ["--coordinator", "127.0.0.1:70000", "--num-processes", "2", "--process-id", "0"],
            "expected HOST:PORT",
        ),
        (["--num-processes", "2", "--process-id", "0"], "needs --coordinator HOST:PORT"),
        (["--coordinator", "127.0.0.1:1234", "--num-processes", "2"], "--process-id"),
        (["--num-processes", "0"], "argument --num-processes"),
        (["--process-id", "-1"], "argument --process-id"),
    ],
)
def test_bad_distributed_options_exit_2_with_one_line(
    tmp_path, capsys, monkeypatch, options, message
):
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    try:
        code = main(["train", "--out", str(tmp_path / "run"), *options])
    except SystemExit as exit:  # argparse's own refusals
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_coordinator_address_from_the_environment_is_validated(tmp_path, capsys, monkeypatch):
    # jax.distributed.initialize reads JAX_COORDINATOR_ADDRESS itself; jax 0.10.2 reads no
    # variable for the process count or id outside cluster managers (SLURM, Open MPI, ...).
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:port")
    code = main(
        ["train", "--out", str(tmp_path / "run"), "--num-processes", "2", "--process-id", "1"]
    )
    assert code == 2
    assert "JAX_COORDINATOR_ADDRESS '127.0.0.1:port': expected HOST:PORT" in capsys.readouterr().err
