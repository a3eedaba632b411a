"""The CLI's paths a default run does not take, each a tiny real run checked by what it leaves.

`jaxbp train`: every preset network (each with one of the optimizers, so six runs cover both
lists), --overwrite, --weight-decay, --output-activation, and --devices (in a process of its
own, with two CPU devices). `jaxbp check --directions|--verbose|--targets`, and
`jaxbp bench --quantities first_order curvature --quick` measured for real on a tiny MLP. The
runs are in this process (no start-up cost) and train one epoch on a slice of the data.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest
from conftest import SUBPROCESS_TIMEOUT_S, np_forward, np_loss

from jaxbp import checkpoint, datasets
from jaxbp import layers as L
from jaxbp.cli import main

SLICE = {"train": 192, "test": 96}  # every digit class appears in the first 192 and 96
QUIET = ["--no-progress", "--epochs", "1", "--batch-size", "64"]


def _sliced(monkeypatch) -> None:
    """datasets.load, as the CLI calls it, cut to a slice: an epoch takes 3 steps, not 23."""
    load = datasets.load

    def sliced(name, **options):
        (x, y), (x_test, y_test) = load(name, **options)
        n, m = SLICE["train"], SLICE["test"]
        return (x[:n], y[:n]), (x_test[:m], y_test[:m])

    monkeypatch.setattr(datasets, "load", sliced)


@pytest.fixture
def small_data(monkeypatch):
    _sliced(monkeypatch)


def _saved(run) -> dict[str, dict[str, tuple]]:
    """{"params" | "opt_state" | "state": {key: shape}} of a run's checkpoint."""
    arrays, _ = checkpoint.load(run / "checkpoint.npz")
    out = {"params": {}, "opt_state": {}, "state": {}}
    for name, array in arrays.items():
        top = name[2 : name.index("']")]
        out[top][name] = array.shape
    return out


def _shapes(tree, top: str) -> dict[str, tuple]:
    """{checkpoint key: shape} of a tree saved under `top`."""
    pairs, _ = jax.tree_util.tree_flatten_with_path({top: tree})
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in pairs}


def _optimizer(name: str) -> optax.GradientTransformation:
    """Each --optimizer as optax spells it, with a schedule (its count is part of the state)."""
    lr = optax.cosine_decay_schedule(1e-3, 3)
    return {
        "adamw": optax.adamw(lr, weight_decay=1e-4),
        "adam": optax.adam(lr),
        "momentum": optax.sgd(lr, momentum=0.9),
        "rmsprop": optax.rmsprop(lr),
    }[name]


def _metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


PRESET_RUNS = [  # (preset, optimizer): every preset, and every optimizer but sgd at least once
    ("cnn", "momentum"),
    ("resnet", "rmsprop"),
    ("residual", "adam"),
    ("branched", "adamw"),
    ("dropout", "momentum"),
    ("batchnorm", "adam"),
]
WITH_STATE = {"cnn", "resnet", "batchnorm"}  # the presets with BatchNorm


