"""Per-layer signals: what enters, leaves and comes back to every layer, which autodiff hides.

`backprop_with_signals` runs backprop's two sweeps one layer at a time and also returns, for each
layer of a serial model, its input, its output and its delta: the cotangent dC/d(output) that
reaches it in the reverse sweep (for a Dense layer, the textbooks' dC/dz). Plain `backprop` is
untouched, so the signals cost nothing unless asked for. The same sweep takes replacement backward
rules, which is how `jaxbp.feedback` swaps credit assignment while keeping the forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxbp._types import Array, Grads, Params, PRNGKey, Residuals

__all__ = [
    "LayerSignals", "Signals", "Rule", "backprop_with_signals", "forward_sweep", "reverse_sweep",
    "signal_stats", "to_floats",
]  # fmt: skip


class LayerSignals(NamedTuple):
    """One layer's signals. input: (batch, *in); output and delta = dC/d(output): (batch, *out)."""

    input: Array
    output: Array
    delta: Array


Signals = tuple[LayerSignals, ...]
# A backward rule in the layer protocol's convention: (params, residuals, dy) -> (dparams, dx).
Rule = Callable[[Params, Residuals, Array], tuple[Grads, Array]]


def _layers(model: Any) -> tuple:
    layers = getattr(model, "layers", None)
    if not isinstance(layers, (tuple, list)) or not hasattr(model, "reverse_sweep"):
        raise TypeError(f"per-layer sweeps need a serial model (with .layers), got {model!r:.80}")
    return tuple(layers)


def forward_sweep(
    model: Any, params: Params, x: Array, *, key: PRNGKey | None = None
) -> tuple[Array, Residuals, tuple[Array, ...]]:
    """model.forward one layer at a time: (y_pred, residuals, inputs), inputs[i] into layer i."""
    _layers(model)
    return model.forward_sweep(params, x, key=key)


def reverse_sweep(
    model: Any,
    params: Params,
    residuals: Residuals,
    dy: Array,
    rules: Mapping[int, Rule] | None = None,
) -> tuple[Grads, tuple[Array, ...]]:
    """model.backward one layer at a time: (grads, deltas), deltas[i] reaching layer i's output.

    rules[i], when given, replaces layer i's backward; every other layer uses its own.
    """
    layers, rules = _layers(model), dict(rules or {})
    unknown = sorted(i for i in rules if not (isinstance(i, int) and 0 <= i < len(layers)))
    if unknown:
        raise ValueError(
            f"rules for layers {unknown}, but the model has layers 0..{len(layers) - 1}"
        )
    grads, _, deltas = model.reverse_sweep(params, residuals, dy, rules)
    return grads, deltas


def backprop_with_signals(
    model: Any,
    loss: Any,
    params: Params,
    x: Array,
    y: Array,
    *,
    key: PRNGKey | None = None,
    rules: Callable[[Array], Mapping[int, Rule]] | None = None,
) -> tuple[Array, Grads, Signals]:
    """backprop's (value, grads), plus each layer's LayerSignals(input, output, delta), in order.

    rules(e), given the output error e = dC/dy_pred, names backward rules that replace those of
    chosen layers (see jaxbp.feedback); None is plain backprop. Works under jit and vmap.
    """
    y_pred, residuals, inputs = forward_sweep(model, params, x, key=key)
    value, loss_residuals = loss.forward(y_pred, y)
    e = loss.backward(loss_residuals)
    grads, deltas = reverse_sweep(model, params, residuals, e, None if rules is None else rules(e))
    outputs = (*inputs[1:], y_pred)
    return value, grads, tuple(map(LayerSignals, inputs, outputs, deltas))


def _norm(a: Array) -> Array:
    return jnp.sqrt(jnp.sum(jnp.square(a)))


def _rms(a: Array) -> Array:
    return jnp.sqrt(jnp.mean(jnp.square(a)))


def signal_stats(signals: Signals, grads: Grads) -> tuple[dict[str, Array], ...]:
    """Per layer, for gradient-flow plots: {"delta_norm", "delta_rms", "output_rms"}, plus
    {"grad_norm", "grad_rms"} over all of the layer's gradient leaves when it has params.

    Scalars as arrays, so it runs under jit; `to_floats` makes the result JSON-ready.
    Deltas carry C's 1/batch factor, as the gradients do.
    """
    stats = []
    for s, g in zip(signals, grads, strict=True):
        layer = {"delta_norm": _norm(s.delta), "delta_rms": _rms(s.delta)}
        layer["output_rms"] = _rms(s.output)
        leaves = jax.tree.leaves(g)
        if leaves:
            flat = jnp.concatenate([jnp.ravel(leaf) for leaf in leaves])
            layer["grad_norm"], layer["grad_rms"] = _norm(flat), _rms(flat)
        stats.append(layer)
    return tuple(stats)


def _float(a: Any) -> float | None:
    value = float(a)
    # JSON has no NaN or infinity; null says "undefined" (e.g. the angle of a zero vector).
    return value if math.isfinite(value) else None


def to_floats(tree: Any) -> Any:
    """The same nested dicts and tuples with each scalar leaf a Python float (non-finite: None)."""
    return jax.tree.map(_float, tree)
