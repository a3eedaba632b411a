"""The sequence benchmarks (gpt, lstm): the configs the issue names, a quick end-to-end run on a
tiny LSTM (no timing is asserted), and PyTorch peers that compute jaxbp's loss and gradients."""

from __future__ import annotations

import sys

import jax
import numpy as np
import pytest
from _torch_peers import Positions, assert_leaves_close, peer, to_float64

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


@pytest.mark.parametrize(
    ("config", "fused"), [(TINY_GPT, False), (TINY_LSTM, False), (TINY_LSTM, True)],
    ids=["gpt", "lstm-loop", "nn.LSTM"],
)  # fmt: skip
def test_the_torch_peer_computes_the_same_loss_and_gradients(config, fused, x64):
    peer("torch")
    from jaxbp.bench import torch_seq

    model, loss, params, _, x, y = config.problem()
    params = to_float64(params)

    def build(params):
        return torch_seq.sgd_step(model, params, lr=0.0, fused_lstm=fused)

    # float64 on both sides from the same float32 values: they differ only in the order of
    # their sums, ~1e-16 per operation over reductions of at most a few hundred terms, so 1e-10
    # relative (per leaf, in norm) is far above that and far below any real difference.
    step = build(params)
    step.net.double()
    torch_value = float(step(*step.convert(np.array(x), np.array(y))))
    value, grads = jax.jit(lambda p: backprop(model, loss, p, x, y))(params)
    assert torch_value == pytest.approx(float(value), rel=1e-12)
    torch_grads = Positions(lambda p: build(p).net, params).tree(
        [p.grad.numpy() for p in step.net.parameters()]
    )
    assert_leaves_close(torch_grads, grads, rtol=1e-10, what="torch grads")