@pytest.mark.parametrize("model, optimizer", PRESET_RUNS, ids=[m for m, _ in PRESET_RUNS])
def test_every_preset_trains_with_the_optimizer_asked(
    model, optimizer, small_data, tmp_path, capsys
):
    run = tmp_path / model
    args = ["train", "--model", model, "--optimizer", optimizer, *QUIET, "--out", str(run)]
    assert main(args) == 0
    out = capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    assert (config["model"], config["optimizer"], config["epochs"]) == (model, optimizer, 1)
    lr = {"cnn": "0.003"}.get(model, "0.001")  # the cnn's recipe has its own peak rate
    assert f"{optimizer} lr {lr}, 1 device(s)" in out and config["lr"] == float(lr)
    assert f"digits ({SLICE['train']} train, {SLICE['test']} test, classification)" in out
    # float32 gradients of a few thousand terms each: ~1e-7; 1e-4 is the check's float32 bound.
    (error,) = [
        float(s.split("relative error ")[1].split()[0])
        for s in out.splitlines()
        if "relative error" in s
    ]
    assert error < 1e-4, out
    (line,) = _metrics(run)
    assert line["epoch"] == 1 and math.isfinite(line["loss"]) and 0 <= line["eval_accuracy"] <= 1
    assert "done: 1 epoch in" in out and "test accuracy" in out
    # The checkpoint holds the preset's params (images in for cnn and resnet), its BatchNorm
    # state, and the state of the optimizer asked for, as optax itself lays each out.
    net = L.preset(model, 10)
    shape = (8, 8, 1) if model in L.IMAGE_PRESETS else (64,)
    params = jax.eval_shape(lambda k: net.init(k, shape)[1], jax.random.PRNGKey(0))
    saved = _saved(run)
    assert saved["params"] == _shapes(params, "params")
    assert saved["opt_state"] == _shapes(
        jax.eval_shape(_optimizer(optimizer).init, params), "opt_state"
    )
    state = jax.eval_shape(lambda p: L.init_state(net, p), params)
    assert saved["state"] == _shapes(state, "state") and bool(saved["state"]) == (
        model in WITH_STATE
    )
    assert (run / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_optimizers_leave_states_that_tell_them_apart():
    """What the test above tells apart: no two optimizers have the same state's layout."""
    params = {"W": jax.ShapeDtypeStruct((3, 2), np.float32)}
    layouts = [
        frozenset(_shapes(jax.eval_shape(_optimizer(n).init, params), "opt_state"))
        for n in ("adamw", "adam", "momentum", "rmsprop")
    ]
    assert len(set(layouts)) == 4


# --- --overwrite and --weight-decay: two runs of a small MLP into one folder --------------------

# Constant lr, 12 steps an epoch (192 examples, batch 16): the decay is (1 - lr wd) per step.
MLP = ["train", "--layers", "16", "--no-progress", "--batch-size", "16", "--schedule", "constant"]
MLP += ["--epochs", "1"]


# The two runs of decay_runs, a module fixture, are for both tests: one worker runs them.
ONE_WORKER = pytest.mark.xdist_group("cli_paths_decay")


@pytest.fixture(scope="module")
def decay_runs(tmp_path_factory):
    """A run without decay, overwritten by the same run with --weight-decay 100: (the first
    run's files, by name, and the folder)."""
    run = tmp_path_factory.mktemp("decay") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        _sliced(monkeypatch)
        assert main([*MLP, "--weight-decay", "0", "--out", str(run)]) == 0
        # as an earlier character-model run into this folder would have left it
        (run / "baselines.json").write_text('{"validation_nats_per_char": {"lstm": 2.0}}')
        old = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
        assert main([*MLP, "--weight-decay", "100", "--out", str(run), "--overwrite"]) == 0
    return old, run


@ONE_WORKER
def test_overwrite_replaces_every_file_of_the_old_run(decay_runs):
    old, run = decay_runs
    assert json.loads(old["config.json"])["weight_decay"] == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["weight_decay"], config["overwrite"]) == (100, True)
    (first,) = map(json.loads, old["metrics.jsonl"].splitlines())
    (line,) = _metrics(run)  # one line: the old run's was replaced, not appended to
    assert line["epoch"] == first["epoch"] == 1 and line["loss"] != first["loss"]
    assert checkpoint.load(run / "checkpoint.npz")[1]["epoch"] == 1
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["checkpoint.npz", "config.json", "metrics.jsonl", "plot.png"]
    ), "a file the old run left (baselines.json) would describe a run that is gone"
    for name in ("checkpoint.npz", "plot.png"):
        assert (run / name).read_bytes() != old[name], name


@ONE_WORKER
def test_weight_decay_shrinks_the_weights(decay_runs, tmp_path):
    """adamw's decoupled decay multiplies W by (1 - lr wd)^12 = 0.9^12 = 0.28 over the epoch;
    Adam's own steps move an entry by at most lr sqrt(t) <= 3.5e-3 each (|m_hat| / sqrt(v_hat)
    <= sqrt(t) by Cauchy-Schwarz), so they add back at most 0.025 per entry with the decay and
    take off at most 0.042 without it. The first layer's entries start at rms 1/8 (N(0, 1/64)):
    its norm with decay is below 0.8 of its norm without."""
    old, run = decay_runs
    (tmp_path / "old.npz").write_bytes(old["checkpoint.npz"])
    key = "['params'][0]['W']"
    undecayed = checkpoint.load(tmp_path / "old.npz")[0][key]
    decayed = checkpoint.load(run / "checkpoint.npz")[0][key]
    assert np.linalg.norm(decayed) < 0.8 * np.linalg.norm(undecayed)


