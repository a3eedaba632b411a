"""The benchmark runs end to end (a smoke run: no timing is asserted), and the compiled shape of
backprop has what the optimisations promise."""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
import time
import types
from pathlib import Path

import jax
import numpy as np
import pytest
from _torch_peers import Positions, assert_leaves_close, peer, to_float64

from jaxbp import backprop, bench
from jaxbp.bench import _report, _timing, peers, vision
from jaxbp.bench._report import verdict
from jaxbp.bench._timing import interleaved, median_ci, ratio
from jaxbp.bench.vision import VisionConfig
from jaxbp.cli import build_parser, main

COMMITTED = Path(__file__).parents[1] / "benchmarks" / "results"


def _snapshot(folder: Path) -> dict:
    files = (p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


def test_quick_benchmark_writes_json_and_markdown(tmp_path, capsys, monkeypatch):
    committed = _snapshot(COMMITTED)
    monkeypatch.chdir(COMMITTED.parents[1])  # where a user runs it: the repository
    assert main(["bench", "--quick", "--configs", "seed", "--out", str(tmp_path)]) == 0
    assert _snapshot(COMMITTED) == committed, "the committed results stay as they are"
    results = json.loads((tmp_path / "results.json").read_text())
    seed = results["configs"]["seed"]
    assert {"gradient", "step", "epoch", "peers"} <= set(seed)
    assert seed["gradient"]["backprop_s"] > 0 and seed["peers"]["numpy_s"] > 0
    assert seed["epoch"]["numpy_step_s"] > 0 and seed["epoch"]["numpy_over_scan"]["median"] > 0
    assert "| seed" in (tmp_path / "results.md").read_text()
    out = capsys.readouterr().out
    assert "backprop / jax.grad" in out
    # a line per finished measurement while it runs, before the tables
    progress = [line.split(":")[0].strip() for line in out.splitlines() if line.startswith("  ")]
    assert progress == ["gradient", "step", "epoch", "peers"]


def test_bench_writes_to_a_git_ignored_folder_and_never_over_results(tmp_path, capsys):
    assert build_parser().parse_args(["bench"]).out == Path("runs/bench")
    assert "/runs/" in (COMMITTED.parents[1] / ".gitignore").read_text().split()
    (tmp_path / "results.md").write_text("earlier results\n")
    code = main(["bench", "--quick", "--configs", "seed", "--out", str(tmp_path)])
    assert code == 2 and "pass --overwrite" in capsys.readouterr().err  # before any measuring
    assert [p.name for p in tmp_path.iterdir()] == ["results.md"]
    assert (tmp_path / "results.md").read_text() == "earlier results\n"


def test_user_model_spec():
    config = bench.parse_config("10:8,3:tanh:softmax_cross_entropy:16")
    assert config.layers == (8, 3) and config.batch == 16
    with pytest.raises(ValueError, match="IN:LAYERS"):
        bench.parse_config("10:8,3:tanh")
    with pytest.raises(ValueError, match="unknown activation"):
        bench.parse_config("10:8,3:tan:mse:16")
    with pytest.raises(ValueError, match="IN, LAYERS and BATCH must be positive"):
        bench.parse_config("10:8,3:tanh:mse:0")  # found here, not after the other configs ran


def _dots(config_name):
    """The result shapes of the matrix products in backprop's program as JAX hands it to XLA
    (StableHLO, before any backend rewrites them), so the count holds on every platform and CPU."""
    model, loss, params, x, y = bench._problem(bench.CONFIGS[config_name])
    text = jax.jit(lambda p: backprop(model, loss, p, x, y)).lower(params).as_text()
    return re.findall(r"stablehlo\.dot_general.*-> tensor<([\dx]+)xf32>", text), x.shape


@pytest.mark.parametrize("name", ["digits", "wide"])
def test_first_layer_input_cotangent_is_never_computed(name):
    dots, (batch, inputs) = _dots(name)
    layers = len(bench.CONFIGS[name].layers)
    # forward + dW per layer + dx for every layer but the first
    assert len(dots) == 3 * layers - 1, dots
    assert f"{batch}x{inputs}" not in dots  # the first layer's dx: nothing uses it


def _sign_test_coverage(n: int, a: int) -> float:
    """P(the a-th and (n-1-a)-th order statistics of n samples enclose the median), exactly."""
    return 1 - 2 * sum(math.comb(n, i) for i in range(a + 1)) / 2**n


@pytest.mark.parametrize("n", [*range(6, 200), 1000, 4000])
def test_median_ci_is_the_narrowest_sign_test_interval_with_95_percent_coverage(n):
    # Exact: the count of samples below the median is Binomial(n, 1/2), whatever the distribution.
    lo, hi = median_ci(np.random.default_rng(n).permutation(np.arange(n, dtype=float)))
    a, b = int(lo), int(hi)
    assert a + b == n - 1  # symmetric about the sample median
    assert _sign_test_coverage(n, a) >= 0.95
    assert _sign_test_coverage(n, a + 1) < 0.95  # one step narrower would fall short


def test_median_ci_of_a_constant_is_that_constant():
    assert median_ci(np.full(50, 0.97)) == (0.97, 0.97)


def test_verdict_needs_the_interval_clear_of_1_and_of_the_null():
    rng = np.random.default_rng(0)
    base = rng.uniform(1.0, 2.0, 400)
    null = ratio(base * rng.normal(1.0, 0.01, 400), base)
    faster = ratio(base * rng.normal(0.95, 0.01, 400), base)
    assert faster["ci95_low"] <= faster["median"] <= faster["ci95_high"] < 1
    assert verdict(faster, null) == "faster"
    assert verdict(ratio(base * 1.05, base), null) == "slower"
    assert verdict(ratio(base * rng.normal(1.0, 0.01, 400), base), null) == "within the null"
    # Two compilations of one program 2.5% apart: a 2.5% gain is then no gain.
    offset_null = ratio(base * rng.normal(0.975, 0.01, 400), base)
    gain = ratio(base * rng.normal(0.975, 0.01, 400), base)
    assert verdict(gain, null) == "faster" and verdict(gain, offset_null) == "within the null"


def test_interleaved_samples_for_at_least_the_time_asked_in_whole_rotations():
    calls = {"a": 0, "b": 0, "c": 0}

    def counter(name):
        def fn():
            calls[name] += 1
            time.sleep(1e-3)

        return fn

    t0 = time.perf_counter()
    t = interleaved({k: counter(k) for k in calls}, reps=4, warmup=0, min_sample=0, seconds=0.2)
    assert time.perf_counter() - t0 >= 0.2
    n = len(t["a"])
    assert n > 4 and n % 6 == 0 and len(t["b"]) == len(t["c"]) == n
    # calibration calls once each, then one call per sample
    assert calls == {k: n + 1 for k in calls}


def test_interleaved_and_median_ci_refuse_empty_input():
    with pytest.raises(ValueError, match="candidates"):
        interleaved({}, reps=3)
    with pytest.raises(ValueError, match="reps >= 1"):
        interleaved({"a": lambda: None}, reps=0)
    with pytest.raises(ValueError, match="at least one sample"):
        median_ci(np.array([]))


def test_interleaved_settles_each_sample_with_untimed_calls_to_the_same_fn(monkeypatch):
    tick = 2.0**-10  # a fake clock that moves one tick per reading: exact in binary, no drift
    readings = itertools.count()
    clock = types.SimpleNamespace(perf_counter=lambda: next(readings) * tick)
    monkeypatch.setattr(_timing, "time", clock)
    log = []
    fns = {k: (lambda k=k: log.append(k)) for k in "ab"}
    t = interleaved(fns, reps=2, warmup=0, min_sample=0, settle=8 * tick)
    # One calibration call each; then per sample, in rotation and reverse (ab, ba, ba, ab), the
    # clock read 7 times below the settle's end (7 untimed calls) and the timed call, 1 tick.
    order = "ab" + "ba" + "ba" + "ab"
    assert "".join(log) == "ab" + "".join(k * 8 for k in order)
    assert {k: list(v) for k, v in t.items()} == {"a": [tick] * 4, "b": [tick] * 4}


TINY_CNN = VisionConfig(
    "tiny", "cnn", (("features", (4,)), ("hidden", 8), ("convs", 1)), (4, 4, 1), 4
)


def test_quick_convolutional_config_carries_state_and_reports_its_peers():
    lines = []
    result = bench.run_config(TINY_CNN, quick=True, report=lines.append)
    assert [line.split(":")[0].strip() for line in lines] == ["gradient", "step", "peers"]
    assert result["gradient"]["backprop_s"] > 0 and result["step"]["ratio"]["median"] > 0
    timed = result["peers"]
    assert timed["jaxbp_s"] > 0
    assert timed["missing"]["torch_compile"] == "skipped (quick run)"
    assert ("torch_s" in timed) != ("torch" in timed["missing"])  # timed, or said why not
    table = bench.to_markdown({"environment": bench.environment(), "quick": True,
                               "configs": {"tiny": result}})  # fmt: skip
    assert "| tiny | " in table and "skipped (quick run)" in table
    assert "NumPy by hand" not in table  # no empty MLP table


def test_without_torch_the_peer_columns_say_so_and_nothing_fails(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    timed = vision.peer_times(TINY_CNN, 2, settle=0.0)
    assert set(timed["missing"].values()) == {"torch not installed"} and timed["jaxbp_s"] > 0
    assert "torch not installed" in _report.summarize("peers", timed)


@pytest.mark.parametrize("name", ["cnn", "resnet"])
def test_the_convolutional_configs_are_the_ones_the_issue_names(name):
    model, loss, params, state, x, y = bench.CONFIGS[name].problem()
    assert (
        x.shape == {"cnn": (128, 8, 8, 1), "resnet": (64, 32, 32, 3)}[name]
        and y.shape[:1] == x.shape[:1]
    )
    assert jax.tree.leaves(state), "BatchNorm's state is carried"
    value, grads, new_state = jax.jit(vision.gradient_fn(model, loss, "backprop"))(
        params, state, x[:2], y[:2]
    )
    assert np.isfinite(value) and jax.tree.structure(new_state) == jax.tree.structure(state)


@pytest.mark.parametrize("name", ["cnn", "resnet"])
def test_the_torch_peer_computes_the_same_loss_and_gradients(name, x64):
    peer("torch")
    config = bench.CONFIGS[name]
    model, loss, params, state, x, y = config.problem()
    params, state, x, y = to_float64((params, state, x[:4], y[:4]))

    def build(params):
        return peers.torch_net_step(model, params, config.input_shape, config.loss, lr=0.0)

    # float64 on both sides from the same float32 values: they differ only in the order of
    # their sums, ~1e-16 per operation over reductions of at most ~1e4 terms, so 1e-10 relative
    # (per leaf, in norm) is far above that and far below any real difference.
    step = build(params)
    step.net.double()
    xt, yt = step.convert(np.asarray(x), np.array(y))
    torch_value = float(step(xt.double(), yt))
    value, grads, _ = jax.jit(lambda p: backprop(model, loss, p, x, y, state=state))(params)
    assert torch_value == pytest.approx(float(value), rel=1e-12)
    torch_grads = Positions(lambda p: build(p).net, params).tree(
        [p.grad.numpy() for p in step.net.parameters()]
    )
    assert_leaves_close(torch_grads, grads, rtol=1e-10, what="torch grads")
