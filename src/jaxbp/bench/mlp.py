"""The MLP configs and what only they measure: a compiled epoch against a loop of steps and a
NumPy epoch by hand, the bare-matmul roofline, and the NumPy and PyTorch-eager peers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp._matmul import weight_grad
from jaxbp.bench import peers
from jaxbp.bench._timing import interleaved, ratio
from jaxbp.layers import mlp
from jaxbp.losses import get as get_loss
from jaxbp.train import make_epoch, make_step

SETTLE_SECONDS = 0.2  # untimed calls before each sample when NumPy or PyTorch take part


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


def _stepper(step, params, opt_state, x, y) -> Callable:
    state = [params, opt_state]

    def call():
        state[0], state[1], value = step(state[0], state[1], x, y)
        return value

    return call


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
