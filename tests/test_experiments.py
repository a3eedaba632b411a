"""experiments/: every script runs with --quick and writes sane JSON and valid PNGs.

Each script runs in its own process, as a user would run it; nothing here imports them.
Every experiments/*.py not starting with "_" is discovered, so a new experiment is tested the day
it lands: at least its exit status, a JSON file and a PNG; the known ones are checked further.
"""

from __future__ import annotations

import json
import math
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SUBPROCESS_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
SCRIPTS = sorted(p for p in EXPERIMENTS.glob("*.py") if not p.name.startswith("_"))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_quick(script: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), "--out", str(out), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )


def assert_png(path: Path) -> None:
    """A real PNG: the signature, an IHDR chunk first, and a plausible picture size."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR", f"{path.name}: no IHDR chunk"
    width, height = struct.unpack(">II", data[16:24])
    assert 100 <= width <= 3000 and 100 <= height <= 3000, (path.name, width, height)


def finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


# ---------------------------------------------------------------------------------------------
# What each known experiment must report: its PNGs and a check of its numbers.


def check_seed_example(r: dict) -> None:
    assert r["solved"] is True and isinstance(r["solved_from_step"], int)
    assert 0 < r["final_cost"] < 0.01
    assert r["dC_dv1_factor_product_vs_backprop_max_abs_diff"] < 1e-6
    trajectory = r["trajectory"]
    lengths = {len(v) for v in trajectory.values()}
    assert len(lengths) == 1 and lengths.pop() > 10
    assert all(0 < f <= 0.25 for f in trajectory["mean_fB_prime"])  # sigmoid' <= 1/4
    assert 1 <= r["seed_sweep"]["n_solved"] <= len(r["seed_sweep"]["seeds"])


def check_vanishing_gradients(r: dict) -> None:
    sigmoid, tanh, relu = r["sigmoid"], r["tanh"], r["relu"]
    assert 0.15 < sigmoid["measured_delta_factor"] < 0.25  # at most sigmoid's bound, 1/4
    for name in ("sigmoid", "tanh", "relu"):
        assert 0.9 < r[name]["measured_over_predicted"] < 1.1, name
        assert len(r[name]["log10_first_layer_grad_norm_per_depth"]) == len(r["depths"])
    assert tanh["measured_delta_factor"] > relu["measured_delta_factor"] > 0.5
    # The first layer's gradient of a sigmoid net shrinks by many orders of magnitude with depth.
    first = sigmoid["log10_first_layer_grad_norm_per_depth"]
    assert first[-1] < first[0] - 10


def check_gradient_precision(r: dict) -> None:
    errors = r["errors"]
    assert errors["float64: backprop vs jax.grad"]["largest"] < 1e-12
    for name in ("float32: backprop vs jax.grad", "float32 backprop vs float64 truth"):
        assert 0 < errors[name]["largest"] < 1e-4, name
    assert 0.2 < r["float32_error_ratio_backprop_over_jax_grad"] < 5
    assert len(r["table"]["rows"]) > 1


def check_per_example_gradients(r: dict) -> None:
    # vmap and the loop (and vmap of jax.grad) are different programs: float32 rounding in
    # another order, ~1e-6 of the gradient's scale (the largest per-example norm) at most; not
    # bit-identical (AVX-512 sums a batched product in another order), nor relative to a tiny
    # gradient's own norm (p - onehot with p ~ 1 is known only to float32's absolute resolution).
    for name in ("vmap_vs_loop", "vmap_vs_vmap_jax_grad"):
        assert r[name]["max_diff_over_scale"] <= 1e-5, (name, r[name])
        assert r[name]["within_bound"] is True and r["config"]["agreement_bound"] == 1e-5
    assert r["test_accuracy"] > 0.5
    norms = r["norms"]
    assert norms["correct_count"] + norms["misclassified_count"] == 360
    assert list(r["timing"]) == ["32", "128"]  # --quick's batch sizes, each timed
    for timing in r["timing"].values():
        assert finite(timing["vmap_median_s"], timing["loop_median_s"], timing["speedup"])
        assert timing["vmap_median_s"] > 0 and timing["loop_median_s"] > 0


def check_depth(r: dict) -> None:
    families = ("plain", "plain_bn", "residual", "residual_bn")
    assert set(families) <= set(r) and len(r["depths"]) >= 2
    for name in families:
        for depth in r["depths"]:
            s = r[name][str(depth)]
            acc = s["test_accuracy"]
            assert 0 <= acc["min"] <= acc["mean"] <= acc["max"] <= 1, (name, depth)
            assert len(s["log10_delta_norm_per_layer"]) == depth, (name, depth)  # one per Dense
            assert finite(s["train_loss"]["mean"], s["log10_delta_ratio_first_over_last"])
    deepest = str(r["depths"][-1])
    # LeCun init with relu: a plain net's delta shrinks towards the input; a skip path holds it.
    plain = r["plain"][deepest]["log10_delta_ratio_first_over_last"]
    assert plain < -0.3 and r["residual"][deepest]["log10_delta_ratio_first_over_last"] > plain


def check_char_models(r: dict) -> None:
    table = r["table"]
    assert list(table) == ["bigram", "mlp", "lstm", "gpt"]
    for name, row in table.items():
        # --quick trains for a few steps: each is a distribution over 27 characters, no worse
        # than uniform (ln 27 = 3.30 nats/char) by more than a step or two of noise.
        assert finite(row["validation"], row["test"]) and 0 < row["validation"] < 3.5, name
        assert len(r["samples"][name]) == 10, name
    assert 2.4 < table["bigram"]["validation"] < 2.8  # counted exactly: ~2.5 on surnames
    assert set(r["validation_curves"]) == {"mlp", "lstm", "gpt"}


def check_attention_backward(r: dict) -> None:
    assert r["contexts"] == sorted(r["contexts"]) and len(r["contexts"]) >= 2
    rows = [r["by_context"][str(t)] for t in r["contexts"]]
    for row in rows:
        # float32: the two modes differ in summation order and one exp, ~1e-6 of the gradient
        assert row["max_rel_grad_diff"] < 1e-4
        assert row["time_ratio_recomputed_over_saved"] > 0
        for mode in ("saved", "recomputed"):
            assert row[mode]["step_s"] > 0 and row[mode]["temp_bytes"] >= 0
        # p (batch, H, T, T) against lse (batch, H, T): recompute always keeps less
        assert row["recomputed"]["residual_bytes"] < row["saved"]["residual_bytes"]
    saved_extra = [
        row["saved"]["residual_bytes"] - row["recomputed"]["residual_bytes"] for row in rows
    ]
    assert saved_extra == sorted(saved_extra)  # the T^2 term grows with T


def check_curvature(r: dict) -> None:
    for name in ("init", "trained"):
        d = r["diagonal"][name]
        assert d["hvp_vs_jax_hessian_max_rel_error"] < 1e-12  # float64: rounding only
        assert 0 < d["ggn_vs_hessian_rel_diff"] and -1 <= d["ggn_hessian_correlation"] <= 1
        assert len(d["mc_rel_error"]) == len(d["mc_samples"]) and finite(*d["mc_rel_error"])
    assert set(r["training"]) == {"adam", "sgd", "diag_ggn", "diag_ggn_mc"}
    for method, t in r["training"].items():
        s = t["selected"]
        assert len(s["train_loss"]) == r["config"]["epochs"], method
        # --quick trains 2 epochs: every method well past chance (10%) on the 360 test digits.
        assert 0.5 < s["test_accuracy"][-1] <= 1 and finite(*s["test_loss"]), method


def check_dp_sgd(r: dict) -> None:
    private = r["private"]
    assert list(private) == ["2", "8"]  # --quick's budgets
    for target, row in private.items():
        # fit's epsilon after the last epoch is the budget the noise was calibrated to
        assert abs(row["epsilon"] - float(target)) < 0.01 * float(target), target
        assert 0.2 < row["test_accuracy_min"] <= row["test_accuracy_max"] <= 1, target
        assert 0 <= row["clipped_at_end"] <= 1 and 0 <= row["clipped_at_init"] <= 1
    assert private["2"]["sigma"] > private["8"]["sigma"]  # less budget, more noise
    assert r["no_privacy"]["test_accuracy"] > 0.8


def check_feedback_alignment(r: dict) -> None:
    config, epochs = r["config"], r["config"]["epochs"]
    assert config["quick"] is True and config["seeds"] == 1 and epochs == 3
    assert list(r["models"]) == ["mlp", "residual_mlp"]
    engines = ["backprop", "feedback_alignment", "direct_feedback_alignment"]
    for name, model in r["models"].items():
        layers = [f"W{k}" for k in range(1, 4 if name == "mlp" else 7)]  # 3 Dense; 1 + 2 x 2 + 1
        assert list(model["layers"]) == layers and list(model["engines"]) == engines, name
        for engine, e in model["engines"].items():
            (accuracy,) = e["accuracy_per_seed"]  # one seed: its epochs
            assert len(accuracy) == epochs and e["final_accuracy"] == accuracy[-1]
            assert e["final_accuracy"] <= e["best_accuracy"] == max(accuracy) <= 1
            # 3 epochs on digits: backprop reaches ~90% here, FA and DFA 63-84%; chance is 10%.
            assert e["final_accuracy"] > (0.8 if engine == "backprop" else 0.3), (name, engine)
            angles = e["angles_mean"]
            assert list(angles) == layers and {len(a) for a in angles.values()} == {epochs + 1}
            assert all(0 <= a <= 180 for a in sum(angles.values(), [])), (name, engine)
            # backprop against jax.grad, and FA's and DFA's output layer (it gets the true
            # error): the same float32 gradient up to rounding, ~1e-5 degrees apart.
            exact = layers if engine == "backprop" else layers[-1:]
            assert all(a < 0.01 for k in exact for a in angles[k]), (name, engine, angles)
            if engine != "backprop" and name == "mlp":  # aligning: 68-75 degrees here at the end
                assert all(angles[k][-1] < 90 for k in layers[:-1]), (name, engine, angles)
            assert finite(e["wall_time_s"], e["epoch_time_s"]) and e["epoch_time_s"] > 0
        fa = model["engines"]["feedback_alignment"]["weight_vs_feedback_mean"]
        assert list(fa) == layers[1:], name  # each W whose B is used: all but the first
        assert all(len(a) == epochs + 1 and all(0 <= v <= 180 for v in a) for a in fa.values())


def check_kfac(r: dict) -> None:
    config = r["config"]
    assert config["quick"] is True and len(config["seeds"]) >= 2  # seed noise needs two
    peer = config["kfac_jax"]
    names = ["kfac", "kfac_jax", "adam", "sgd"] if peer else ["kfac", "adam", "sgd"]
    for task in ("autoencoder", "classifier"):
        t, steps = r[task], config["tasks"][task]["steps"]
        assert set(t["tuning"]) == {"kfac", "adam", "sgd"} and list(t["runs"]) == names, task
        for name, run in t["runs"].items():
            assert len(run["mean"]) == steps and finite(*run["mean"]), (task, name)
            assert all(lo <= m <= hi for lo, m, hi in zip(run["min"], run["mean"], run["max"]))
            assert len(run["loss_per_seed"]) == len(config["seeds"]), (task, name)
        # --quick's 10 steps: K-FAC's smoothed loss falls well below the first batch's (seen
        # 45.2 -> 41.6 on the autoencoder, 2.30 -> 2.03 on the classifier).
        kfac = t["runs"]["kfac"]
        assert kfac["smoothed_mean"][-1] < 0.95 * kfac["mean"][0], task
        if peer:
            noise = t["seed_noise"]
            assert finite(noise["median_abs_z"], noise["mean_rel_diff"]), task
    for run in r["classifier"]["runs"].values():
        assert all(0 <= s["test_accuracy"] <= 1 for s in run["test"])
    s2t = r["autoencoder"]["steps_to_target"]
    assert finite(s2t["target"]) and set(names) <= set(s2t)
    timing = r["autoencoder"]["timing"]
    assert all(v > 0 for v in timing["median_step_seconds"].values())
    assert all(m["temp_plus_output"] > 0 for m in timing["memory_bytes"].values())
    if peer:
        assert timing["ratio_jaxbp_over_kfac_jax"]["median"] > 0
        factors = r["classifier"]["factors"]
        # float64, both exact: they differ by summation order alone (seen 4e-16)
        assert factors["A"]["max_rel_diff"] < 1e-12 and factors["G"]["max_rel_diff"] < 1e-12


KNOWN = {
    "seed_example": (("factors.png", "cost.png"), check_seed_example),
    "vanishing_gradients": (("per_layer.png", "depth.png"), check_vanishing_gradients),
    "gradient_precision": (("errors.png",), check_gradient_precision),
    "per_example_gradients": (("norms.png", "timing.png"), check_per_example_gradients),
    "depth": (("depth.png",), check_depth),
    "dp_sgd": (("accuracy.png",), check_dp_sgd),
    "char_models": (("curves.png",), check_char_models),
    "attention_backward": (("attention_backward.png",), check_attention_backward),
    "curvature": (("diagonal.png", "training.png"), check_curvature),
    "feedback_alignment": (("accuracy.png", "alignment.png"), check_feedback_alignment),
    "kfac": (("autoencoder.png", "classifier.png"), check_kfac),
}


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_quick_run(script, tmp_path):
    out = tmp_path / script.stem
    done = run_quick(script, out)
    assert done.returncode == 0, f"{script.name} failed:\n{done.stdout}\n{done.stderr[-3000:]}"
    jsons, pngs = sorted(out.glob("*.json")), sorted(out.glob("*.png"))
    assert jsons, f"{script.name} wrote no JSON"
    assert pngs, f"{script.name} wrote no PNG"
    for path in pngs:
        assert_png(path)
    results = [json.loads(path.read_text()) for path in jsons]  # valid JSON, all of it
    if script.stem in KNOWN:
        names, check = KNOWN[script.stem]
        assert {p.name for p in pngs} >= set(names)
        check(json.loads((out / "results.json").read_text()))
    else:
        assert all(isinstance(r, dict) and r for r in results)


def test_scripts_were_found():
    assert {p.stem for p in SCRIPTS} >= set(KNOWN)


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_script_uses_only_public_api(script):
    """Experiments show how to use jaxbp: no private modules or names."""
    source = script.read_text()
    private = re.findall(r"jaxbp(?:\.\w+)*\._\w+|from jaxbp(?:\.\w+)* import .*\b_\w+", source)
    assert not private, f"{script.name} uses private jaxbp names: {private}"
    assert '"""' in source.split("\n", 1)[0] and "Usage:" in source, "docstring with usage"


def test_nothing_imports_experiments():
    """Experiments are leaves: neither the package nor the tests import them."""
    names = "|".join(["experiments", "_common", *(p.stem for p in SCRIPTS)])
    pattern = re.compile(rf"^\s*(?:from|import)\s+(?:{names})\b", re.MULTILINE)
    for path in [*ROOT.joinpath("src").rglob("*.py"), *ROOT.joinpath("tests").rglob("*.py")]:
        assert not pattern.search(path.read_text()), f"{path} imports an experiment"
