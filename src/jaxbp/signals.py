"""Per-layer signals: what enters, leaves and comes back to every layer, which autodiff hides.

`backprop_with_signals` runs backprop's two sweeps and also returns, for every layer at any depth
(named by its path in the params tree, e.g. (3, 0, 1)), its input, its output and its delta: the
cotangent dC/d(output) that reaches it in the reverse sweep (for a Dense layer, the textbooks'
dC/dz). Plain `backprop` records nothing, so the signals cost nothing unless asked for. The
same sweep (`jaxbp.walk.trace`) takes replacement backward rules, which is how `jaxbp.feedback`
swaps credit assignment while keeping the forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxbp._types import Array, Grads, Params, PRNGKey
from jaxbp.protocols import State
from jaxbp.walk import ByPath, Path, Rule, params_at, trace

__all__ = [
    "LayerSignals", "Signals", "ByPath", "Rule", "backprop_with_signals", "signal_stats",
    "to_floats", "params_at",
]  # fmt: skip


class LayerSignals(NamedTuple):
    """One layer's signals. input: (batch, *in); output and delta = dC/d(output): (batch, *out)."""

    input: Array
    output: Array
    delta: Array


Signals = ByPath  # of LayerSignals, one per leaf layer


def backprop_with_signals(
    model: Any,
    loss: Any,
    params: Params,
    x: Array,
    y: Array,
    *,
    key: PRNGKey | None = None,
    state: State = None,
    rules: Callable[[Array], Mapping[Path | int, Rule]] | Mapping[Path | int, Rule] | None = None,
) -> tuple:
    """backprop's (value, grads), plus each leaf layer's LayerSignals(input, output, delta) by
    path, in forward order; with state=..., (value, grads, signals, new_state).

    rules: {leaf path: Rule} replacing those leaves' backward rules, or a function of the output
    error e = dC/dy_pred that gives them (see jaxbp.feedback); None is plain backprop. A path
    names a leaf layer, never a combinator (jaxbp.walk). Works under jit and vmap.
    """
    t = trace(model, loss, params, x, y, key=key, state=state, rules=rules)
    signals = ByPath(
        (p, LayerSignals(t.inputs[p], t.outputs[p], t.deltas.get(p))) for p in t.inputs
    )
    return (t.value, t.grads, signals) if state is None else (t.value, t.grads, signals, t.state)


def _norm(a: Array) -> Array:
    return jnp.sqrt(jnp.sum(jnp.square(a)))


def _rms(a: Array) -> Array:
    return jnp.sqrt(jnp.mean(jnp.square(a)))


def signal_stats(signals: Signals, grads: Grads) -> ByPath:
    """Per layer (by path), for gradient-flow plots: {"delta_norm", "delta_rms", "output_rms"},
    plus {"grad_norm", "grad_rms"} over all of the layer's gradient leaves when it has params.

    Scalars as arrays, so it runs under jit; `to_floats` and `.named()` make it JSON-ready.
    Deltas carry C's 1/batch factor, as the gradients do.
    """
    stats = ByPath()
    for path, s in signals.items():
        layer = {"delta_norm": _norm(s.delta), "delta_rms": _rms(s.delta)}
        layer["output_rms"] = _rms(s.output)
        leaves = jax.tree.leaves(params_at(grads, path))
        if leaves:
            flat = jnp.concatenate([jnp.ravel(leaf) for leaf in leaves])
            layer["grad_norm"], layer["grad_rms"] = _norm(flat), _rms(flat)
        stats[path] = layer
    return stats


def _float(a: Any) -> float | None:
    value = float(a)
    # JSON has no NaN or infinity; null says "undefined" (e.g. the angle of a zero vector).
    return value if math.isfinite(value) else None


def to_floats(tree: Any) -> Any:
    """The same nested dicts and tuples with each scalar leaf a Python float (non-finite: None);
    a ByPath becomes a dict keyed by printed path (`'[3][0][1]'`), so json.dumps takes it."""
    out = jax.tree.map(_float, tree)
    return out.named() if isinstance(out, ByPath) else out
