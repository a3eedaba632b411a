"""The sequence benchmarks (gpt, lstm): the configs the issue names, a quick end-to-end run on a
tiny LSTM (no timing is asserted), and PyTorch peers that compute jaxbp's loss and gradients."""

from __future__ import annotations

import sys

import jax
import numpy as np
import pytest

from jaxbp import backprop, bench
from jaxbp.bench import _report, sequence
from jaxbp.bench.sequence import SequenceConfig
from jaxbp.layers import LSTM, SelfAttention

TINY_GPT = SequenceConfig(
    "tiny_gpt", "gpt", (("num_layers", 1), ("features", 8), ("num_heads", 2)), 6, 3
)
TINY_LSTM = SequenceConfig("tiny_lstm", "char_rnn", (("embed", 4), ("hidden", 8)), 5, 3)


def test_the_sequence_configs_are_the_ones_the_issue_names():
    gpt, lstm = sequence.CONFIGS["gpt"], sequence.CONFIGS["lstm"]
    assert {"gpt", "lstm"} <= set(bench.CONFIGS)
    shapes = {
        name: jax.eval_shape(lambda c=c: c.problem()[4]).shape
        for name, c in (("gpt", gpt), ("lstm", lstm))
    }
    assert shapes == {"gpt": (64, 32), "lstm": (64, 32)}  # batch 64, context / T 32
    attention = [
        layer for block in gpt.model().layers if hasattr(block, "body")
        for layer in block.body.layers if isinstance(layer, SelfAttention)
    ]  # fmt: skip
    assert len(attention) == 4 and {a.num_heads for a in attention} == {4}
    assert gpt.vocab == 28 and dict(gpt.options)["features"] == 128
    assert any(isinstance(layer, LSTM) and layer.features == 256 for layer in lstm.model().layers)


def test_quick_sequence_run_reports_the_jax_grad_step_and_every_peer():
    lines = []
    result = bench.run_config(TINY_LSTM, quick=True, report=lines.append)
    assert [line.split(":")[0].strip() for line in lines] == ["gradient", "step", "peers"]
    assert result["gradient"]["backprop_s"] > 0 and result["step"]["ratio"]["median"] > 0
    peers = result["peers"]
    assert peers["jaxbp_s"] > 0 and peers["jax_grad_over_jaxbp"]["median"] > 0
    assert peers["missing"]["torch_compile"] == "skipped (quick run)"
    for name in ("torch", "nn_lstm"):  # timed, or said why not
        assert (f"{name}_s" in peers) != (name in peers["missing"])
    results = {"environment": bench.environment(), "quick": True, "configs": {"tiny": result}}
    table = bench.to_markdown(results)
    assert "nn.LSTM (eager)" in table and "jaxbp step with jax.grad" in table
    assert "| tiny | " in table and "skipped (quick run)" in table


def test_without_torch_the_peers_say_so_and_nothing_fails(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    fns = {}
    why = sequence._add_torch_peer(fns, "torch", TINY_LSTM, False, False, quick=False)
    assert why == "torch not installed" and not fns
    timed = {"jaxbp_s": 1e-3, "missing": {"torch": why}}
    assert "torch not installed" in _report.summarize("peers", timed)


def _torch_grads(config, fused):
    """(loss, {name: grad}) of one PyTorch step at lr 0 on the config's problem."""
    from jaxbp.bench import torch_seq

    model, _, params, _, x, y = config.problem()
    step = torch_seq.sgd_step(model, params, lr=0.0, fused_lstm=fused)
    value = float(step(*step.convert(np.asarray(x), np.asarray(y))))
    return value, {n: p.grad.numpy() for n, p in step.net.named_parameters()}


@pytest.mark.parametrize(
    ("config", "fused"), [(TINY_GPT, False), (TINY_LSTM, False), (TINY_LSTM, True)],
    ids=["gpt", "lstm-loop", "nn.LSTM"],
)  # fmt: skip
def test_the_torch_peer_computes_the_same_loss_and_gradients(config, fused):
    pytest.importorskip("torch")
    model, loss, params, _, x, y = config.problem()
    value, grads = jax.jit(lambda p: backprop(model, loss, p, x, y))(params)
    torch_value, torch_grads = _torch_grads(config, fused)
    # float32 sums of a few dozen terms: agreement to ~1e-6 relative, 1e-5 with margin
    assert torch_value == pytest.approx(float(value), rel=1e-5)
    np.testing.assert_allclose(torch_grads["0.weight"], grads[0]["table"], atol=1e-5)
    head = grads[-1]["W"]  # Dense: torch keeps W transposed
    np.testing.assert_allclose(torch_grads[f"{len(grads) - 1}.weight"], head.T, atol=1e-5)
    if config is TINY_LSTM:
        W = torch_grads["1.lstm.weight_ih_l0"].T if fused else torch_grads["1.W"]
        np.testing.assert_allclose(W, grads[1]["W"], atol=1e-5)
    else:
        qkv = grads[2][1]["W_qkv"]  # the first attention block: (LayerNorm, SelfAttention)
        np.testing.assert_allclose(torch_grads["2.body.1.qkv.weight"], qkv.T, atol=1e-5)
