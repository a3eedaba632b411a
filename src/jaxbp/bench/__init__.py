"""Benchmarks: hand-written backprop against jax.grad, NumPy by hand and PyTorch, side by side.

Every comparison runs in one process, interleaved in rotating order, after warm-up; the tables
report paired ratios as medians with their 95% confidence interval and the interquartile range,
because this machine is shared and noisy. Three kinds of config: MLPs (`mlp.Config`, also the
epoch, roofline and NumPy measurements) and convolutional nets with BatchNorm's state carried
(`vision.VisionConfig`, with PyTorch eager and torch.compile as peers); and sequence models, a
GPT and a character LSTM (`sequence.SequenceConfig`, nn.LSTM a peer too); and GPT-2 124M
(`gpt2.GPT2Config`: AdamW steps, the roofline, memory, where the time goes, PyTorch peers).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp.bench import gpt2, mlp, sequence, vision
from jaxbp.bench._timing import compile_seconds, engines, interleaved, ratio
from jaxbp.bench.gpt2 import GPT2Config
from jaxbp.bench.mlp import SETTLE_SECONDS, Config, _problem, _stepper
from jaxbp.bench.sequence import SequenceConfig
from jaxbp.bench.vision import VisionConfig
from jaxbp.losses import get as get_loss
from jaxbp.train import make_step

__all__ = [
    "Config", "VisionConfig", "CONFIGS", "parse_config", "run_config", "run", "to_markdown",
]  # fmt: skip

from jaxbp.bench._report import summarize  # noqa: E402
from jaxbp.bench._report import to_markdown as _to_markdown  # noqa: E402

GRADIENT_SECONDS = 8.0  # of interleaved sampling for backprop against jax.grad, per config
STEP_SECONDS = 4.0  # the same for the training step: two candidates, not three

CONFIGS: dict[str, Config | VisionConfig] = {
    "seed": Config("seed", 2, (2, 1), "sigmoid", "mse", 4, "sigmoid"),
    "digits": Config("digits", 64, (128, 128, 10), "relu", "softmax_cross_entropy", 128),
    "wide": Config("wide", 784, (1024, 1024, 10), "relu", "softmax_cross_entropy", 512),
    "deep": Config("deep", 32, (64,) * 16 + (1,), "tanh", "mse", 64),
    **vision.CONFIGS,
    **sequence.CONFIGS,
    **gpt2.CONFIGS,
}


def parse_config(spec: str) -> Config:
    """A user's MLP as IN:LAYERS:ACTIVATION:LOSS:BATCH, e.g. 784:1024,10:relu:mse:512."""
    parts = spec.split(":")
    if len(parts) != 5:
        raise ValueError(f"model spec {spec!r} must be IN:LAYERS:ACTIVATION:LOSS:BATCH")
    inputs, layers, act, loss, batch = parts
    try:
        config = Config(
            "custom", int(inputs), tuple(int(s) for s in layers.split(",")), act, loss, int(batch)
        )
    except ValueError:
        raise ValueError(f"model spec {spec!r}: IN, LAYERS and BATCH must be integers") from None
    if min(config.inputs, config.batch, *config.layers) < 1:
        raise ValueError(f"model spec {spec!r}: IN, LAYERS and BATCH must be positive")
    config.model(), get_loss(loss)  # unknown names fail here, before any timing
    return config


def _stateful_problem(config: Config | VisionConfig):
    """(model, loss, params, state, x, y); state is None for a model that keeps none."""
    if isinstance(config, (VisionConfig, SequenceConfig)):
        return config.problem()
    model, loss, params, x, y = _problem(config)
    return model, loss, params, None, x, y


def gradient_times(config: Config | VisionConfig, reps: int, seconds: float = 0.0) -> dict:
    """jit(backprop) against jit(jax.value_and_grad) on one batch (in training mode, reading and
    updating the state, for a model that keeps one)."""
    model, loss, params, state, x, y = _stateful_problem(config)
    # A fresh function each time, so that no jit or trace cache is shared: the null (jax.grad
    # against itself) then shows how far from 1.000 the same program lands on this machine.
    fresh = partial(vision.gradient_fn, model, loss)
    fns = {"backprop": fresh("backprop"), "jax.grad": fresh("autodiff"), "null": fresh("autodiff")}
    args = (params, state, x, y)
    t = interleaved(
        {name: partial(jax.jit(f), *args) for name, f in fns.items()}, reps=reps, seconds=seconds
    )
    return {
        **engines(t),
        "compile_backprop_s": compile_seconds(fresh("backprop"), *args),
        "compile_jax_grad_s": compile_seconds(fresh("autodiff"), *args),
    }


