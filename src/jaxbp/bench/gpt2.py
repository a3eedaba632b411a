"""GPT-2 benchmark configs: `gpt2("124M")` on random ids at llm.c's CPU shapes (batch 4 x 64),
and at batch 1 with T 256 and 1024, where attention's share grows.

Measured side by side in one process, each phase interleaved (`_timing.interleaved`):
- gradient: jit(backprop) against jit(jax.grad) and a null (jax.grad against a fresh copy of
  itself, how far from 1.000 the same program lands here);
- step: a whole AdamW step (optax.adamw, buffers donated) with each engine, its null, and a bare
  2048^3 float32 matmul in the same rotation: the roofline fraction is the step's matmul FLOP
  rate over the bare matmul's, pair by pair;
- memory: XLA's buffer assignment for the backprop step, with and without attention recompute
  (arguments + outputs + temporaries - aliased: the step's peak, as XLA plans it), under
  XLA:CPU's default scheduler and its memory-minimising one;
- parts: where the time goes, each part jitted alone at the config's shapes;
- profile: where the time goes in the whole step, by jax.profiler, each op summed into the part
  its named scope (jaxbp.walk's layer paths) names;
- peers: PyTorch eager and torch.compile, the same model and weights, torch.optim.AdamW.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp.bench._timing import engines, interleaved, median_ci, ratio
from jaxbp.bench.mlp import SETTLE_SECONDS, _stepper
from jaxbp.bench.sequence import torch_peer
from jaxbp.layers.gpt2 import SIZES, VOCAB_SIZE, build_gpt2, gpt2
from jaxbp.losses import softmax_cross_entropy
from jaxbp.train import make_step

# llm.c's train_gpt2.c: AdamW(lr 1e-4, betas 0.9, 0.999, eps 1e-8, weight decay 0).
ADAMW = {"learning_rate": 1e-4, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0}
MATMUL_N = 2048  # the roofline's bare matmul: 2048 x 2048 @ 2048 x 2048, float32
MIN_SAMPLE_S = 0.5  # of the step phase's samples (a step is one call; the matmul five or so)
SECONDS = 120.0  # of interleaved sampling per phase in a full run (the 1.4 s steps: ~20 each)


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """gpt2(size) on random ids (batch, T), softmax cross-entropy over every position."""

    name: str
    batch: int
    T: int
    size: str = "124M"
    loss: str = "softmax_cross_entropy"
    # (vocab, layers, features, heads) of a small GPT-2 for the tests, in place of size's
    custom: tuple[int, int, int, int] | None = None

    @property
    def dims(self) -> tuple[int, int, int, int]:
        """(vocab, layers, features, heads)."""
        return self.custom or (VOCAB_SIZE, *SIZES[self.size])

    def model(self, recompute: bool = False):
        if self.custom:
            vocab, layers, C, heads = self.custom
            return build_gpt2(vocab, 1024, layers, C, heads, recompute=recompute)
        return gpt2(self.size, recompute=recompute)

    def describe(self) -> str:
        what = f"GPT-2 {self.custom}" if self.custom else f"gpt2({self.size!r})"
        return (
            f"{what} on random ids, batch {self.batch} x T {self.T}, AdamW (llm.c's "
            f"settings), softmax cross-entropy over {self.dims[0]:,} classes"
        )

    def problem(self, recompute: bool = False):
        """(model, loss, params, state, x, y); state is None."""
        model = self.model(recompute)
        kp, kx, ky = jax.random.split(jax.random.PRNGKey(0), 3)
        _, params = model.init(kp, (self.T,))
        x = jax.random.randint(kx, (self.batch, self.T), 0, self.dims[0])
        y = jax.random.randint(ky, (self.batch, self.T), 0, self.dims[0])
        return model, softmax_cross_entropy, params, None, x, y

    def flops(self, recompute: bool = False) -> dict[str, float]:
        """Matmul FLOPs of one gradient, as the program computes them (attention's (T, T)
        products in full, the causal mask applied after): 3x the forward's (the forward, and
        backward's two products per forward product); recompute adds one q k^T per layer."""
        vocab, layers, C, _ = self.dims
        tokens = self.batch * self.T
        dense = 2 * tokens * (layers * 12 * C * C + vocab * C)  # qkv, out, fc, proj; head
        attention = 2 * 2 * layers * self.batch * self.T**2 * C  # q k^T and p v
        forward = dense + attention
        extra = attention / 2 if recompute else 0.0
        return {"forward": float(forward), "gradient": float(3 * forward + extra)}


