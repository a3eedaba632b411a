"""Convolutional benchmark configs: a model builder, an input shape and a batch, with BatchNorm's
state carried through every step; PyTorch eager and torch.compile as peers on the same network."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp.backprop import autodiff, backprop
from jaxbp.bench import peers
from jaxbp.bench._timing import interleaved, ratio
from jaxbp.layers import cnn, init_state, resnet
from jaxbp.losses import get as get_loss
from jaxbp.train import make_step

BUILDERS: dict[str, Callable[..., Any]] = {"cnn": cnn, "resnet": resnet}
ENGINES = {"backprop": backprop, "autodiff": autodiff}


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """A convolutional benchmark: BUILDERS[builder](outputs, **options) on a batch of images of
    `input_shape` (H, W, C), from the digits ("digits") or standard normal ("random")."""

    name: str
    builder: str
    options: tuple[tuple[str, Any], ...]
    input_shape: tuple[int, ...]
    batch: int
    data: str = "random"
    outputs: int = 10
    loss: str = "softmax_cross_entropy"

    def model(self):
        return BUILDERS[self.builder](self.outputs, **dict(self.options))

    def describe(self) -> str:
        options = ", ".join(f"{k}={v}" for k, v in self.options)
        shape = "x".join(map(str, self.input_shape))
        return (
            f"{self.builder}({self.outputs}{', ' if options else ''}{options}) on {self.data} "
            f"{shape}, {self.loss}, batch {self.batch}"
        )

    def problem(self):
        """(model, loss, params, state, x, y): state is BatchNorm's, from init_state."""
        model, loss = self.model(), get_loss(self.loss)
        kp, kx, ky = jax.random.split(jax.random.PRNGKey(0), 3)
        _, params = model.init(kp, self.input_shape)
        if self.data == "digits":
            from jaxbp import datasets

            (x, y), _ = datasets.load("digits", images=True)
            x, y = jnp.asarray(x[: self.batch]), jnp.asarray(y[: self.batch])
        else:
            x = jax.random.normal(kx, (self.batch, *self.input_shape))
            y = jax.random.randint(ky, (self.batch,), 0, self.outputs)
        return model, loss, params, init_state(model, params), x, y


CONFIGS = {
    "cnn": VisionConfig("cnn", "cnn", (), (8, 8, 1), 128, data="digits"),
    "resnet": VisionConfig(
        "resnet", "resnet", (("stages", (16, 32)), ("blocks", 4)), (32, 32, 3), 64
    ),
}


def gradient_fn(model, loss, grad: str) -> Callable:
    """(params, state, x, y) -> (value, grads, new_state), in training mode, not yet jitted."""
    engine = ENGINES[grad]
    return lambda p, s, x, y: engine(model, loss, p, x, y, state=s)


def stepper(step, params, state, opt_state, x, y) -> Callable:
    """train.make_step's step, with state, as a zero-argument call that carries (params, state,
    opt_state) from call to call; it donates them, so the carry starts from copies."""
    carry = [jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, state), opt_state]

    def call():
        carry[0], carry[1], carry[2], value = step(carry[0], carry[2], x, y, state=carry[1])
        return value

    return call


def step_candidates(config: VisionConfig, lr: float = 1e-3) -> dict[str, Callable]:
    """A full optax SGD step with each gradient engine, ready to time."""
    model, loss, params, state, x, y = config.problem()
    opt = optax.sgd(lr)
    return {
        name: stepper(make_step(model, loss, opt, name), params, state, opt.init(params), x, y)
        for name in ENGINES
    }


def peer_times(config: VisionConfig, reps: int, *, settle: float, compiled: bool = True) -> dict:
    """Per-step time of PyTorch eager and torch.compile on the same network, from the same
    params, next to the jitted jaxbp step (backprop, SGD at the same learning rate)."""
    model, loss, params, state, x, y = config.problem()
    lr = 1e-2
    opt = optax.sgd(lr)
    fns = {"jaxbp": stepper(make_step(model, loss, opt), params, state, opt.init(params), x, y)}
    missing = {}
    for name, compile_it in (("torch", False), ("torch_compile", True)):
        if compile_it and not compiled:
            missing[name] = "skipped (quick run)"
            continue
        step = peers.torch_net_step(
            model, params, config.input_shape, config.loss, lr=lr, compiled=compile_it
        )
        if step is None:
            missing[name] = "torch not installed"
            continue
        xt, yt = step.convert(np.asarray(x), np.asarray(y))
        try:  # the first call compiles; a peer that cannot is reported, not fatal
            step(xt, yt)
        except Exception as error:  # noqa: BLE001 - inductor raises many kinds (no compiler, ...)
            missing[name] = f"failed: {type(error).__name__}"
            continue
        fns[name] = _bind(step, xt, yt)
    t = interleaved(fns, reps=reps, settle=settle)
    return (
        {f"{name}_s": float(np.median(v)) for name, v in t.items()}
        | {f"{name}_over_jaxbp": ratio(v, t["jaxbp"]) for name, v in t.items() if name != "jaxbp"}
        | ({"missing": missing} if missing else {})
    )


def _bind(step, x, y):
    return lambda: step(x, y)
