"""Fingerprints of the compiled gradient and step programs of the four MLP benchmark configs.

Two checkouts print the same fingerprints exactly when XLA compiled the same programs (optimized
HLO with metadata stripped), so their benchmark ratios carry over without a re-run. Usage:

    python benchmarks/hlo_fingerprints.py                                # this checkout
    PYTHONPATH=OTHER_CHECKOUT/src python benchmarks/hlo_fingerprints.py  # another one
"""

from __future__ import annotations

import hashlib
import re

import jax
import jax.numpy as jnp
import optax

import jaxbp
from jaxbp import mlp, mse, softmax_cross_entropy
from jaxbp.train import make_step

# The benchmark's MLP configs: (model, loss, input shape, batch, regression target width).
CONFIGS = {
    "seed": (mlp([2, 1], "sigmoid", "sigmoid"), mse, (2,), 4, 1),
    "digits": (mlp([128, 128, 10], "relu"), softmax_cross_entropy, (64,), 128, None),
    "wide": (mlp([1024, 1024, 10], "relu"), softmax_cross_entropy, (784,), 512, None),
    "deep": (mlp([64] * 16 + [1], "tanh"), mse, (32,), 64, 1),
}


def fingerprint(compiled) -> str:
    """The optimized HLO without source locations, which differ between checkouts."""
    text = re.sub(r", metadata=\{[^}]*\}", "", compiled.as_text())
    lines = [line for line in text.splitlines() if not re.match(r'^\d+ ["{]', line)]
    text = re.sub(r",? ?stack_frame_id=\d+", "", "\n".join(lines))
    return hashlib.md5(text.encode()).hexdigest()[:12]


def main() -> None:
    for name, (model, loss, shape, batch, width) in CONFIGS.items():
        _, params = model.init(jax.random.PRNGKey(0), shape)
        x = jnp.ones((batch, *shape))
        y = jnp.ones((batch, width)) if width else jnp.zeros((batch,), jnp.int32)
        grad = jax.jit(jaxbp.backprop, static_argnums=(0, 1)).lower(model, loss, params, x, y)
        opt = optax.sgd(0.1)
        step = make_step(model, loss, opt).lower(params, opt.init(params), x, y)
        print(name, "grad", fingerprint(grad.compile()), "step", fingerprint(step.compile()))


if __name__ == "__main__":
    main()