CONFIGS = {
    "gpt2": GPT2Config("gpt2", 4, 64),
    "gpt2-t256": GPT2Config("gpt2-t256", 1, 256),
    "gpt2-t1024": GPT2Config("gpt2-t1024", 1, 1024),
}


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)  # donation consumes buffers


def _gradient_fn(model, loss, engine: str) -> Callable:
    from jaxbp import autodiff, backprop

    f = backprop if engine == "backprop" else autodiff
    return jax.jit(lambda p, x, y: f(model, loss, p, x, y))


def gradient_times(config: GPT2Config, reps: int, seconds: float = 0.0) -> dict:
    model, loss, params, _, x, y = config.problem()
    fns = {
        name: functools.partial(_gradient_fn(model, loss, engine), params, x, y)
        for name, engine in (
            ("backprop", "backprop"),
            ("jax.grad", "autodiff"),
            ("null", "autodiff"),
        )  # fmt: skip
    }
    t = interleaved(fns, reps=reps, warmup=1, seconds=seconds)
    return {**engines(t), **_rooflines(config, {"backprop": t["backprop"]}, None)}


def _matmul() -> Callable:
    a, b = (jax.random.normal(jax.random.PRNGKey(i), (MATMUL_N, MATMUL_N)) for i in (1, 2))
    mm = jax.jit(lambda a, b: a @ b)
    return lambda: mm(a, b)


def _rooflines(config: GPT2Config, times: dict, matmul) -> dict:
    """The FLOP rate of each timed program over the bare matmul's, pair by pair (median and
    95% CI); without matmul samples, only the rates."""
    flops = config.flops()["gradient"]
    out = {f"{name}_gflops": flops / float(np.median(t)) / 1e9 for name, t in times.items()}
    if matmul is None:
        return out
    peak = 2 * MATMUL_N**3 / matmul
    out["matmul_gflops"] = float(np.median(peak)) / 1e9
    for name, t in times.items():
        fraction = (flops / t) / peak
        low, high = median_ci(fraction)
        out[f"{name}_roofline"] = {"median": float(np.median(fraction)), "ci95_low": low,
                                   "ci95_high": high}  # fmt: skip
    return out


def _steppers(config: GPT2Config, which: dict[str, str]) -> dict:
    """{name: a callable taking one donated AdamW step with engine which[name]}, each with
    its own copy of the params and optimizer state."""
    model, loss, params, _, x, y = config.problem()
    opt = optax.adamw(**ADAMW)
    return {
        name: _stepper(make_step(model, loss, opt, engine), _copy(params), opt.init(params), x, y)
        for name, engine in which.items()
    }


def step_times(
    config: GPT2Config, reps: int, seconds: float = 0.0, *, min_sample: float = MIN_SAMPLE_S
) -> dict:
    """AdamW steps with each engine (and the null), the bare matmul in the same rotation. A
    sample lasts at least MIN_SAMPLE_S: a matmul sample is then several calls, the first of
    which, after a step has filled the caches with other data, would alone read slow. (The quick
    run, a smoke test whose times mean nothing, takes one call a sample.)"""
    fns = _steppers(config, {"backprop": "backprop", "jax.grad": "autodiff", "null": "autodiff"})
    fns["matmul"] = _matmul()
    t = interleaved(fns, reps=reps, warmup=1, seconds=seconds, min_sample=min_sample)
    steps = {"backprop": t["backprop"], "jax.grad": t["jax.grad"]}
    return {
        **engines(t),
        "matmul_s": float(np.median(t["matmul"])),
        "flops": config.flops()["gradient"],
        **_rooflines(config, steps, t["matmul"]),
    }


