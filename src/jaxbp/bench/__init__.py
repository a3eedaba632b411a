"""Benchmarks: hand-written backprop against jax.grad, NumPy by hand and PyTorch, side by side.

Every comparison runs in one process, interleaved in rotating order, after warm-up; the tables
report paired ratios as medians with their 95% confidence interval and the interquartile range,
because this machine is shared and noisy.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp._matmul import weight_grad
from jaxbp.backprop import autodiff, backprop
from jaxbp.bench import peers
from jaxbp.bench._timing import compile_seconds, interleaved, ratio
from jaxbp.layers import mlp
from jaxbp.losses import get as get_loss
from jaxbp.train import make_epoch, make_step

__all__ = ["Config", "CONFIGS", "parse_config", "run_config", "run", "to_markdown"]

from jaxbp.bench._report import summarize, to_markdown  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config:
    """An MLP benchmark: input size, layer sizes, activations, loss and batch size."""

    name: str
    inputs: int
    layers: tuple[int, ...]
    activation: str
    loss: str
    batch: int
    output_activation: str | None = None

    def model(self):
        return mlp(list(self.layers), self.activation, self.output_activation)

    def describe(self) -> str:
        out = f"-{self.output_activation}" if self.output_activation else ""
        sizes = "-".join(map(str, (self.inputs, *self.layers)))
        return f"{sizes} {self.activation}{out}, {self.loss}, batch {self.batch}"


GRADIENT_SECONDS = 8.0  # of interleaved sampling for backprop against jax.grad, per config
STEP_SECONDS = 4.0  # the same for the training step: two candidates, not three
SETTLE_SECONDS = 0.2  # untimed calls before each sample when NumPy or PyTorch take part

CONFIGS = {
    "seed": Config("seed", 2, (2, 1), "sigmoid", "mse", 4, "sigmoid"),
    "digits": Config("digits", 64, (128, 128, 10), "relu", "softmax_cross_entropy", 128),
    "wide": Config("wide", 784, (1024, 1024, 10), "relu", "softmax_cross_entropy", 512),
    "deep": Config("deep", 32, (64,) * 16 + (1,), "tanh", "mse", 64),
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


def _problem(config: Config, n_batches: int = 1):
    model, loss = config.model(), get_loss(config.loss)
    kp, kx, ky = jax.random.split(jax.random.PRNGKey(0), 3)
    _, params = model.init(kp, (config.inputs,))
    n = config.batch * n_batches
    x = jax.random.normal(kx, (n, config.inputs))
    if config.loss == "mse":
        y = jax.random.uniform(ky, (n, config.layers[-1]))
    else:
        y = jax.random.randint(ky, (n,), 0, config.layers[-1])
    return model, loss, params, x, y


def gradient_times(config: Config, reps: int, seconds: float = 0.0) -> dict:
    """jit(backprop) against jit(jax.value_and_grad) on one batch."""
    model, loss, params, x, y = _problem(config)
    bp = jax.jit(lambda p, x, y: backprop(model, loss, p, x, y))
    ad = jax.jit(lambda p, x, y: autodiff(model, loss, p, x, y))
    # jax.grad against itself: how far from 1.000 the same program lands on this machine.
    ad_again = jax.jit(lambda p, x, y: autodiff(model, loss, p, x, y))
    fns = {"backprop": bp, "jax.grad": ad, "null": ad_again}
    t = interleaved(
        {name: partial(f, params, x, y) for name, f in fns.items()}, reps=reps, seconds=seconds
    )
    compile_bp = compile_seconds(lambda p, x, y: backprop(model, loss, p, x, y), params, x, y)
    compile_ad = compile_seconds(lambda p, x, y: autodiff(model, loss, p, x, y), params, x, y)
    return {
        "backprop_s": float(np.median(t["backprop"])),
        "jax_grad_s": float(np.median(t["jax.grad"])),
        "ratio": ratio(t["backprop"], t["jax.grad"]),
        "null_ratio": ratio(t["null"], t["jax.grad"]),
        "samples": len(t["backprop"]),
        "compile_backprop_s": compile_bp,
        "compile_jax_grad_s": compile_ad,
    }


def _stepper(step, params, opt_state, x, y) -> Callable:
    state = [params, opt_state]

    def call():
        state[0], state[1], value = step(state[0], state[1], x, y)
        return value

    return call


def step_times(config: Config, reps: int, seconds: float = 0.0) -> dict:
    """A full optax SGD step, buffers donated, with each gradient engine."""
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


def epoch_times(config: Config, reps: int, steps: int) -> dict:
    """Per-step time of a whole epoch as one compiled lax.scan, of a loop of jitted steps over
    fixed batches, and of a NumPy epoch by hand: side by side, so their ratios are paired."""
    model, loss, params, x, y = _problem(config, steps)
    opt = optax.sgd(1e-3)
    epoch = make_epoch(model, loss, opt, batch_size=config.batch, steps=steps)
    step = make_step(model, loss, opt)
    batches = [
        (x[i * config.batch : (i + 1) * config.batch], y[i * config.batch : (i + 1) * config.batch])
        for i in range(steps)
    ]
    key, state = jax.random.PRNGKey(1), [params, opt.init(params)]
    loop_state = [jax.tree.map(jnp.copy, params), opt.init(params)]

    def scanned():
        state[0], state[1], value = epoch(state[0], state[1], x, y, key)
        return value

    def looped():
        for xb, yb in batches:
            loop_state[0], loop_state[1], value = step(loop_state[0], loop_state[1], xb, yb)
        return value

    numpy_step, rng = _numpy_step(config), np.random.default_rng(1)
    x_np, y_np = np.asarray(x), np.asarray(y)

    def by_hand():  # a NumPy epoch does what the compiled one does: shuffle, gather, step
        order = rng.permutation(len(x_np)).reshape(steps, config.batch)
        return [numpy_step(x_np[idx], y_np[idx]) for idx in order][-1]

    fns = {"scan": scanned, "loop": looped, "numpy": by_hand}
    t = interleaved(fns, reps=reps, min_sample=0, settle=SETTLE_SECONDS)
    return {
        "scan_step_s": float(np.median(t["scan"])) / steps,
        "loop_step_s": float(np.median(t["loop"])) / steps,
        "numpy_step_s": float(np.median(t["numpy"])) / steps,
        "ratio": ratio(t["scan"], t["loop"]),
        "numpy_over_scan": ratio(t["numpy"], t["scan"]),
        "steps": steps,
    }


def _numpy_step(config: Config) -> Callable:
    sizes = (config.inputs, *config.layers)
    return peers.numpy_step(sizes, config.activation, config.output_activation, config.loss)


def roofline(config: Config, reps: int) -> dict:
    """A training step against only the matmuls it must do (forward, dW, dx past layer 1).

    dW in the layout backprop uses, the fastest this platform has.
    """
    model, loss, params, x, y = _problem(config)
    dense = [p for p in params if isinstance(p, dict)]

    @jax.jit
    def bare(ws, x, dys):
        h, products = x, []
        for W in ws:
            h = h @ W
            products.append(h)
        for i, (W, dy) in enumerate(zip(ws, dys)):
            products.append(weight_grad(products[i - 1] if i else x, dy))
            if i:
                products.append(dy @ W.T)
        return products

    ws = [p["W"] for p in dense]
    dys = [jnp.ones((config.batch, w.shape[1])) for w in ws]
    opt = optax.sgd(1e-3)
    step = _stepper(
        make_step(model, loss, opt), jax.tree.map(jnp.copy, params), opt.init(params), x, y
    )
    t = interleaved({"step": step, "bare": lambda: bare(ws, x, dys)}, reps=reps)
    flops = sum(
        2 * config.batch * w.shape[0] * w.shape[1] * (3 if i else 2) for i, w in enumerate(ws)
    )
    return {
        "step_s": float(np.median(t["step"])),
        "bare_matmul_s": float(np.median(t["bare"])),
        "fraction_of_roofline": ratio(t["bare"], t["step"]),
        "matmul_gflops": flops / float(np.median(t["bare"])) / 1e9,
    }


def peer_times(config: Config, reps: int) -> dict:
    """Per-step time of NumPy by hand and PyTorch eager, next to the compiled jaxbp step."""
    model, loss, params, x, y = _problem(config)
    sizes = (config.inputs, *config.layers)
    x_np, y_np = np.asarray(x), np.asarray(y)
    fns = {"numpy": _bind(_numpy_step(config), x_np, y_np)}
    torch_step = peers.torch_step(sizes, config.activation, config.output_activation, config.loss)
    if torch_step is not None:
        fns["torch"] = _bind(torch_step, *torch_step.convert(x_np, y_np))
    opt = optax.sgd(1e-2)
    fns["jaxbp"] = _stepper(
        make_step(model, loss, opt), jax.tree.map(jnp.copy, params), opt.init(params), x, y
    )
    t = interleaved(fns, reps=reps, settle=SETTLE_SECONDS)
    return {f"{name}_s": float(np.median(v)) for name, v in t.items()} | {
        f"{name}_over_jaxbp": ratio(v, t["jaxbp"]) for name, v in t.items() if name != "jaxbp"
    }


def _bind(step, x, y):
    return lambda: step(x, y)


def run_config(
    config: Config, *, quick: bool = False, report: Callable[[str], None] = lambda line: None
) -> dict:
    """Every measurement of one model; `report` gets a line as each one finishes."""
    reps, steps = (5, 4) if quick else (41, 50)
    # The headline ratios get the most samples: a 0.5% difference needs a thousand or so.
    grad_seconds, step_seconds = (0.0, 0.0) if quick else (GRADIENT_SECONDS, STEP_SECONDS)
    phases = {
        "gradient": lambda: gradient_times(config, reps if quick else 3 * reps, grad_seconds),
        "step": lambda: step_times(config, reps, step_seconds),
        "epoch": lambda: epoch_times(config, max(3, reps // 4), steps),
        "peers": lambda: peer_times(config, reps),
    }
    if config.name == "wide" or not quick:
        phases["roofline"] = lambda: roofline(config, reps)
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
    configs: list[Config], *, quick: bool = False, report: Callable[[str], None] = print
) -> dict:
    results = {"environment": environment(), "quick": quick, "configs": {}}
    for config in configs:
        report(f"benchmarking {config.name}: {config.describe()} ...")
        results["configs"][config.name] = run_config(config, quick=quick, report=report)
    return results