# --- --output-activation -----------------------------------------------------------------------


def test_output_activation_is_applied_to_what_the_loss_sees(tmp_path, capsys):
    """xor with a sigmoid output and mse: the run's last test loss is the mse of the sigmoid of
    the saved network's output, computed here in NumPy float64 from the checkpoint."""
    run = tmp_path / "xor"
    args = ["train", "--dataset", "xor", "--layers", "4", "--activation", "tanh",
            "--output-activation", "sigmoid", "--loss", "mse", "--optimizer", "sgd", "--lr", "2",
            "--batch-size", "4", "--epochs", "3", "--no-progress", "--out", str(run)]  # fmt: skip
    assert main(args) == 0
    assert "Dense(features=1), Sigmoid()), loss mse" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["output_activation"] == "sigmoid"
    arrays, _ = checkpoint.load(run / "checkpoint.npz")
    dense = [{k: arrays[f"['params'][{i}]['{k}']"] for k in "Wb"} for i in (0, 2)]
    _, (x_test, y_test) = datasets.load("xor")
    with_sigmoid = np_forward(
        L.mlp([4, 1], "tanh", "sigmoid"), (dense[0], (), dense[1], ()), x_test
    )
    without = np_forward(L.mlp([4, 1], "tanh"), (dense[0], (), dense[1]), x_test)
    assert np.all((with_sigmoid > 0) & (with_sigmoid < 1))
    want, raw = (np_loss("mse", z, y_test)[0] for z in (with_sigmoid, without))
    got = _metrics(run)[-1]["eval_loss"]
    # float32 forward of 4 examples through 2 layers: a few ulps, far inside 1e-5.
    assert got == pytest.approx(want, rel=1e-5)
    assert abs(raw - want) > 1e-2 * want  # so the check above tells the two apart


# --- --devices N, with two CPU devices -----------------------------------------------------------

DEVICES = textwrap.dedent(
    """
    import sys
    from jaxbp import datasets
    from jaxbp.cli import main

    load = datasets.load
    datasets.load = lambda name, **o: tuple((x[:192], y[:192]) for x, y in load(name, **o))
    out, args = sys.argv[1], ["train", "--layers", "16", "--epochs", "1", "--no-progress"]
    codes = [
        main([*args, "--devices", "2", "--batch-size", "64", "--out", out]),
        main([*args, "--devices", "2", "--batch-size", "33", "--out", out + "-odd"]),
        main([*args, "--devices", "3", "--out", out + "-three"]),
    ]
    print("exit statuses", codes)
    """
)