# XLA:CPU's default scheduler favours running independent ops at once over memory: it computes
# attention's recomputed weights for every layer early and holds them all, so recompute plans no
# less memory under it. The memory-minimising scheduler (this flag off) shows what recompute saves.
MEMORY_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def memory(config: GPT2Config) -> dict:
    """XLA's planned peak of the backprop AdamW step, with and without attention recompute:
    arguments + outputs + temporaries - what outputs alias (donated params and moments). Under
    the default scheduler (in this process) and, on CPU, the memory-minimising one (in a
    subprocess, since XLA reads its flags once per process)."""
    out = {"default": planned_memory(config)}
    if jax.default_backend() == "cpu":
        out["memory_scheduler"] = _planned_memory_with(config, MEMORY_SCHEDULER_FLAG)
    return out


def planned_memory(config: GPT2Config) -> dict:
    """{"saved_p" | "recompute": {"peak_bytes", "temp_bytes", "argument_bytes"}}, compiled here
    (never run)."""
    out = {}
    for recompute in (False, True):
        model, loss, params, _, x, y = config.problem(recompute)
        opt = optax.adamw(**ADAMW)
        step = make_step(model, loss, opt, "backprop")
        args = (params, opt.init(params), x, y)
        stats = step.lower(*args).compile().memory_analysis()
        total = (
            stats.argument_size_in_bytes + stats.output_size_in_bytes
            + stats.temp_size_in_bytes - stats.alias_size_in_bytes
        )  # fmt: skip
        out["recompute" if recompute else "saved_p"] = {
            "peak_bytes": int(total),
            "temp_bytes": int(stats.temp_size_in_bytes),
            "argument_bytes": int(stats.argument_size_in_bytes),
        }
    return out