def step_times(config: Config | VisionConfig, reps: int, seconds: float = 0.0) -> dict:
    """A full optax SGD step, buffers donated, with each gradient engine."""
    if isinstance(config, VisionConfig):
        fns = vision.step_candidates(config)
    elif isinstance(config, SequenceConfig):
        fns = sequence.step_candidates(config)
    else:
        model, loss, params, x, y = _problem(config)
        opt = optax.sgd(1e-3)
        copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731 - donation consumes buffers
        fns = {
            name: _stepper(make_step(model, loss, opt, name), copy(params), opt.init(params), x, y)
            for name in ("backprop", "autodiff")
        }
    t = interleaved(fns, reps=reps, seconds=seconds)
    return {
        "backprop_s": float(np.median(t["backprop"])),
        "jax_grad_s": float(np.median(t["autodiff"])),
        "ratio": ratio(t["backprop"], t["autodiff"]),
    }


def run_config(
    config: Config | VisionConfig,
    *,
    quick: bool = False,
    report: Callable[[str], None] = lambda line: None,
) -> dict:
    """Every measurement of one model; `report` gets a line as each one finishes."""
    if isinstance(config, GPT2Config):
        return gpt2.run_config(config, quick=quick, report=report)
    reps, steps = (5, 4) if quick else (41, 50)
    # The headline ratios get the most samples: a 0.5% difference needs a thousand or so.
    grad_seconds, step_seconds = (0.0, 0.0) if quick else (GRADIENT_SECONDS, STEP_SECONDS)
    phases = {
        "gradient": lambda: gradient_times(config, reps if quick else 3 * reps, grad_seconds),
        "step": lambda: step_times(config, reps, step_seconds),
    }
    if isinstance(config, (VisionConfig, SequenceConfig)):  # torch.compile: not in quick
        settle, peers = SETTLE_SECONDS, (vision if isinstance(config, VisionConfig) else sequence)
        phases["peers"] = lambda: peers.peer_times(config, reps, settle=settle, compiled=not quick)
    else:
        phases["epoch"] = lambda: mlp.epoch_times(config, max(3, reps // 4), steps)
        phases["peers"] = lambda: mlp.peer_times(config, reps)
        if config.name == "wide" or not quick:
            phases["roofline"] = lambda: mlp.roofline(config, reps)
    result = {"config": config.describe()}
    for name, measure in phases.items():
        t0 = time.perf_counter()
        result[name] = measure()
        report(f"  {name}: {summarize(name, result[name])} ({time.perf_counter() - t0:.0f} s)")
    return result


def environment() -> dict:
    import jaxlib

    torch_version = None
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        pass
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or "?",
        "cpus": _cpus(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "torch": torch_version,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "date": time.strftime("%Y-%m-%d"),
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def run(
    configs: list[Config | VisionConfig],
    *,
    quick: bool = False,
    report: Callable[[str], None] = print,
) -> dict:
    results = {"environment": environment(), "quick": quick, "configs": {}}
    for config in configs:
        report(f"benchmarking {config.name}: {config.describe()} ...")
        results["configs"][config.name] = run_config(config, quick=quick, report=report)
    return results


def to_markdown(results: dict) -> str:
    """Every table; the sequence configs get one more, with nn.LSTM and the jax.grad step; the
    GPT-2 configs tables of their own."""
    configs = results["configs"]
    big = {n: r for n, r in configs.items() if "memory" in r}
    rest = {n: r for n, r in configs.items() if n not in big}
    seq = {n: r for n, r in rest.items() if "jax_grad_s" in r.get("peers", {})}
    text = _to_markdown({**results, "configs": rest})
    text = text if rest else text.split("\n")[0]  # the machine line alone
    text = f"{text}\n\n{sequence.to_markdown(seq)}" if seq else text
    return f"{text}\n\n{gpt2.to_markdown(big)}".strip() if big else text