def test_devices_trains_on_the_devices_asked(tmp_path):
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"
    env = {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg"}
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", DEVICES, str(run)], capture_output=True, text=True, env=env,
        timeout=SUBPROCESS_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exit statuses [0, 2, 2]" in done.stdout, done.stdout + done.stderr[-3000:]
    assert "adamw lr 0.001, 2 device(s)" in done.stdout
    assert json.loads((run / "config.json").read_text())["devices"] == 2
    assert [line["epoch"] for line in _metrics(run)] == [1]
    errors = done.stderr.strip().splitlines()
    assert errors[-2:] == [
        "jaxbp train: error: --batch-size 33 does not split evenly over 2 devices: give a "
        "multiple of 2, or fewer --devices",
        "jaxbp train: error: --devices 3: only 2 local device(s) present",
    ]
    assert not (tmp_path / "run-odd").exists() and not (tmp_path / "run-three").exists()


# --- jaxbp check --directions, --verbose, --targets ----------------------------------------------


def test_check_directions_sets_how_many_directions_each_leaf_gets(monkeypatch, capsys):
    import jaxbp._check_measure as measure

    drawn = []
    direction = measure.direction

    def recording(rng, shape, dtype):
        drawn.append(shape)
        return direction(rng, shape, dtype)

    monkeypatch.setattr(measure, "direction", recording)
    for given, leading in ((["--directions", "7"], 7), ([], 3)):
        drawn.clear()
        assert main(["check", "jaxbp.layers:LayerNorm", "--input-shape", "3", *given]) == 0
        assert "1 check, all passed" in capsys.readouterr().out
        # a block of directions for each leaf: scale (3,), bias (3,) and x (8, 3)
        assert drawn == [(leading, 3), (leading, 3), (leading, 8, 3)], drawn


def test_check_verbose_prints_every_table(capsys):
    args = ["check", "jaxbp.layers:Tanh", "--input-shape", "3"]
    assert main(args) == 0
    quiet = capsys.readouterr().out
    assert main([*args, "--verbose"]) == 0
    loud = capsys.readouterr().out
    table = ["Tanh on x(8, 3) [float64]: ok", "  leaf  shape   dtype    vjp err  fd err   dot err"]
    table += ["  tolerances: vjp <= 1e-10, fd <= 1e-06, dot <= 1e-10"]
    assert all(line in loud.splitlines() for line in table), loud
    assert not any(line in quiet.splitlines() for line in table), quiet
    assert "1 check, all passed (float64, seed 0)" in quiet and loud.endswith(
        quiet.split("\n")[-2] + "\n"
    )


@pytest.mark.parametrize(
    "loss, targets, title",
    [
        ("softmax_cross_entropy", "probs", "softmax_cross_entropy on y_pred(8, 4), targets: probs"),
        ("softmax_cross_entropy", "auto", "softmax_cross_entropy on y_pred(8, 4), targets: labels"),
        ("mse", "normal", "mse on y_pred(8, 4), targets: normal"),
    ],
)
def test_check_targets_draws_the_targets_asked(loss, targets, title, capsys):
    assert main(["check", f"jaxbp.losses:{loss}", "--input-shape", "4", "--targets", targets]) == 0
    assert f"  {title}  " in capsys.readouterr().out


def test_check_targets_the_loss_refuses_is_bad_input(capsys):
    assert main(["check", "jaxbp.losses:mse", "--input-shape", "4", "--targets", "labels"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mse: y has shape (8,) but y_pred has shape (8, 4)" in err


# --- jaxbp bench --quantities first_order curvature --quick, for real --------------------------


def test_bench_quantities_first_order_and_curvature_for_real(tmp_path, capsys, monkeypatch):
    """The command as the README gives it, on a 6-5-3 MLP with a batch of 4 in place of digits
    (which takes ~40 s here): every row of the two groups measured, and no DP group. The torch
    peers are hidden (their rows are test_bench_quantities' and the peer tests'): importing and
    timing them would double the time."""
    import jaxbp.bench

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    monkeypatch.setitem(sys.modules, "jaxbp.bench.torch_quantities", None)
    monkeypatch.delattr(jaxbp.bench, "torch_quantities", raising=False)
    spec = "6:5,3:relu:softmax_cross_entropy:4"
    args = ["bench", "--quantities", "first_order", "curvature", "--quick", "--model", spec]
    assert main([*args, "--out", str(tmp_path)]) == 0
    assert f"wrote {tmp_path}/quantities.json and quantities.md" in capsys.readouterr().out
    results = json.loads((tmp_path / "quantities.json").read_text())
    assert results["quick"] is True and list(results["configs"]) == ["custom"]
    config = results["configs"]["custom"]
    assert config["config"] == "6-5-3 relu, softmax_cross_entropy, batch 4"
    assert list(config["groups"]) == ["first_order", "curvature"]
    rows = {g: [r["quantity"] for r in v["rows"]] for g, v in config["groups"].items()}
    assert rows == {
        "first_order": ["backprop", "per_example_grads", "per_example_norms", "grad_variance",
                        "sum_grad_squared"],
        "curvature": ["backprop", "diag_ggn", "diag_ggn_mc", "kfac_factors", "kfac_factors_mc",
                      "hvp", "ggn_vp"],
    }  # fmt: skip
    for group in config["groups"].values():
        for row in group["rows"]:  # timed: a positive, finite number of seconds each
            assert 0 < row["s"] < math.inf, row
            if "reference" in row:
                assert 0 < row["reference"]["s"] < math.inf, row
            assert all(p == {"missing": "torch not installed"} for p in row["peers"].values())
    # the peers are reported missing, not left out: some rows name them
    assert any(row["peers"] for group in config["groups"].values() for row in group["rows"])
    table = (tmp_path / "quantities.md").read_text()
    assert "| custom | per_example_norms |" in table and "| custom | ggn_vp |" in table
    assert "dp_sgd step |" not in table
