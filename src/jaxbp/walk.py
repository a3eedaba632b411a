"""The walk, once: paths, the traversal of a model's layers, the two sweeps and their driver.

A path names one leaf layer (not a combinator) by its place in the params tree: (3, 0, 1) is
`params[3][0][1]`. Residual and Tied add no step, so in `serial(Dense(6), Residual(Dense(6)))`
(1,) names the inner Dense, never the Residual, whose own backward (dx + dy) always runs;
`children` refuses steps that overlap, so no two leaves share a path at any depth. `trace` is
the driver backprop, signals, feedback engines and the quantities share: the forward sweep, the
loss and its rule, the reverse sweep, each leaf's signals recorded on request and its backward
replaced where a rule names its path.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax

from jaxbp._types import Array, Grads, Params, PRNGKey, Residuals
from jaxbp.protocols import State, forward_state, is_combinator, params_disjoint

__all__ = [
    "Path", "Rule", "as_path", "path_str", "children", "nodes", "leaves", "layer_at", "map_layers",
    "params_at", "disjoint", "ByPath", "Sweep", "sweep_forward",
    "sweep_backward", "blame", "reverse", "Trace", "trace",
]  # fmt: skip

Path = tuple[int, ...]
"""A layer's place in the params tree: `(3, 0, 1)` is `params[3][0][1]`."""
# A backward rule in the protocol's convention: (params, residuals, dy) -> (dparams, dx).
Rule = Callable[[Params, Residuals, Array], tuple[Grads, Array]]
"""A backward rule in the protocol's convention: `(params, residuals, dy) -> (dparams, dx)`."""


def as_path(path: Any, what: str = "path") -> Path:
    """A path from a tuple (or list) of ints; an int i stands for the top-level path (i,)."""
    if isinstance(path, int) and not isinstance(path, bool):
        return (path,)
    if isinstance(path, (tuple, list)) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in path
    ):
        return tuple(path)
    raise TypeError(f"{what} must be an int or a tuple of ints, got {path!r}")


def path_str(path: Path) -> str:
    """`(3, 0, 1)` -> `'[3][0][1]'`; the model itself, `()`, is `'[]'`."""
    return "".join(f"[{i}]" for i in path) or "[]"


# ---------------------------------------------------------------------------------------------
# The static walk over the model's layers


def children(layer: Any) -> tuple[tuple[Path, Any], ...]:
    """A combinator's (step, child) pairs, checked: distinct steps, none a prefix of another."""
    pairs = tuple((as_path(step, f"{type(layer).__name__}: a step"), c) for step, c in
                  layer.sublayers())  # fmt: skip
    steps = [s for s, _ in pairs]
    for i, a in enumerate(steps):
        for b in steps[i + 1 :]:
            if a[: len(b)] == b or b[: len(a)] == a:
                raise ValueError(
                    f"{type(layer).__name__}: its children's steps {path_str(a)} and "
                    f"{path_str(b)} overlap, so two layers would answer to one path"
                )
    return pairs


