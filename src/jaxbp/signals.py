"""Per-layer signals: what enters, leaves and comes back to every layer, which autodiff hides.

`backprop_with_signals` runs backprop's two sweeps and also returns, for every layer at any depth
(named by its path in the params tree, e.g. (3, 0, 1)), its input, its output and its delta: the
cotangent dC/d(output) that reaches it in the reverse sweep (for a Dense layer, the textbooks'
dC/dz). Plain `backprop` is
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
from jaxbp.layers.combinators import Rule, Sweep, sweep_backward, sweep_forward
from jaxbp.layers.protocol import Path, State, is_combinator, path_str

__all__ = [
    "LayerSignals", "Signals", "ByPath", "Rule", "backprop_with_signals", "forward_sweep",
    "reverse_sweep", "signal_stats", "to_floats", "params_at",
]  # fmt: skip


class LayerSignals(NamedTuple):
    """One layer's signals. input: (batch, *in); output and delta = dC/d(output): (batch, *out)."""

    input: Array
    output: Array
    delta: Array


@jax.tree_util.register_pytree_node_class
class ByPath(dict):
    """{path: value} in forward order, a layer's path being its address in the params tree,
    e.g. (3, 0, 1). An int i stands for the top-level path (i,). A pytree, so jit returns it."""

    def __getitem__(self, path):
        return super().__getitem__(_as_path(path))

    def __contains__(self, path):
        return super().__contains__(_as_path(path))

    def named(self) -> dict[str, Any]:
        """The same values keyed by printed path, '[3][0][1]': ready for JSON."""
        return {path_str(p): v for p, v in self.items()}

    def tree_flatten(self):
        return list(self.values()), list(self.keys())

    @classmethod
    def tree_unflatten(cls, paths, values):
        return cls(zip(paths, values))


def _as_path(path) -> Path:
    return (path,) if isinstance(path, int) else tuple(path)


Signals = ByPath  # of LayerSignals, one per layer that is not a combinator


def _check_rules(model: Any, rules: Mapping) -> dict[Path, Rule]:
    """rules keyed by path (an int i meaning (i,)); a path that names no layer raises."""
    rules = {_as_path(p): r for p, r in dict(rules or {}).items()}
    known = set(_all_paths(model))
    unknown = sorted(path_str(p) for p in rules if p not in known)
    if unknown:
        raise ValueError(
            f"rules for layers {', '.join(unknown)}, but the model's layers are at "
            f"{', '.join(sorted(map(path_str, known - {()})))}"
        )
    return rules


def _all_paths(model: Any, path: Path = ()):
    yield path
    if is_combinator(model):
        for step, child in model.sublayers():
            yield from _all_paths(child, path + step)


def forward_sweep(
    model: Any, params: Params, x: Array, *, key: PRNGKey | None = None, state: State = None
) -> tuple[Array, Residuals, ByPath, State]:
    """model's forward, also returning each leaf layer's input by path: (y, residuals, inputs,
    new_state); state None runs without a state tree (new_state is then None)."""
    sweep = Sweep(record=True)
    y, residuals, state = sweep_forward(model, params, state, x, key, (), sweep)
    return y, residuals, ByPath(sweep.inputs), state


def reverse_sweep(
    model: Any,
    params: Params,
    residuals: Residuals,
    dy: Array,
    rules: Mapping[Path | int, Rule] | None = None,
) -> tuple[Grads, ByPath]:
    """model's backward, also returning the delta reaching each leaf layer's output by path.

    rules[path], when given, replaces that layer's backward rule (a combinator's too); every
    other layer uses its own.
    """
    sweep = Sweep(rules=_check_rules(model, rules), record=True)
    grads, _ = sweep_backward(model, params, residuals, dy, (), sweep)
    return grads, ByPath(sweep.deltas)


def backprop_with_signals(
    model: Any,
    loss: Any,
    params: Params,
    x: Array,
    y: Array,
    *,
    key: PRNGKey | None = None,
    state: State = None,
    rules: Callable[[Array], Mapping[Path | int, Rule]] | None = None,
) -> tuple:
    """backprop's (value, grads), plus each leaf layer's LayerSignals(input, output, delta) by
    path, in forward order; with state=..., (value, grads, signals, new_state).

    rules(e), given the output error e = dC/dy_pred, names backward rules that replace those of
    chosen layers, by path (see jaxbp.feedback); None is plain backprop. Works under jit and vmap.
    """
    sweep = Sweep(record=True)
    y_pred, residuals, new_state = sweep_forward(model, params, state, x, key, (), sweep)
    value, loss_residuals = loss.forward(y_pred, y)
    e = loss.backward(loss_residuals)
    if rules is not None:
        sweep.rules = _check_rules(model, rules(e))
    grads, _ = sweep_backward(model, params, residuals, e, (), sweep)
    signals = ByPath(
        (p, LayerSignals(sweep.inputs[p], sweep.outputs[p], sweep.deltas.get(p)))
        for p in sweep.inputs
    )
    return (value, grads, signals) if state is None else (value, grads, signals, new_state)


def params_at(params: Params, path: Path) -> Params:
    """The subtree of params (or grads) at a layer's path."""
    for step in path:
        params = params[step]
    return params


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
    a ByPath becomes a dict keyed by printed path ('[3][0][1]'), so json.dumps takes it."""
    out = jax.tree.map(_float, tree)
    return out.named() if isinstance(out, ByPath) else out
