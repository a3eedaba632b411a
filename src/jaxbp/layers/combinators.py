"""Composition: Serial, Residual and Parallel, whose backward sums their fan-out's cotangents.

A combinator's forward and backward reach each child through `jaxbp.walk`'s sweeps at the
child's path (the protocol: `jaxbp.protocols.Combinator`). All three place their children's
params side by side or pass them through (params_disjoint = True).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxbp._state import init_state
from jaxbp.protocols import Combinator
from jaxbp.walk import (
    Path,
    Sweep,
    blame,
    path_str,
    sweep_backward,
    sweep_forward,
)  # fmt: skip

__all__ = ["Serial", "Residual", "Parallel", "serial", "CombinatorBase", "check_layers"]


class CombinatorBase(Combinator):
    """A base for combinators (the built-in ones and a user's): forward, forward_state and
    backward as a walk from the combinator's own path, (); subclasses write sublayers,
    with_sublayers, walk_forward, walk_backward and declare params_disjoint."""

    def forward(self, params, x, *, key=None):
        y, residuals, _ = self.walk_forward(params, None, x, key, (), Sweep())
        return y, residuals

    def forward_state(self, params, state, x, *, key=None):
        return self.walk_forward(params, state, x, key, (), Sweep())

    def backward(self, params, residuals, dy):
        return self.walk_backward(params, residuals, dy, (), Sweep())


def _child_key(key, step: int):
    return None if key is None else jax.random.fold_in(key, step)


# ---------------------------------------------------------------------------------------------
# Serial


@dataclasses.dataclass(frozen=True)
class Serial(CombinatorBase):
    r"""Layers in sequence; params: a tuple, one entry per layer. backward: the reverse sweep,
    dy_{i} = backward_i(dy_{i+1}). Residuals: a tuple, one per layer. Layer i is at path (i,).

    **Forward.** $h_0 = x$, $h_i = f_i(h_{i-1})$ for $i = 1, \dots, L$, $y = h_L$.

    **Backward.** The reverse sweep, $\mathrm{d}h_L = \mathrm{d}y$, then for $i = L, \dots, 1$:

    $$
    (\mathrm{d}\theta_i,\ \mathrm{d}h_{i-1}) = \mathrm{backward}_i(\theta_i,\ r_i,\ \mathrm{d}h_i),
    \qquad \mathrm{d}x = \mathrm{d}h_0
    $$

    $\theta_i$ = `params[i]`, $r_i$ = `residuals[i]`.
    """

    layers: tuple
    params_disjoint = True  # layer i reads params[i]
    examples_independent = True  # a chain of layers mixes examples only where a layer does

    def __repr__(self):
        return f"serial({', '.join(map(repr, self.layers))})"

    def sublayers(self):
        return tuple(((i,), layer) for i, layer in enumerate(self.layers))

    def with_sublayers(self, layers):
        return Serial(tuple(layers))

    def init(self, key, input_shape):
        shape, params = tuple(input_shape), []
        for i, (layer, k) in enumerate(zip(self.layers, jax.random.split(key, len(self.layers)))):
            with blame((i,), layer):
                shape, p = layer.init(k, shape)
            params.append(p)
        return shape, tuple(params)

    def init_state(self, params):
        _check_params(self, params, len(self.layers))
        return tuple(init_state(layer, p) for layer, p in zip(self.layers, params))

    def walk_forward(self, params, state, x, key, path, sweep):
        _check_params(self, params, len(self.layers), path)
        states = (None,) * len(self.layers) if state is None else state
        _check_params(self, states, len(self.layers), path, what="states")
        residuals, new_states = [], []
        for i, (layer, p, s) in enumerate(zip(self.layers, params, states)):
            x, r, s = sweep_forward(layer, p, s, x, _child_key(key, i), path + (i,), sweep)
            residuals.append(r)
            new_states.append(s)
        return x, tuple(residuals), None if state is None else tuple(new_states)

    def walk_backward(self, params, residuals, dy, path, sweep):
        dparams = [None] * len(self.layers)
        for i in reversed(range(len(self.layers))):
            dparams[i], dy = sweep_backward(
                self.layers[i], params[i], residuals[i], dy, path + (i,), sweep
            )
        return tuple(dparams), dy


def serial(*layers: Any) -> Serial:
    """Compose layers in sequence; params is the tuple of each layer's params, in order."""
    check_layers("serial", layers)
    return Serial(tuple(layers))


# ---------------------------------------------------------------------------------------------
# Residual


@dataclasses.dataclass(frozen=True)
class Residual(CombinatorBase):
    r"""Skip connection y = x + body(x); dx = dy + body.backward(dy) (the fan-out of x adds).

    params, state and residuals: the body's; the body sits at the Residual's own path.

    **Forward and backward.** $x$ fans out to the skip and the body, so the two cotangents add:

    $$
    y = x + f(x), \qquad \mathrm{d}x = \mathrm{d}y + \mathrm{d}x_f, \qquad
    (\mathrm{d}\theta,\ \mathrm{d}x_f) = \mathrm{backward}_f(\theta,\ r,\ \mathrm{d}y)
    $$
    """

    body: Any
    params_disjoint = True  # the body reads the Residual's params as they are
    examples_independent = True  # x + body(x), row by row

    def __post_init__(self):
        check_layers("Residual", (self.body,))

    def sublayers(self):
        return (((), self.body),)

    def with_sublayers(self, layers):
        return Residual(*layers)

    def init(self, key, input_shape):
        shape, params = self.body.init(key, input_shape)
        if tuple(shape) != tuple(input_shape):
            raise ValueError(
                f"Residual: y = x + body(x) needs the body to keep the shape, but {self.body!r} "
                f"maps {tuple(input_shape)} to {tuple(shape)}"
            )
        return tuple(input_shape), params

    def init_state(self, params):
        return init_state(self.body, params)

    def walk_forward(self, params, state, x, key, path, sweep):
        y, residuals, state = sweep_forward(self.body, params, state, x, key, path, sweep)
        if y.shape != x.shape:
            where = f"layer {path_str(path)} " if path else ""
            raise ValueError(
                f"{where}Residual: body maps {tuple(x.shape)} to {tuple(y.shape)}; "
                "y = x + body(x) needs equal shapes"
            )
        return x + y, residuals, state

    def walk_backward(self, params, residuals, dy, path, sweep):
        dparams, dx = sweep_backward(self.body, params, residuals, dy, path, sweep)
        return dparams, dx + dy


# ---------------------------------------------------------------------------------------------
# Parallel


@dataclasses.dataclass(frozen=True, init=False)
class Parallel(CombinatorBase):
    r"""Branches on the same x, merged: "sum" y = sum_k f_k(x), each branch gets dy;
    "concat" y = [f_1(x), ..., f_K(x)] on the last axis, branch k gets its slice of dy.
    dx = sum_k dx_k (x fans out). params and state: tuples, branch k at path (k,).
    Residuals: (each branch's residuals, zero-size carriers of each branch's width).

    **Forward and backward.** `merge="sum"`:

    $$
    y = \sum_k f_k(x), \qquad \mathrm{d}y_k = \mathrm{d}y
    $$

    `merge="concat"`, on the last axis:

    $$
    y = [\,f_1(x) \;\; \cdots \;\; f_K(x)\,], \qquad
    \mathrm{d}y_k = \text{branch } k\text{'s slice of } \mathrm{d}y
    $$

    Either way $x$ fans out to every branch:
    $(\mathrm{d}\theta_k, \mathrm{d}x_k) = \mathrm{backward}_k(\theta_k, r_k, \mathrm{d}y_k)$ and
    $\mathrm{d}x = \sum_k \mathrm{d}x_k$.
    """

    branches: tuple
    merge: str = "sum"
    params_disjoint = True  # branch k reads params[k]
    examples_independent = True  # branches merged row by row

    def __init__(self, *branches: Any, merge: str = "sum"):
        object.__setattr__(self, "branches", tuple(branches))
        object.__setattr__(self, "merge", merge)
        check_layers("Parallel", self.branches)
        self.__post_init__()

    def __post_init__(self):
        if self.merge not in ("sum", "concat"):
            raise ValueError(f"Parallel: merge must be 'sum' or 'concat', got {self.merge!r}")
        if not self.branches:
            raise ValueError("Parallel: needs at least one branch")

    def __repr__(self):
        return f"Parallel({', '.join(map(repr, self.branches))}, merge={self.merge!r})"

    def sublayers(self):
        return tuple(((k,), branch) for k, branch in enumerate(self.branches))

    def with_sublayers(self, layers):
        return Parallel(*layers, merge=self.merge)

    def init(self, key, input_shape):
        shapes, params = [], []
        for k, (branch, bk) in enumerate(
            zip(self.branches, jax.random.split(key, len(self.branches)))
        ):
            with blame((k,), branch):
                shape, p = branch.init(bk, tuple(input_shape))
            shapes.append(tuple(shape))
            params.append(p)
        return self._merged_shape(shapes, ()), tuple(params)

    def init_state(self, params):
        _check_params(self, params, len(self.branches))
        return tuple(init_state(b, p) for b, p in zip(self.branches, params))

    def walk_forward(self, params, state, x, key, path, sweep):
        n = len(self.branches)
        _check_params(self, params, n, path)
        states = (None,) * n if state is None else state
        _check_params(self, states, n, path, what="states")
        ys, residuals, new_states = [], [], []
        for k, (branch, p, s) in enumerate(zip(self.branches, params, states)):
            y, r, s = sweep_forward(branch, p, s, x, _child_key(key, k), path + (k,), sweep)
            ys.append(y)
            residuals.append(r)
            new_states.append(s)
        self._merged_shape([y.shape for y in ys], path)
        widths = tuple(jnp.zeros((y.shape[-1], 0), y.dtype) for y in ys)
        y = sum(ys[1:], ys[0]) if self.merge == "sum" else jnp.concatenate(ys, axis=-1)
        return y, (tuple(residuals), widths), None if state is None else tuple(new_states)

    def walk_backward(self, params, residuals, dy, path, sweep):
        branch_residuals, widths = residuals
        if self.merge == "sum":
            dys = [dy] * len(self.branches)
        else:
            ends = [0]
            for w in widths:
                ends.append(ends[-1] + w.shape[0])
            dys = [dy[..., a:b] for a, b in zip(ends[:-1], ends[1:])]
        dparams, dx = [], None
        for k, (branch, p, r, d) in enumerate(zip(self.branches, params, branch_residuals, dys)):
            dp, dxk = sweep_backward(branch, p, r, d, path + (k,), sweep)
            dparams.append(dp)
            dx = dxk if dx is None else dx + dxk
        return tuple(dparams), dx

    def _merged_shape(self, shapes, path):
        """The merged output shape; branches whose outputs cannot be merged raise."""
        shapes = [tuple(s) for s in shapes]
        same = shapes if self.merge == "sum" else [s[:-1] for s in shapes]
        if any(s != same[0] for s in same):
            need = "equal shapes" if self.merge == "sum" else "equal shapes but for the last axis"
            where = f"layer {path_str(path)} " if path else ""
            raise ValueError(
                f"{where}Parallel(merge={self.merge!r}) needs {need}; branches give "
                f"{', '.join(map(str, shapes))}"
            )
        if self.merge == "sum":
            return shapes[0]
        return (*shapes[0][:-1], sum(s[-1] for s in shapes))


# ---------------------------------------------------------------------------------------------
# Checks and error messages


def _check_params(model: Any, params: Any, n: int, path: Path = (), what: str = "params") -> None:
    if not isinstance(params, (tuple, list)) or len(params) != n:
        got = (
            f"{type(params).__name__} of length {len(params)}"
            if hasattr(params, "__len__")
            else type(params).__name__
        )
        kind = "serial" if isinstance(model, Serial) else type(model).__name__
        where = f"layer {path_str(path)} " if path else ""
        raise ValueError(f"{where}{kind} of {n} layers needs a tuple of {n} {what}, got {got}")


def check_layers(name: str, layers: tuple) -> None:
    for i, layer in enumerate(layers):
        missing = [
            m for m in ("init", "forward", "backward") if not callable(getattr(layer, m, None))
        ]
        if missing:
            raise TypeError(
                f"{name}: argument {i} ({layer!r}) is not a layer: no {', '.join(missing)}"
            )
