"""The numbers `jaxbp explain --plot` draws: one example's forward and backward pass unit by unit,
from `backprop_with_signals`, and the batch means beside jax.grad's.

A model is an MLP spec, IN,UNITS,...:ACTIVATION[:OUTPUT_ACTIVATION]; the seed's is
2,2,1:sigmoid:sigmoid. Dense layer k (0-based) sits at path (2k,), its activation at (2k+1,); the
last activation exists only when the spec names an output activation.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.backprop import autodiff, backprop
from jaxbp.layers import mlp
from jaxbp.losses import mse
from jaxbp.signals import backprop_with_signals

__all__ = ["MAX_UNITS", "MAX_LAYERS", "ModelSpec", "SEED_SPEC", "parse_model", "Pass", "Numbers"]

MAX_UNITS = 4  # per layer: 5 x 5 crossing edges leave their labels no room on the lines
MAX_LAYERS = 3  # Dense layers: a wider picture is read only zoomed in
ELEMENTWISE = ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "softplus", "silu")
ELEMENTWISE += ("identity",)
SPEC_FORM = "IN,UNITS,...:ACTIVATION[:OUTPUT_ACTIVATION], e.g. 2,3,1:tanh:sigmoid"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """An MLP: sizes[0] inputs, then one Dense layer of sizes[l] units for each l >= 1."""

    sizes: tuple[int, ...]
    activation: str
    output_activation: str | None

    def model(self):
        return mlp(self.sizes[1:], self.activation, self.output_activation)

    def __str__(self) -> str:
        out = f":{self.output_activation}" if self.output_activation else ""
        return f"{','.join(map(str, self.sizes))}:{self.activation}{out}"


SEED_SPEC = ModelSpec((2, 2, 1), "sigmoid", "sigmoid")


def parse_model(text: str) -> ModelSpec:
    """IN,UNITS,...:ACTIVATION[:OUTPUT_ACTIVATION] (no output activation: a linear output)."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"{text!r} is not {SPEC_FORM}")
    try:
        sizes = tuple(int(s) for s in parts[0].split(","))
    except ValueError:
        raise ValueError(f"{text!r}: the sizes must be integers ({SPEC_FORM})") from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"{text!r}: give the input size and 1+ layer sizes, all positive")
    if max(sizes) > MAX_UNITS:
        raise ValueError(
            f"{text!r} has {max(sizes)} units in a layer; the picture is legible up to "
            f"{MAX_UNITS} units per layer (the input included)"
        )
    if len(sizes) - 1 > MAX_LAYERS:
        raise ValueError(
            f"{text!r} has {len(sizes) - 1} layers; the picture is legible up to "
            f"{MAX_LAYERS} layers (the sizes after the input size)"
        )
    for name in parts[1:]:
        if name not in ELEMENTWISE:
            raise ValueError(
                f"{text!r}: activation {name!r} is not one of {', '.join(ELEMENTWISE)} "
                "(the picture needs an elementwise f, with f'(z) per unit)"
            )
    if len(sizes) == 2 and parts[1] != "identity":  # no hidden layer: nothing would use it
        raise ValueError(
            f"{text!r} has no hidden layer, so ACTIVATION would go unused; write "
            f"{parts[0]}:identity:{parts[1]} for a {parts[1]} output"
        )
    return ModelSpec(sizes, parts[1], parts[2] if len(parts) == 3 else None)


def spec_data(spec: ModelSpec, seed: int, dtype=jnp.float64):
    """The batch a custom model is drawn on: XOR for 2 inputs and 1 output, else 4 inputs
    ~ N(0, 1) and targets ~ U(0, 1) from `seed`. Returns (x: (4, in), y: (4, out), words)."""
    if spec.sizes[0] == 2 and spec.sizes[-1] == 1:
        x = jnp.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype)
        return x, jnp.array([[0], [1], [1], [0]], dtype), "the XOR points"
    kx, ky = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), 1))
    x = jax.random.normal(kx, (4, spec.sizes[0]), dtype)
    y = jax.random.uniform(ky, (4, spec.sizes[-1]), dtype)
    return x, y, f"4 random examples (seed {seed})"


@dataclasses.dataclass
class Pass:
    """One example through the network; per Dense layer k: z[k], o[k] (after the activation),
    fprime[k] = f'(z[k]), delta[k] = dL/dz[k], all (units,); grads[k] = dL/dW[k]: (in, units)."""

    x: np.ndarray
    y: np.ndarray
    z: list
    o: list
    fprime: list
    delta: list
    dL_dyhat: np.ndarray
    loss: float
    grads: list


def _fprime(layer, z):
    """f'(z) by the activation's own hand-written rule: its backward of a cotangent of ones."""
    _, saved = layer.forward((), z[None])
    return layer.backward((), saved, jnp.ones_like(z[None]))[1][0]


def one_pass(spec: ModelSpec, params, x, y) -> Pass:
    """x: (in,), y: (out,); the signals of a batch of one, so no 1/m: the loss L, not C."""
    model, n = spec.model(), len(spec.sizes) - 1
    value, grads, sig = backprop_with_signals(model, mse, params, x[None], y[None])
    z, o, fp, delta = [], [], [], []
    for k in range(n):
        z.append(sig[2 * k].output[0])
        delta.append(sig[2 * k].delta[0])
        has_act = (2 * k + 1,) in sig
        o.append(sig[2 * k + 1].output[0] if has_act else z[-1])
        fp.append(_fprime(model.layers[2 * k + 1], z[-1]) if has_act else jnp.ones_like(z[-1]))
    last = max(sig)  # the output layer's path: dL/dy' is the delta reaching it
    np_ = lambda a: np.asarray(a, np.float64)  # noqa: E731
    return Pass(
        np_(x), np_(y), *[list(map(np_, v)) for v in (z, o, fp, delta)],
        np_(sig[last].delta[0]), float(value), [np_(grads[2 * k]["W"]) for k in range(n)],
    )  # fmt: skip


@dataclasses.dataclass
class Numbers:
    """Everything the picture shows. `example` is 0-based; weights[k]: (in, units)."""

    spec: ModelSpec
    weights: list
    example: int
    passes: list  # one Pass per example
    cost: float
    batch_grads: list  # dC/dW[k] by backprop
    referee: list  # dC/dW[k] by jax.grad
    data: str  # what the batch is, in words

    @property
    def shown(self) -> Pass:
        return self.passes[self.example]

    @property
    def seed_like(self) -> bool:
        return self.spec == SEED_SPEC


def numbers(spec: ModelSpec, params, x, y, example: int, data: str) -> Numbers:
    """Every pass of the batch x: (m, in), y: (m, out), and the batch gradient both ways."""
    if not 0 <= example < x.shape[0]:
        raise ValueError(f"--example must be 1 to {x.shape[0]}, got {example + 1}")
    model, n = spec.model(), len(spec.sizes) - 1
    cost, g_bp = backprop(model, mse, params, x, y)
    _, g_ad = autodiff(model, mse, params, x, y)
    per = [one_pass(spec, params, x[i], y[i]) for i in range(x.shape[0])]
    w = [np.asarray(params[2 * k]["W"], np.float64) for k in range(n)]
    grads = [[np.asarray(g[2 * k]["W"], np.float64) for k in range(n)] for g in (g_bp, g_ad)]
    return Numbers(spec, w, example, per, float(cost), *grads, data)
