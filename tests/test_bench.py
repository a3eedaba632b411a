"""The benchmark runs end to end (a smoke run: no timing is asserted), and the compiled shape of
backprop has what the optimisations promise."""

from __future__ import annotations

import json
import re

import jax
import pytest

from jaxbp import backprop, bench
from jaxbp.cli import main


def test_quick_benchmark_writes_json_and_markdown(tmp_path, capsys):
    assert main(["bench", "--quick", "--configs", "seed", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    seed = results["configs"]["seed"]
    assert {"gradient", "step", "epoch", "peers", "scan_vs_numpy"} <= set(seed)
    assert seed["gradient"]["backprop_s"] > 0 and seed["peers"]["numpy_s"] > 0
    assert "| seed" in (tmp_path / "results.md").read_text()
    assert "backprop / jax.grad" in capsys.readouterr().out


def test_user_model_spec():
    config = bench.parse_config("10:8,3:tanh:softmax_cross_entropy:16")
    assert config.layers == (8, 3) and config.batch == 16
    with pytest.raises(ValueError, match="IN:LAYERS"):
        bench.parse_config("10:8,3:tanh")
    with pytest.raises(ValueError, match="unknown activation"):
        bench.parse_config("10:8,3:tan:mse:16")


def _dots(config_name):
    model, loss, params, x, y = bench._problem(bench.CONFIGS[config_name])
    hlo = jax.jit(lambda p: backprop(model, loss, p, x, y)).lower(params).compile().as_text()
    return re.findall(r"= f32\[([\d,]+)\]\{[^}]*\} dot\(", hlo), x.shape


@pytest.mark.parametrize("name", ["digits", "wide"])
def test_first_layer_input_cotangent_is_never_computed(name):
    dots, (batch, inputs) = _dots(name)
    layers = len(bench.CONFIGS[name].layers)
    # forward + dW per layer + dx for every layer but the first
    assert len(dots) == 3 * layers - 1, dots
    assert f"{batch},{inputs}" not in dots