def nodes(model: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """(path, layer) for every layer, combinators included (before their children): a
    combinator shares its path with its first leaf when it adds no step."""
    yield path, model
    if is_combinator(model):
        for step, child in children(model):
            yield from nodes(child, path + step)


def leaves(model: Any) -> Iterator[tuple[Path, Any]]:
    """(path, layer) for every leaf layer (not a combinator), in forward order."""
    return ((path, layer) for path, layer in nodes(model) if not is_combinator(layer))


def layer_at(model: Any, path: Any) -> Any:
    """The leaf layer at path; a path that names none raises, listing those that do."""
    path, found = as_path(path), dict(leaves(model))
    if path not in found:
        raise ValueError(
            f"no layer at {path_str(path)}: the model's layers are at "
            f"{', '.join(map(path_str, found))}"
        )
    return found[path]


def map_layers(fn: Callable[[Any], Any], layer: Any) -> Any:
    """fn applied to every layer of the tree, children first; combinators rebuilt around them."""
    if is_combinator(layer):
        layer = layer.with_sublayers(tuple(map_layers(fn, c) for _, c in children(layer)))
    return fn(layer)


def params_at(params: Params, path: Path) -> Params:
    """The subtree of params (or grads) at a leaf's path."""
    for step in path:
        params = params[step]
    return params


def disjoint(model: Any) -> bool:
    """True when every combinator in the model declares params_disjoint (each child reads its
    own params subtree, so per-example norms add over leaves); an undeclared one is sharing."""
    return all(params_disjoint(c) for _, c in nodes(model) if is_combinator(c))


@jax.tree_util.register_pytree_node_class
class ByPath(dict):
    """{path: value} in forward order. An int i stands for the top-level path (i,). A pytree,
    so jit returns it."""

    def __getitem__(self, path):
        return super().__getitem__(as_path(path))

    def __contains__(self, path):
        return super().__contains__(as_path(path))

    def named(self) -> dict[str, Any]:
        """The same values keyed by printed path, `'[3][0][1]'`: ready for JSON."""
        return {path_str(p): v for p, v in self.items()}

    def tree_flatten(self):
        return list(self.values()), list(self.keys())

    @classmethod
    def tree_unflatten(cls, paths, values):
        return cls(zip(paths, values))


# ---------------------------------------------------------------------------------------------
# The sweeps: combinators call sweep_forward and sweep_backward on each child, at path + step


@dataclasses.dataclass
class Sweep:
    """What a walk carries besides arrays: rules[path] replaces that leaf's backward; with
    record=True, each leaf's input, output, delta, params, residuals and returned dparams by
    path (a leaf reached twice then raises: one path, one record)."""

    rules: Mapping[Path, Rule] = dataclasses.field(default_factory=dict)
    record: bool = False
    inputs: dict = dataclasses.field(default_factory=dict)
    outputs: dict = dataclasses.field(default_factory=dict)
    deltas: dict = dataclasses.field(default_factory=dict)
    params: dict = dataclasses.field(default_factory=dict)
    residuals: dict = dataclasses.field(default_factory=dict)
    dparams: dict = dataclasses.field(default_factory=dict)
    ran: set = dataclasses.field(default_factory=set)


def sweep_forward(
    layer: Any, params: Params, state: State | None, x: Array, key: PRNGKey | None,
    path: Path, sweep: Sweep,
) -> tuple[Array, Residuals, State | None]:  # fmt: skip
    """One layer's forward inside a walk; state None means 'no state tree' (plain forward)."""
    if is_combinator(layer):
        return layer.walk_forward(params, state, x, key, path, sweep)
    with blame(path, layer), _scope(path, layer, "forward"):
        if state is None:
            y, residuals = layer.forward(params, x, key=key)
        else:
            y, residuals, state = forward_state(layer, params, state, x, key=key)
    if sweep.record:
        _once(sweep.inputs, path, layer, "forward")
        sweep.inputs[path], sweep.outputs[path] = x, y
    return y, residuals, state


def sweep_backward(
    layer: Any, params: Params, residuals: Residuals, dy: Array, path: Path, sweep: Sweep
) -> tuple[Grads, Array]:
    """One layer's backward inside a walk: a combinator's own, always; a leaf's rule, or the
    one sweep.rules names for its path."""
    if is_combinator(layer):
        return layer.walk_backward(params, residuals, dy, path, sweep)
    rule = sweep.rules.get(path, layer.backward)
    with blame(path, layer), _scope(path, layer, "backward"):
        out = rule(params, residuals, dy)
    if sweep.record:
        _once(sweep.ran, path, layer, "backward")
        sweep.deltas[path], sweep.params[path], sweep.residuals[path] = dy, params, residuals
        sweep.dparams[path] = out[0]
    sweep.ran.add(path)
    return out


def _scope(path: Path, layer: Any, sweep: str):
    """A named scope, `"[2][1] SelfAttention backward"`: a profile's ops (their HLO metadata)
    then name the layer and the sweep they belong to."""
    return jax.named_scope(f"{path_str(path)} {type(layer).__name__} {sweep}")


def _once(seen, path: Path, layer: Any, sweep: str) -> None:
    """A recording names one application of each leaf by its path: a second one raises."""
    if path in seen:
        raise ValueError(
            f"layer {path_str(path)} {layer!r} is reached twice in one {sweep} sweep (a "
            "combinator applies it twice): its signals, rule and per-example terms would be "
            "ambiguous"
        )


@contextlib.contextmanager
def blame(path: Path, layer: Any) -> Iterator[None]:
    """Prefix a ValueError, TypeError or NotImplementedError raised inside a layer with its
    path, `'layer [3][0] Dense(...)'`, once (the deepest); the model (path ()) adds nothing."""
    try:
        yield
    except (ValueError, TypeError, NotImplementedError) as error:
        message, name = str(error), repr(layer)
        if not path or message.startswith("layer ["):
            raise
        own = "" if message.startswith(name) else f"{name}: "
        raise type(error)(f"layer {path_str(path)} {own}{message}") from error


# ---------------------------------------------------------------------------------------------
# The driver


def _check_rules(model: Any, rules: Mapping | None) -> dict[Path, Rule]:
    """rules keyed by leaf path (an int i meaning (i,)); a path that names no leaf raises."""
    rules = {as_path(p, "a rule's path"): r for p, r in dict(rules or {}).items()}
    known = [p for p, _ in leaves(model)]
    unknown = sorted(path_str(p) for p in rules if p not in known)
    if unknown:
        raise ValueError(
            f"rules for layers {', '.join(unknown)}, but the model's layers are at "
            f"{', '.join(map(path_str, known))} (a path names a layer, never a combinator)"
        )
    for path, rule in rules.items():
        if not callable(rule):
            raise TypeError(f"the rule for layer {path_str(path)} is not callable: {rule!r:.80}")
    return rules


def reverse(
    model: Any, params: Params, tree: Residuals, dy: Array, *, rules: Mapping | None = None,
    sweep: Sweep | None = None,
) -> tuple[Grads, Array]:  # fmt: skip
    """The model's backward from its root, (grads, dx); rules[path] replaces that leaf's rule.
    Every named rule must run: a combinator that never reaches a named leaf raises."""
    sweep = sweep or Sweep()
    sweep.rules = _check_rules(model, rules) if rules else {}
    out = sweep_backward(model, params, tree, dy, (), sweep)
    missed = [path_str(p) for p in sweep.rules if p not in sweep.ran]
    if missed:
        raise ValueError(f"rules for layers {', '.join(missed)} never ran: no backward reached")
    return out


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Trace:
    """What the driver leaves: value C; y_pred and dy_pred = dC/dy_pred (batch, *out); grads;
    state (None without one); tree, the whole residual tree. With record=True, by leaf path:
    inputs (batch, *in); outputs and deltas dC/d(output) (batch, *out), carrying C's 1/m;
    params (as the leaf read them: Tied's head holds W = table^T); residuals; dparams (as the
    leaf's rule returned them); layers (static)."""

    value: Array
    y_pred: Array
    dy_pred: Array
    grads: Grads
    state: State
    tree: Residuals
    inputs: ByPath
    outputs: ByPath
    deltas: ByPath
    params: ByPath
    residuals: ByPath
    dparams: ByPath
    layers: ByPath = dataclasses.field(metadata={"static": True})

    @property
    def batch(self) -> int:
        return self.dy_pred.shape[0]


def trace(
    model: Any, loss: Any, params: Params, x: Array, y: Array, *, key: PRNGKey | None = None,
    state: State | None = None, rules: Mapping | Callable[[Array], Mapping] | None = None,
    record: bool = True,
) -> Trace:  # fmt: skip
    """Forward, loss, loss backward, reverse: backprop's two sweeps, once for every caller.

    rules: {leaf path: Rule}, or a function of the output error e = dC/dy_pred giving one (a
    direct feedback rule reads e). Works under jit and vmap; record=False keeps nothing extra.
    """
    sweep = Sweep(record=record)
    y_pred, tree, new_state = sweep_forward(model, params, state, x, key, (), sweep)
    with jax.named_scope("loss forward"):
        value, loss_residuals = loss.forward(y_pred, y)
    with jax.named_scope("loss backward"):
        dy_pred = loss.backward(loss_residuals)
    named = rules(dy_pred) if callable(rules) else rules
    grads, _ = reverse(model, params, tree, dy_pred, rules=named, sweep=sweep)
    layers = _Layers(leaves(model) if record else ())
    if record and (list(sweep.inputs) != list(layers) or set(sweep.deltas) != set(layers)):
        raise ValueError(
            f"the walk reached layers at {', '.join(map(path_str, sweep.inputs))} forward and "
            f"{', '.join(map(path_str, sweep.deltas))} backward, but the model's layers are at "
            f"{', '.join(map(path_str, layers))}: a combinator passes its children other paths "
            "than its sublayers() declare, or skips one"
        )
    names = ("inputs", "outputs", "deltas", "params", "residuals", "dparams")
    by = {n: ByPath((p, getattr(sweep, n)[p]) for p in layers) for n in names}
    return Trace(value, y_pred, dy_pred, grads, new_state, tree, **by, layers=layers)


class _Layers(ByPath):
    """The leaf layers by path: static in a Trace (hashed by their paths)."""

    def __hash__(self):
        return hash(tuple(self.keys()))
