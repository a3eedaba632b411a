"""jaxbp.check: it passes every correct rule over many keys, at random inputs and at ties; its
report, options and command line. The planted mistakes it catches: test_check_mutations.py.
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _docs import documentation, flat

from jaxbp import layers as L
from jaxbp import losses
from jaxbp._check_inputs import with_ties
from jaxbp.check import check_backprop, check_layer, check_loss, check_vjp
from jaxbp.cli import main

SEEDS = range(200)  # after the first compilation a check costs ~1-3 ms: 200 keys are cheap

# (layer, per-example input shape), every built-in and option; shapes shared with `jaxbp check`
# so that the CLI test reuses these compilations.
LAYERS = [(L.activation(name), (5,)) for name in L.ACTIVATIONS] + [
    (L.LeakyRelu(0.3), (5,)), (L.Elu(0.5), (5,)), (L.Gelu(approximate=False), (5,)),
    (L.Dense(3), (4,)), (L.Flatten(), (2, 3)),
    (L.serial(L.Flatten(), L.Dense(4), L.Tanh(), L.Dense(3)), (2, 3)),
    (L.mlp([4, 3, 2], "relu", "softmax"), (3,)),
    (L.mlp([4, 3, 3], "sigmoid", "log_softmax"), (3,)),
    (L.LayerNorm(), (3, 4)), (L.RMSNorm(), (5,)), (L.BatchNorm(), (2, 4)), (L.Dropout(0.3), (5,)),
    (L.GroupNorm(2), (3, 4)),
    (L.Dense(3), (2, 4)),
    (L.serial(L.Dense(4), L.Residual(L.serial(L.LayerNorm(), L.Dense(4), L.Gelu())),
              L.Parallel(L.Dense(2), L.serial(L.Dense(3), L.Tanh()), merge="concat")), (3,)),
    (L.residual_mlp(4, 2, 3, norm="batch"), (3,)),
    (L.Conv(3, (3, 3), strides=2, dilation=1), (5, 6, 2)),
    (L.Conv(4, (2, 3), padding=((0, 2), (1, 0)), dilation=2, groups=2), (6, 7, 4)),
    (L.Conv(2, (3,), strides=2, padding="VALID"), (7, 3)),
    (L.MaxPool((2, 2), padding="SAME"), (5, 5, 2)),
    (L.serial(L.Conv(2, (2, 2)), L.Relu(), L.MaxPool((2, 2))), (5, 5, 2)),  # relu's zeros tie
    (L.AvgPool((3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), count_include_pad=False),
     (5, 6, 2)),
    (L.GlobalAvgPool(), (3, 4, 2)),
    # Sequence layers on (T, C) = (4, 4), 2 heads: these 7 cost ~15 s of CPU over the 200 seeds
    # (measured, compilations included), inside the 30 s allowed, so they take the full sweep.
    (L.SelfAttention(2), (4, 4)), (L.SelfAttention(2, causal=False), (4, 4)),
    (L.SelfAttention(2, recompute=True), (4, 4)), (L.LSTM(3), (4, 4)), (L.GRU(3), (4, 4)),
    (L.RNN(3), (4, 4)), (L.PositionEmbedding(6, 4), (4, 4)),
]  # fmt: skip
LOSSES = [
    (losses.mse, "normal"), (losses.binary_cross_entropy, "unit"),
    (losses.softmax_cross_entropy, "labels"), (losses.softmax_cross_entropy, "probs"),
]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# No false alarms


@pytest.mark.parametrize("layer, shape", LAYERS, ids=[repr(a) for a, _ in LAYERS])
def test_every_builtin_layer_passes_over_many_keys(layer, shape):
    selecting = "Relu" in repr(layer) or "MaxPool" in repr(layer)  # checked at ties too
    for seed in SEEDS:
        report = check_layer(layer, shape, key=seed)
        assert report.ok, f"seed {seed}\n{report}"
        # Every rule against jax.vjp to 1e-12, far inside the checker's 1e-10: the same formulas
        # in float64 in another order, ~1e-15 per operation over at most a few dozen.
        assert all(row.errors["vjp"] <= 1e-12 for row in report.rows), f"seed {seed}\n{report}"
        names = [row.name for row in report.rows]
        at_ties = [row for row in report.rows if row.name.endswith(" (ties)")]
        random = names[: len(names) - len(at_ties)]
        assert [row.name for row in at_ties] == (
            [n + " (ties)" for n in random] if selecting else []
        )
        assert all(row.errors["dot"] is not None for row in at_ties), f"seed {seed}\n{report}"


@pytest.mark.parametrize("loss, targets", LOSSES, ids=[f"{f!r}-{t}" for f, t in LOSSES])
def test_every_builtin_loss_passes_over_many_keys(loss, targets):
    for seed in SEEDS:
        report = check_loss(loss, (8, 4), targets=targets, key=seed)
        assert report.ok, f"seed {seed}\n{report}"
        assert report.rows[0].errors["vjp"] <= 1e-12, f"seed {seed}\n{report}"


def test_backprop_passes_on_models_over_many_keys():
    model = L.mlp([4, 4, 3], "tanh")
    _, params = model.init(jax.random.PRNGKey(0), (3,))
    x = np.random.default_rng(0).normal(size=(6, 3))
    y = np.arange(6) % 3
    for seed in SEEDS:
        report = check_backprop(model, losses.softmax_cross_entropy, params, x, y, key=seed)
        assert report.ok, f"seed {seed}\n{report}"
    assert [r.name for r in report.rows][:2] == [
        "[0] Dense(features=4) ['W']",
        "[0] Dense(features=4) ['b']",
    ]


FLOAT32 = [LAYERS[i] for i in (0, 2, 9, 14, 16)]  # sigmoid, relu, softmax, Dense, a serial


@pytest.mark.parametrize("layer, shape", FLOAT32, ids=[repr(a) for a, _ in FLOAT32])
def test_float32_passes_with_its_tolerances(layer, shape):
    for seed in range(5):
        report = check_layer(layer, shape, key=seed, dtype="float32")
        assert report.ok and report.dtype == "float32", f"seed {seed}\n{report}"
        assert {row.dtype for row in report.rows} == {"float32"}


def test_relu_at_an_exact_kink_is_not_a_false_alarm():
    # Dead units and zero biases put the second relu's inputs exactly at 0, where f has no
    # derivative along b: finite differences see the kink and step aside; vjp and dot judge.
    model = L.mlp([4, 4, 2], "relu")
    _, params = model.init(jax.random.PRNGKey(1), (3,))
    x = -np.abs(np.random.default_rng(1).normal(size=(6, 3)))
    params = (dict(params[0], W=np.abs(params[0]["W"])), *params[1:])  # every first unit dead
    report = check_backprop(model, losses.mse, params, x, np.ones((6, 2)))
    assert report.ok, str(report)
    kinked = [r.name for r in report.rows if r.errors["fd"] is None]
    assert kinked == ["[2] Dense(features=4) ['b']"], str(report)


def test_global_x64_flag_is_left_alone():
    before = jax.config.jax_enable_x64
    report = check_layer(L.Tanh(), (5,))
    assert jax.config.jax_enable_x64 == before and report.dtype == "float64"
    assert jnp.zeros(1).dtype == (jnp.float64 if before else jnp.float32)


def test_check_vjp_takes_pytrees_of_primals():
    def fwd(p, x):
        return jnp.tanh(x @ p["W"]), (p, x)

    def bwd(res, ct):
        (p, x), t = res, jnp.tanh(res[1] @ res[0]["W"])
        dz = ct * (1 - t * t)
        return {"W": x.T @ dz}, dz @ p["W"].T

    report = check_vjp(fwd, bwd, {"W": np.ones((3, 2)) / 3}, np.arange(12.0).reshape(4, 3) / 6)
    assert report.ok and [r.name for r in report.rows] == ["arg0['W']", "arg1"], str(report)


def test_rows_are_named_by_path_at_any_depth():
    model = L.serial(L.Dense(4), L.Residual(L.serial(L.Dense(4), L.Parallel(L.Dense(4), L.Tanh()))))
    names = [r.name for r in check_layer(model, (3,)).rows]
    assert names == [
        "[0] Dense(features=4) ['W']", "[0] Dense(features=4) ['b']",
        "[1][0] Dense(features=4) ['W']", "[1][0] Dense(features=4) ['b']",
        "[1][1][0] Dense(features=4) ['W']", "[1][1][0] Dense(features=4) ['b']", "x",
    ]  # fmt: skip


def test_check_backprop_on_models_with_state_and_randomness():
    x, y = np.random.default_rng(0).normal(size=(8, 5)), np.arange(8) % 3
    for name in ("residual-bn", "dropout", "branched"):
        model = L.preset(name, 3)
        _, params = model.init(jax.random.PRNGKey(0), (5,))
        report = check_backprop(model, losses.softmax_cross_entropy, params, x, y)
        assert report.ok, f"{name}\n{report}"


# ---------------------------------------------------------------------------------------------
# Ties: a layer that selects (a maximum, a kink at 0) is checked again at inputs with ties


def test_the_tie_draw_ties_most_max_pool_windows():
    # Entries from {-1, 0, 1}: a window of 4 has a tied maximum with probability 1 - 36/81.
    x = with_ties(np.random.default_rng(0), (256, 4, 4, 2))
    windows = x.reshape(256, 2, 2, 2, 2, 2).transpose(0, 1, 3, 5, 2, 4).reshape(-1, 4)
    tied = np.mean(np.sum(windows == windows.max(1, keepdims=True), axis=1) > 1)
    assert 0.53 < tied < 0.58 and 0.3 < np.mean(x == 0) < 0.37, (tied, np.mean(x == 0))


def test_a_selecting_layer_is_checked_again_at_ties_and_vjp_and_dot_judge_there():
    report = check_layer(L.MaxPool((2, 2)), (4, 6, 2))
    assert report.ok and [r.name for r in report.rows] == ["x", "x (ties)"], str(report)
    # Every direction crosses a tied window's kink: fd steps aside, vjp and dot judge the row.
    assert report.rows[1].errors["fd"] is None and report.rows[0].errors["fd"] is not None
    assert report.rows[1].errors["vjp"] <= 1e-15 and report.rows[1].errors["dot"] <= 1e-12
    text = str(report)
    assert text.splitlines()[0].endswith("on x(8, 4, 6, 2), and with ties [float64]: ok"), text
    assert "  (ties): at x drawn from {-1, 0, 1}: maxima tie, kinks sit at 0" in text
    data = json.loads(report.to_json())
    assert data["ok"] and [r["name"] for r in data["rows"]] == ["x", "x (ties)"]
    assert data["legend"] == list(report.legend) and data["rows"][1]["errors"]["fd"] is None


def test_a_model_is_checked_at_ties_when_any_of_its_leaves_selects():
    model = L.serial(L.Dense(3), L.Relu(), L.Dense(2))
    names = [r.name for r in check_layer(model, (4,)).rows]
    assert len(names) == 10 and names[5:] == [n + " (ties)" for n in names[:5]], names
    assert [r.name for r in check_layer(L.mlp([3, 2], "tanh"), (4,)).rows][-1] == "x"


def test_no_tie_draw_where_the_caller_gives_x_or_for_check_backprop():
    x = np.random.default_rng(0).normal(size=(4, 5))
    report = check_layer(L.Relu(), (5,), x=x)
    assert [r.name for r in report.rows] == ["x"] and not report.legend, str(report)
    model = L.mlp([3, 2], "relu")
    _, params = model.init(jax.random.PRNGKey(0), (5,))
    report = check_backprop(model, losses.mse, params, x, np.zeros((4, 2)))
    assert report.ok and not any("ties" in r.name for r in report.rows), str(report)


def test_the_readme_states_this_sweep():
    readme = flat(documentation())
    configs = re.search(r"over (\d+) seeds x (\d+) configurations", readme)
    assert configs and tuple(map(int, configs.groups())) == (
        len(SEEDS),
        len(LAYERS) + len(LOSSES) + 1,  # layers, losses, test_backprop_passes_...
    ), "the docs state another no-false-alarm sweep"


# ---------------------------------------------------------------------------------------------
# The command line


# `jaxbp check` and `jaxbp check --json` run the same 39 checks: on one worker the second finds
# them compiled (0.1 s, not ~12 s).
SAME_CHECKS = pytest.mark.xdist_group("check_cli")


@SAME_CHECKS
def test_cli_checks_every_builtin(capsys):
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "39 checks, all passed (float64, seed 0)" in out  # the number the README states
    for name in ("Sigmoid", "LogSoftmax", "Dense(features=3)", "softmax_cross_entropy", "backprop"):
        assert name in out


@SAME_CHECKS
def test_cli_json_to_stdout(capsys):
    assert main(["check", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["dtype"] == "float64" and data["seed"] == 0
    assert len(data["reports"]) == 39 and all(r["ok"] for r in data["reports"])
    # of which four random models of depth 1-4 (the README: "and four random models")
    models = [r["title"] for r in data["reports"] if r["title"].startswith("backprop, ")]
    assert len(models) == 4, models
    assert [m.count("Dense(") for m in models] == [1, 2, 3, 4], models
    assert data["reports"][0]["rows"][0]["name"] == "x"


USER_MODULE = '''
import dataclasses
import jax.numpy as jnp
from jaxbp import layers as L

@dataclasses.dataclass(frozen=True)
class Cube(L.Layer):
    """y = x^3; dy/dx = 3 x^2."""
    def init(self, key, input_shape):
        return tuple(input_shape), ()
    def forward(self, params, x, *, key=None):
        return x ** 3, x
    def backward(self, params, x, dy):
        return (), dy * 3 * x * x

@dataclasses.dataclass(frozen=True)
class BadCube(Cube):
    def backward(self, params, x, dy):
        return (), dy * 3 * x

def make_loss():
    from jaxbp import losses
    return losses.mse
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_rules_for_check.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_rules_for_check"


def test_cli_checks_a_user_layer_and_loss(user_module, capsys, tmp_path):
    assert main(["check", f"{user_module}:Cube", "--input-shape", "3"]) == 0
    assert main(["check", f"{user_module}:make_loss", "--input-shape", "2"]) == 0
    assert main(["check", f"{user_module}:Cube", "--input-shape", "3", "--dtype", "float32"]) == 0
    out_file = tmp_path / "report.json"
    assert (
        main(["check", f"{user_module}:BadCube", "--input-shape", "3", "--json", str(out_file)])
        == 1
    )
    out = capsys.readouterr().out
    assert "BadCube on x(8, 3) [float64]: FAILED" in out and "1 FAILED" in out
    assert json.loads(out_file.read_text())["ok"] is False


@pytest.mark.parametrize(
    "argv, words",
    [(["no_such_module_xyz:Layer", "--input-shape", "3"], "cannot import 'no_such_module_xyz'"),
     (["{m}:Nope", "--input-shape", "3"], "has no attribute 'Nope'"),
     (["{m}:Cube"], "--input-shape"),
     (["{m}:Cube", "--input-shape", "3,a"], "integers"),
     (["{m}"], "module:attribute"),
     (["{m}:USER", "--input-shape", "3"], "not a layer or a loss"),
     (["{m}:make_loss", "--targets", "bogus"], "targets must be"),
     (["{m}:Cube", "--input-shape", "3", "--json", "{m}/no/such/dir.json"], "cannot write")],
    ids=["missing module", "missing attribute", "no input shape", "bad shape", "no colon",
         "not a layer", "bad targets", "unwritable json"],
)  # fmt: skip
def test_cli_bad_targets_exit_2_in_one_line(user_module, capsys, argv, words):
    if argv[0] == "{m}:USER":
        argv = [f"{user_module}:dataclasses", *argv[1:]]
    assert main(["check", *(a.format(m=user_module) for a in argv)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxbp check: error:") and "\n" not in err and words in err