def _planned_memory_with(config: GPT2Config, flag: str) -> dict:
    """planned_memory in a fresh Python process whose XLA_FLAGS add flag."""
    import json
    import os
    import subprocess
    import sys

    fields = json.dumps(dataclasses.asdict(config))
    code = (
        "import json, sys; from jaxbp.bench.gpt2 import GPT2Config, planned_memory; "
        "f = json.loads(sys.argv[1]); f['custom'] = f['custom'] and tuple(f['custom']); "
        "print(json.dumps(planned_memory(GPT2Config(**f))))"
    )
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()}
    done = subprocess.run(
        [sys.executable, "-c", code, fields], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Where the time goes: each part of the step jitted alone, at the config's shapes


def _parts(config: GPT2Config) -> dict[str, Callable]:
    """Callables for each part of one backprop AdamW step, built from the model's own layers."""
    from jaxbp.walk import layer_at

    model, loss, params, _, x, y = config.problem()
    vocab, layers, C, _ = config.dims
    table = params[0]["table"]
    key = jax.random.split(jax.random.PRNGKey(3), 4)
    h = jax.random.normal(key[0], (config.batch, config.T, C))
    dlogits = jax.random.normal(key[1], (config.batch, config.T, vocab)) * 1e-6
    head = layer_at(model, (len(params) - 1,))
    embedding = layer_at(model, (0,))

    @jax.jit
    def head_matmuls(table, h, dlogits):  # forward logits, dx, dW (the Tied head's, as one)
        logits, saved = head.forward({"W": table.T}, h)
        grads, dh = head.backward({"W": table.T}, saved, dlogits)
        return logits, dh, grads["W"].T + table

    @jax.jit
    def cross_entropy(logits, y):  # the loss's forward and backward over 50,257 classes
        value, saved = loss.forward(logits, y)
        return value, loss.backward(saved)

    @jax.jit
    def embedding_scatter(table, x, dh):  # the token rows' gradient, added to the head's
        grads, _ = embedding.backward({"table": table}, x, dh)
        return grads["table"] + table

    block_model = model.body.body  # the Tied serial: one attention and one MLP block
    blocks = (block_model.layers[2], block_model.layers[3])
    block_params = (params[2], params[3])

    @jax.jit
    def one_layer(p, h, dh):  # attention block and MLP block, forward and backward
        y1, r1 = blocks[0].forward(p[0], h)
        y2, r2 = blocks[1].forward(p[1], y1)
        g2, d1 = blocks[1].backward(p[1], r2, dh)
        g1, d0 = blocks[0].backward(p[0], r1, d1)
        return (g1, g2), d0

    opt = optax.adamw(**ADAMW)
    grads = jax.tree.map(lambda a: a * 1e-3, params)

    def adamw(p, s, g):
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s

    adamw_jit = jax.jit(adamw, donate_argnums=(0, 1))
    state = [_copy(params), opt.init(params)]

    def optimizer():
        state[0], state[1] = adamw_jit(state[0], state[1], grads)
        return state[0][0]["table"]

    logits = jnp.einsum("btc,vc->btv", h, table)
    return {
        "head matmuls (logits, dx, dtable)": lambda: head_matmuls(table, h, dlogits),
        "softmax cross-entropy": lambda: cross_entropy(logits, y),
        "embedding scatter + tied sum": lambda: embedding_scatter(table, x, h),
        f"blocks ({layers} x attention + MLP)": lambda: one_layer(block_params, h, h),
        "AdamW (optax)": optimizer,
        "whole step (backprop)": _steppers(config, {"backprop": "backprop"})["backprop"],
    }


def part_times(config: GPT2Config, reps: int) -> dict:
    """Seconds of each part of the step, jitted alone and interleaved; the blocks' time is one
    layer's times num_layers; "rest" is the whole step less the sum of the parts."""
    layers = config.dims[1]
    t = interleaved(_parts(config), reps=reps, warmup=1)
    seconds = {name: float(np.median(v)) for name, v in t.items()}
    for name in seconds:
        if name.startswith("blocks"):
            seconds[name] *= layers
    whole = seconds.pop("whole step (backprop)")
    seconds["rest (embedding and position forward, final LayerNorm, glue)"] = whole - sum(
        seconds.values()
    )
    return {"whole_s": whole, "parts_s": seconds}


# ---------------------------------------------------------------------------------------------
# Where the time goes, by jax.profiler: the ops of the whole step, grouped by the named scope
# each carries (jaxbp.walk names every layer's forward and backward by its path)

TOP_OPS = 25  # the profile keeps the longest ops by name, with their scope
PROFILE_GROUPS = (
    "head matmuls (forward, backward)", "softmax cross-entropy", "embedding scatter + tied sum",
    "blocks (attention, MLP)", "embeddings forward, final LayerNorm", "AdamW (optax)",
    "copies and ops without a scope",
)  # fmt: skip


def profile_group(op_name: str, last: int, dot: bool = False) -> str:
    """The group of an HLO op whose metadata op_name is `op_name`; `last`: the head's index;
    dot: the op is a matrix product (XLA folds the tied sum's transpose into the head's dW)."""
    import re

    if dot and "Tied sum" in op_name:
        return "head matmuls (forward, backward)"
    if "optimizer" in op_name:
        return "AdamW (optax)"
    if "loss forward" in op_name or "loss backward" in op_name:
        return "softmax cross-entropy"
    if "Tied sum" in op_name or "[0] Embedding backward" in op_name:
        return "embedding scatter + tied sum"
    layer = re.search(r"((?:\[\d+\])+) \w+ (?:forward|backward)", op_name)
    if layer is None:
        return "copies and ops without a scope"
    index = int(layer.group(1)[1:].partition("]")[0])  # the top-level step of its path
    if index == last:
        return "head matmuls (forward, backward)"
    if index in (0, 1, last - 1):
        return "embeddings forward, final LayerNorm"
    return "blocks (attention, MLP)"


def profile(config: GPT2Config, steps: int, directory: str) -> dict:
    """Trace `steps` backprop AdamW steps with jax.profiler and sum each op's time by group.

    An op's time is its event's duration, or for an op XLA:CPU runs asynchronously (a dot on
    Eigen's threads, whose event ends at its launch) the time to its "end:" marker. With two
    cores, ops run side by side, so the summed op time exceeds the step's wall time: the table
    gives each group's share of the op time, and the wall time of a traced step beside it."""
    import glob
    import time

    model, loss, params, _, x, y = config.problem()
    opt = optax.adamw(**ADAMW)
    step = make_step(model, loss, opt, "backprop")
    state = [_copy(params), opt.init(params)]
    compiled_text = step.lower(state[0], state[1], x, y).compile().as_text()
    op_names, dots = _op_names(compiled_text)
    for _ in range(2):  # compile and warm up outside the trace
        state[0], state[1], value = step(state[0], state[1], x, y)
    jax.block_until_ready(value)
    jax.profiler.start_trace(directory)
    walls = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state[0], state[1], value = step(state[0], state[1], x, y)
        jax.block_until_ready(value)
        walls.append(time.perf_counter() - t0)
    jax.profiler.stop_trace()
    path = sorted(glob.glob(f"{directory}/**/*.xplane.pb", recursive=True))[-1]
    data = jax.profiler.ProfileData.from_file(path)
    begun, ended = {}, {}  # an op's event and its "end:" marker share a flow id
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                flow = stats.get("_p", stats.get("_c"))
                if event.name.startswith("end: "):
                    ended[(event.name[5:], flow)] = event.start_ns
                elif "hlo_op" in stats and str(stats.get("hlo_module", "")).startswith("jit_step"):
                    begun[(stats["hlo_op"], flow)] = (event.start_ns, event.duration_ns)
    last = len(params) - 1
    per_op: dict[str, float] = {}
    for (op, flow), (start, duration) in begun.items():
        end = max(start + duration, ended.get((op, flow), 0))  # async: ends at its marker
        per_op[op] = per_op.get(op, 0.0) + (end - start) / steps / 1e9
    op_seconds = dict.fromkeys(PROFILE_GROUPS, 0.0)
    for op, seconds in per_op.items():
        op_seconds[profile_group(op_names.get(op, ""), last, op in dots)] += seconds
    top = sorted(per_op, key=per_op.get, reverse=True)[:TOP_OPS]
    top_ops = [{"op": op, "s": per_op[op], "op_name": op_names.get(op, "")} for op in top]
    wall = float(np.median(walls))
    return {"wall_s": wall, "op_s": op_seconds, "steps": steps, "top_ops": top_ops}


def _op_names(hlo: str) -> tuple[dict[str, str], set[str]]:
    """({instruction: its metadata op_name}, the instructions that are or contain a dot) of an
    optimized HLO module; a fusion that contains a dot takes its dot's op_name (XLA fuses the
    head's forward matmul with the loss's first reduction: the matmul is the work)."""
    import re

    named = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = ([^\n]*)$", re.M)
    scope = re.compile(r'op_name="([^"]*)"')
    dots, computation = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^%?([\w.\-]+) .*\{$", line)
        if header and not line.startswith(" "):
            computation = header.group(1)
        elif computation and re.search(r"= \S+ dot\(", line) and scope.search(line):
            dots.setdefault(computation, scope.search(line).group(1))
    names, products = {}, set()
    for op, rest in named.findall(hlo):
        called = re.search(r"calls=%([\w.\-]+)", rest)
        if called and called.group(1) in dots:
            names[op] = dots[called.group(1)]
            products.add(op)
        elif scope.search(rest):
            names[op] = scope.search(rest).group(1)
            if re.match(r"\S+ dot\(", rest):
                products.add(op)
    return names, products


def profile_phase(config: GPT2Config, steps: int) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        return profile(config, steps, directory)


# ---------------------------------------------------------------------------------------------
# PyTorch peers


def peer_times(
    config: GPT2Config, reps: int, *, compiled: bool = True, seconds: float = 0.0
) -> dict:
    """The jaxbp AdamW step (backprop) beside PyTorch eager's and torch.compile's, the same
    weights and settings, interleaved."""
    fns = _steppers(config, {"jaxbp": "backprop"})
    missing: dict[str, str] = {}
    for name, compile_it in (("torch", False), ("torch_compile", True)):
        why = _add_torch_peer(fns, name, config, compile_it, quick=not compiled)
        if why:
            missing[name] = why
    # Each sample after SETTLE_SECONDS of untimed calls to the same candidate: torch's threads
    # spin for a while after its step, which slowed the next XLA matmul on 2 cores.
    t = interleaved(fns, reps=reps, warmup=1, seconds=seconds, settle=SETTLE_SECONDS)
    return (
        {f"{name}_s": float(np.median(v)) for name, v in t.items()}
        | {f"{name}_over_jaxbp": ratio(v, t["jaxbp"]) for name, v in t.items() if name != "jaxbp"}
        | ({"missing": missing} if missing else {})
    )


def _add_torch_peer(fns, name, config, compile_it, *, quick) -> str | None:
    """Add the torch.optim.AdamW twin (eager or compiled) to fns, or say why not."""
    adamw = {"lr": ADAMW["learning_rate"], "betas": (ADAMW["b1"], ADAMW["b2"]),
             "eps": ADAMW["eps"], "weight_decay": ADAMW["weight_decay"]}  # fmt: skip

    def build(torch_seq, model, params):
        return torch_seq.adamw_step(model, params, compiled=compile_it, **adamw)

    return torch_peer(fns, name, config, build, compiled=compile_it, quick=quick)


def run_config(config: GPT2Config, *, quick: bool, report: Callable[[str], None]) -> dict:
    """Every measurement of one GPT-2 config; `report` gets a line as each finishes."""
    import time

    from jaxbp.bench._report import summarize

    reps, seconds = (1, 0.0) if quick else (6, SECONDS)
    phases = {
        "gradient": lambda: gradient_times(config, reps, seconds),
        "step": lambda: step_times(
            config, reps, seconds, min_sample=0.0 if quick else MIN_SAMPLE_S
        ),
        "memory": lambda: memory(config),
        "parts": lambda: part_times(config, reps),
        "profile": lambda: profile_phase(config, 2 if quick else 3),
        "peers": lambda: peer_times(config, reps, compiled=not quick, seconds=seconds),
    }
    result = {"config": config.describe()}
    for name, measure in phases.items():
        t0 = time.perf_counter()
        result[name] = measure()
        line = summary(name, result[name]) or summarize(name, result[name])
        report(f"  {name}: {line} ({time.perf_counter() - t0:.0f} s)")
    return result


def to_markdown(configs: dict) -> str:
    """The GPT-2 tables: engines, roofline and peers; memory; where the time goes."""
    from jaxbp.bench._report import _r, _t

    head = ["config", "gradient: backprop", "jax.grad", "backprop / jax.grad", "null",
            "gradient roofline", "step: backprop", "jax.grad", "backprop / jax.grad", "null",
            "step roofline", "PyTorch eager", "eager / jaxbp", "torch.compile",
            "compile / jaxbp"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, r in configs.items():
        g, s, p = r["gradient"], r["step"], r["peers"]
        roof = s["backprop_roofline"]
        cells = [
            name, _t(g["backprop_s"]), _t(g["jax_grad_s"]), _r(g["ratio"]), _r(g["null_ratio"]),
            f"{gradient_roofline(r):.0%}", _t(s["backprop_s"]), _t(s["jax_grad_s"]),
            _r(s["ratio"]), _r(s["null_ratio"]),
            f"{roof['median']:.0%} [{roof['ci95_low']:.0%}-{roof['ci95_high']:.0%}] of "
            f"{s['matmul_gflops']:.0f} GFLOP/s",
        ]  # fmt: skip
        for peer in ("torch", "torch_compile"):
            if f"{peer}_s" in p:
                cells += [_t(p[f"{peer}_s"]), _r(p[f"{peer}_over_jaxbp"])]
            else:
                cells += [p.get("missing", {}).get(peer, "-"), "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| config | XLA scheduler | peak memory, p saved | with recompute | "
              "temporaries, p saved | with recompute |",
              "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    schedulers = {"default": "default (concurrency first)", "memory_scheduler": "memory-minimising"}
    for name, r in configs.items():
        for scheduler, m in r["memory"].items():
            lines.append(
                f"| {name} | {schedulers[scheduler]} | {_mb(m['saved_p']['peak_bytes'])} | "
                f"{_mb(m['recompute']['peak_bytes'])} | {_mb(m['saved_p']['temp_bytes'])} | "
                f"{_mb(m['recompute']['temp_bytes'])} |"
            )
    for name, r in configs.items():
        parts = r["parts"]
        title = f"Where the time goes, {name} (each part jitted alone; whole step "
        lines += ["", f"{title}{_t(parts['whole_s'])}):", "", "| part | time | share |",
                  "| --- | --- | --- |"]  # fmt: skip
        for part, seconds in parts["parts_s"].items():
            lines.append(f"| {part} | {_t(seconds)} | {seconds / parts['whole_s']:.0%} |")
    for name, r in configs.items():
        prof = r["profile"]
        total = sum(prof["op_s"].values())
        lines += ["", f"jax.profiler, {name}: the ops of {prof['steps']} traced backprop steps "
                  f"({_t(prof['wall_s'])} each), summed by the scope they carry:", "",
                  "| group | op time per step | share |", "| --- | --- | --- |"]  # fmt: skip
        for group, seconds in prof["op_s"].items():
            lines.append(f"| {group} | {_t(seconds)} | {seconds / total:.0%} |")
    return "\n".join(lines)


def gradient_roofline(r: dict) -> float:
    """The gradient's matmul FLOP rate (its median time) over the step phase's bare matmul."""
    return r["gradient"]["backprop_gflops"] / r["step"]["matmul_gflops"]


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def summary(phase: str, r: dict) -> str | None:
    """One line for the progress report, or None for the generic one."""
    if phase == "memory":
        return "; ".join(
            f"{scheduler} scheduler: "
            + ", ".join(f"{k} {_mb(v['peak_bytes'])}" for k, v in m.items())
            for scheduler, m in r.items()
        )
    if phase == "parts":
        return ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in r["parts_s"].items())
    if phase == "profile":
        total = sum(r["op_s"].values())
        shares = ", ".join(f"{k} {v / total:.0%}" for k, v in r["op_s"].items())
        return f"traced step {r['wall_s'] * 1e3:.0f} ms; op time {total * 1e3:.0f} ms: {shares}"
    if phase == "step" and "backprop_roofline" in r:
        return (
            f"backprop {r['backprop_s'] * 1e3:.0f} ms, jax.grad {r['jax_grad_s'] * 1e3:.0f} ms, "
            f"ratio {r['ratio']['median']:.3f}, null {r['null_ratio']['median']:.3f}, roofline "
            f"{r['backprop_roofline']['median']:.0%} of {r['matmul_gflops']:.0f} GFLOP/s"
        )
    return None
