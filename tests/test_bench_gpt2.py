"""The gpt2 benchmark: the configs the issue names, its FLOP count against the params it
multiplies, its memory phase, a quick end-to-end run on a small GPT-2, and its PyTorch peer:
the same loss, every gradient leaf and one AdamW step, in float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _torch_peers import Positions, assert_leaves_close, peer, to_float64

from jaxbp import backprop, bench
from jaxbp.bench import gpt2 as bench_gpt2
from jaxbp.bench.gpt2 import ADAMW, GPT2Config

TINY = GPT2Config("tiny", 2, 8, custom=(37, 2, 16, 2))  # vocab 37, 2 layers of 16, 2 heads


def test_the_configs_are_the_ones_the_issue_names():
    configs = {name: bench.CONFIGS[name] for name in ("gpt2", "gpt2-t256", "gpt2-t1024")}
    assert {n: (c.batch, c.T, c.size) for n, c in configs.items()} == {
        "gpt2": (4, 64, "124M"), "gpt2-t256": (1, 256, "124M"), "gpt2-t1024": (1, 1024, "124M"),
    }  # fmt: skip
    assert repr(configs["gpt2"].model()) == "gpt2('124M')"
    # llm.c's train_gpt2.c: gpt2_update(&model, 1e-4f, 0.9f, 0.999f, 1e-8f, 0.0f, step + 1).
    assert ADAMW == {"learning_rate": 1e-4, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
                     "weight_decay": 0.0}  # fmt: skip


def test_flops_count_every_matmul_parameter_six_times_per_token():
    config = bench.CONFIGS["gpt2"]
    shapes = jax.eval_shape(lambda k: config.model().init(k, (64,))[1], jax.random.PRNGKey(0))
    # The matrices a token multiplies: every 2-D leaf but the position table (added, not
    # multiplied); the token table counts once, as the head's W (its lookup is no product).
    matrices = sum(
        int(np.prod(a.shape))
        for i, a in enumerate(jax.tree.leaves(shapes))
        if a.ndim == 2 and i != 1
    )
    assert matrices == 84_934_656 + 38_597_376  # 12 x 12 x 768^2 in the blocks; 50257 x 768
    attention = 3 * 4 * 12 * 4 * 64**2 * 768  # q k^T and p v, forward and backward's two each
    assert config.flops()["gradient"] == 6 * 4 * 64 * matrices + attention
    assert config.flops(recompute=True)["gradient"] - config.flops()["gradient"] == attention / 6


def test_recompute_plans_less_memory_under_the_memory_scheduler():
    # A small model at T 1024 with 6 layers: each layer's (T, T) weights are 4 heads x
    # 1024^2 x 4 B = 16 MiB, everything else ~1 MiB per layer. Only compiled, never run. (6
    # layers, not GPT-2's 12: the gap grows by 16 MiB a layer either way, and half the layers
    # compile in 2/3 of the time: 11 s, not 15.5 s, on an idle core. 12 layers kept 10.9 x
    # 16 MiB, 6 keep 4.9 x 16 MiB: the same layer or so in flight.)
    config = GPT2Config("long", 1, 1024, custom=(64, 6, 32, 4))
    m = bench_gpt2.memory(config)
    assert set(m) == {"default", "memory_scheduler"}
    saved, recompute = m["memory_scheduler"]["saved_p"], m["memory_scheduler"]["recompute"]
    assert saved["argument_bytes"] == recompute["argument_bytes"]
    # The saved-p step keeps 6 x 16 MiB of weights to the backward; recompute keeps lse alone.
    # Both may hold a layer's or two's (T, T) buffers in flight: 4 x 16 MiB saved at least.
    assert saved["temp_bytes"] - recompute["temp_bytes"] >= 4 * 16 * 2**20
    assert saved["peak_bytes"] > recompute["peak_bytes"]
    default = m["default"]  # XLA:CPU's default, concurrency first: planned, no claim on it
    assert default["saved_p"]["peak_bytes"] > 0 and default["recompute"]["peak_bytes"] > 0


def test_quick_run_reports_every_phase_and_renders():
    peer("torch")
    lines = []
    result = bench_gpt2.run_config(TINY, quick=True, report=lines.append)
    phases = ["gradient", "step", "memory", "parts", "profile", "peers"]
    assert set(result) == {"config", *phases}
    assert [line.split(":")[0].strip() for line in lines] == phases
    step = result["step"]
    assert step["backprop_s"] > 0 and step["matmul_gflops"] > 0
    assert 0 < step["backprop_roofline"]["median"]
    parts = result["parts"]["parts_s"]
    assert len(parts) == 6 and any(name.startswith("blocks (2 x") for name in parts)
    profile = result["profile"]  # jax.profiler's ops, every group named, most of them timed
    assert list(profile["op_s"]) == list(bench_gpt2.PROFILE_GROUPS)
    assert profile["op_s"]["blocks (attention, MLP)"] > 0 and profile["op_s"]["AdamW (optax)"] > 0
    assert profile["op_s"]["head matmuls (forward, backward)"] > 0 and profile["wall_s"] > 0
    assert profile["top_ops"] and all(op["s"] > 0 for op in profile["top_ops"])
    assert result["peers"]["torch_s"] > 0
    assert result["peers"]["missing"] == {"torch_compile": "skipped (quick run)"}
    text = bench.to_markdown({"environment": bench.environment(), "quick": True,
                              "configs": {"tiny": result}})  # fmt: skip
    assert "| tiny |" in text and "Where the time goes, tiny" in text and "Machine:" in text
    assert "jax.profiler, tiny" in text


def test_the_torch_peer_computes_the_same_loss_gradients_and_adamw_step(x64):
    torch = peer("torch")
    from jaxbp.bench import torch_seq

    model, loss, params, _, x, y = TINY.problem()
    params = to_float64(params)
    adamw = {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1}

    def build(params):
        return torch_seq.adamw_step(model, params, **adamw)

    step = build(params)
    step.net.double()
    # One parameter for the table and the head, as jaxbp's Tied: the torch twin shares it.
    assert step.net[-1].weight is step.net[0].weight and step.net[-1].bias is None
    torch_value = float(step(*step.convert(np.array(x), np.array(y))))
    value, grads = jax.jit(lambda p: backprop(model, loss, p, x, y))(params)
    # float64 on both sides from the same float32 values: they differ only in the order of
    # their sums, ~1e-16 per operation over a few hundred terms; 1e-10 is far above that and
    # far below any real difference (a lost bias, an untied head, a wrong scale).
    assert torch_value == pytest.approx(float(value), rel=1e-12)
    positions = Positions(lambda p: build(p).net, params)
    torch_grads = positions.tree([p.grad.numpy() for p in step.net.parameters()])
    assert_leaves_close(torch_grads, grads, rtol=1e-10, what="torch grads")
    # The step itself: optax.adamw with the same settings on jaxbp's gradient.
    opt = optax.adamw(1e-2, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1)
    updates, _ = opt.update(grads, opt.init(params), params)
    stepped = optax.apply_updates(params, updates)
    with torch.no_grad():
        torch_params = positions.tree([p.numpy() for p in step.net.parameters()])
    # Adam's first step is lr g / (|g| + eps) per entry, which turns a gradient entry's
    # rounding into a step's only where |g| ~ eps; here relative 1e-10 again.
    assert_leaves_close(torch_params, stepped, rtol=1e-10, what="params after one AdamW step")
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), stepped, params)
    assert max(jax.tree.leaves(moved)) > 1e-3  # the step moved the params


def test_profile_groups_name_each_scope():
    group = bench_gpt2.profile_group  # a 2-layer GPT-2: the head at [7], its LayerNorm at [6]
    assert group("jit(step)/optimizer/add", 7) == "AdamW (optax)"
    assert group("jit(step)/loss backward/mul", 7) == "softmax cross-entropy"
    assert group("jit(step)/[7] Dense forward/dot_general", 7).startswith("head matmuls")
    assert group("jit(step)/[] Tied sum/transpose", 7, dot=True).startswith("head matmuls")
    assert group("jit(step)/[] Tied sum/add", 7) == "embedding scatter + tied sum"
    assert group("jit(step)/[0] Embedding backward/scatter-add", 7).startswith("embedding scat")
    assert group("jit(step)/[3][2] Gelu backward/mul", 7) == "blocks (attention, MLP)"
    assert group("jit(step)/[2][0] LayerNorm forward/sub", 7) == "blocks (attention, MLP)"
    assert group("jit(step)/[6] LayerNorm backward/mul", 7).startswith("embeddings forward")
    assert group("", 7) == "copies and ops without a scope"
