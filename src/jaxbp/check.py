"""Verification: is a hand-written backward rule right? Three referees, leaf by leaf.

Every check is one question about a function f(*primals) -> out and a hand-written rule that
maps a cotangent ct of out to one cotangent per primal (J^T ct). With a random ct, each leaf of
each primal (each parameter of each layer, and the input x) is compared with three references:

    vjp  the exact J^T ct from jax.vjp of f:     ||hand - ref|| / ||ref||, norms over the leaf.
    fd   central differences of s = <ct, f> along random directions u, one leaf at a time:
         |ds/du - <u, hand>| / (||u|| ||hand||). Steps h/8 and h, h = eps^(1/3) times the
         leaf's scale; the better counts, less t |s''| / 2, which bounds what a relu kink
         crossed within the step t can cost. A kink exactly at the point (s'' growing as 1/t)
         leaves that direction unjudged ("-" when no direction is left).
    dot  the dot-product test <J u, ct> = <u, J^T ct>, J u by jax.jvp, J^T ct by the hand rule:
         |<J u, ct> - <u, hand>| / (||u|| ||hand||).

Inputs are drawn with both signs (half of them negative, |x| ~ 2|N(0, 1)|), so a rule wrong on
one side of a kink is caught; layer params are layer.init's nudged by N(0, 0.1^2), so that zero
biases do not sit relu kinks on the checked point and a factor that init sets to 1 still shows.
Before any number, the rule's output must have the tree structure, shapes and dtypes of the
primals: a difference is a failing row that says what differs, never an exception.

Ties: a rule that selects (a max-pool window's maximum, relu's side at 0; a layer says so with
`selects = True`) decides at ties where the gradient goes, and random normal inputs never tie.
So check_layer, when the layer or any leaf of it selects and x is not given, checks again at x
drawn from {-1, 0, 1}: rows named "... (ties)". There the references differentiate the layer's
own forward, so JAX's convention defines right (jax.nn.relu' (0) = 0; the first maximum of a
window, as jax.grad of lax.reduce_window max); fd leaves every direction through a kink
unjudged, and vjp and dot judge each row. check_backprop keeps the caller's x and y: no tie draw.

Tolerances (override with `tolerances=`):
    float64 (the default): vjp and dot 1e-10. The rule and jax.vjp compute the same formulas in
        another order, so they agree to ~1e-15 per operation and ~1e-13 over a deep model;
        1e-10 leaves room for conditioning yet catches a 1.0001x factor. fd 1e-6: central
        differences are good to ~1e-10 here; 1e-6 absorbs rounding in deep models and still
        catches a 1.01x factor.
    float32: vjp and dot 1e-4. Rounding alone (eps = 1.2e-7) grows over reductions, reordered
        sums and layers to ~1e-6, more where sigmoid's y(1 - y) loses digits; 1e-4 is that
        with margin, and still catches 1.01x. Finite differences in float32 would lose half
        their digits, so even a float32 check takes them in float64 (the rule and jax.vjp run
        in float32); fd 1e-4, since the float32 rule itself is only good to ~1e-6.
Float64 runs inside `jaxbp._compat.enable_x64()`: the caller's global JAX configuration is left
as it was. Random draws come from NumPy, seeded by `key`; a check compiles once per (rule,
shapes) and reuses it for every key.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._check_inputs import (
    TARGETS,
    both_signs,
    cast,
    draw_targets,
    jax_key,
    numpy_rng,
    with_ties,
)
from jaxbp._check_measure import Options, run
from jaxbp._check_pairs import BackpropPair, IdsLayerPair, LayerPair, LossPair, VJPPair
from jaxbp._check_report import (
    TOLERANCES,
    CheckReport,
    Row,
    Tolerances,
    jsonable,
    summary_table,
)
from jaxbp._compat import enable_x64
from jaxbp._state import init_state
from jaxbp._types import Array, Params, PRNGKey, Shape
from jaxbp.walk import leaves, nodes, path_str

__all__ = [
    "check_vjp", "check_layer", "check_loss", "check_backprop", "CheckReport", "Row",
    "Tolerances", "TOLERANCES", "TARGETS", "summary_table", "jsonable",
]  # fmt: skip

Key = PRNGKey | int
NUDGE = 0.1  # std of the noise added to layer.init's params: off zero biases and factors of 1
TIES = " (ties)"  # the suffix of the rows checked at inputs with ties
LEGEND = "(ties): at x drawn from {-1, 0, 1}: maxima tie, kinks sit at 0, fd steps aside (-)"


# ---------------------------------------------------------------------------------------------
# Public checks


def check_vjp(
    fwd: Callable, bwd: Callable, *primals: Any, key: Key = 0, dtype: str = "float64",
    directions: int = 3, tolerances: Tolerances | dict | None = None,
) -> CheckReport:  # fmt: skip
    """Check a rule in jax.custom_vjp's convention at `primals` (pytrees of floats):
    fwd(*primals) -> (out, residuals); bwd(residuals, ct) -> one cotangent per primal, a tuple."""
    opts = _options(dtype, directions, tolerances)
    with _precision(dtype):
        primals = cast(tuple(primals), dtype)
        if not all(jnp.issubdtype(a.dtype, jnp.floating) for a in jax.tree.leaves(primals)):
            raise TypeError("check_vjp: every primal must be a pytree of floating-point arrays")
        labels = tuple(f"arg{i}" for i in range(len(primals)))
        name = getattr(fwd, "__name__", repr(fwd))
        title = f"vjp of {name}({', '.join(map(_describe, primals))})"
        names = lambda i, path: labels[i] + jax.tree_util.keystr(path)  # noqa: E731
        return run(VJPPair(fwd, bwd), primals, None, numpy_rng(key), title, names, labels, opts)


def check_layer(
    layer: Any, input_shape: Shape, *, key: Key = 0, dtype: str = "float64", batch_size: int = 8,
    directions: int = 3, tolerances: Tolerances | dict | None = None, params: Params = None,
    x: Array | None = None,
) -> CheckReport:  # fmt: skip
    """Check layer.backward at params from layer.init (nudged; or `params`) and inputs
    x: (batch_size, *input_shape) of both signs (or `x`); a row per parameter leaf and for x.
    A layer that selects (itself or a leaf) is checked again at x with ties: rows "(ties)".

    Stochastic layers get one fixed key (from `key`) on both sides; stateful ones are checked in
    training mode from their initial state; integer inputs (`x` of ids) give parameter rows only.
    """
    opts = _options(dtype, directions, tolerances)
    rng = numpy_rng(key)
    with _precision(dtype):
        if params is None:
            params = _nudged(layer.init(jax_key(key), tuple(input_shape))[1], rng)
        ties = x is None and _selects(layer)
        if x is None:
            x = both_signs(rng, (batch_size, *input_shape))
        params, x = cast((params, x), dtype)
        aux = (jax.random.fold_in(jax_key(key), 1), cast(init_state(layer, params), dtype))
        title = f"{_short(layer)} on x{tuple(x.shape)}"
        if jnp.issubdtype(jnp.result_type(x), jnp.integer):  # ids have no cotangent
            pair, primals, labels, aux = IdsLayerPair(layer), (params,), ("params",), (*aux, x)
        else:
            pair, primals, labels = LayerPair(layer), (params, x), ("params", "x")

        def at(primals, suffix=""):
            def names(i, path):
                name = _leaf_name(layer, path) if i == 0 else "x" + jax.tree_util.keystr(path)
                return name + suffix

            return run(pair, primals, aux, rng, title, names, labels, opts)

        report = at(primals)
        if not ties or report.notes or any(row.problem for row in report.rows):
            return report  # a malformed rule is malformed at any x: the tie draw would repeat it
        return _and_ties(report, at((params, cast(with_ties(rng, x.shape), dtype)), TIES))


def check_loss(
    loss: Any, y_pred_shape: Shape = (8, 5), *, targets: str | Array = "auto", key: Key = 0,
    dtype: str = "float64", directions: int = 3, tolerances: Tolerances | dict | None = None,
) -> CheckReport:  # fmt: skip
    """Check loss.backward(residuals, g) at a random g and y_pred: y_pred_shape of both signs.

    targets: an array, or how to draw them: "normal" floats, "unit" floats in [0, 1], integer
    "labels" of shape (batch,), probability rows "probs"; "auto" takes the loss's own `targets`
    (softmax cross-entropy: labels; binary cross-entropy: unit floats), else normal floats.
    """
    opts = _options(dtype, directions, tolerances)
    rng = numpy_rng(key)
    with _precision(dtype):
        y_pred = cast(both_signs(rng, tuple(y_pred_shape)), dtype)
        y, kind = draw_targets(loss, targets, rng, tuple(y_pred.shape), dtype)
        title = f"{loss!r} on y_pred{tuple(y_pred.shape)}, targets: {kind}"
        names = lambda i, path: "y_pred"  # noqa: E731
        return run(LossPair(loss), (y_pred,), y, rng, title, names, ("y_pred",), opts)


def check_backprop(
    model: Any, loss: Any, params: Params, x: Array, y: Array, *, key: Key = 0,
    dtype: str = "float64", directions: int = 3, tolerances: Tolerances | dict | None = None,
) -> CheckReport:  # fmt: skip
    """Check jaxbp.backprop(model, loss, params, x, y): its gradient leaf by leaf, and its value
    against loss.apply(model.apply(params, x), y). Dropout gets one fixed key (from `key`) on
    both sides; BatchNorm runs in training mode from its initial state. The point is the
    caller's: no draw with ties (check_layer draws them for the layers that select)."""
    opts = _options(dtype, directions, tolerances)
    with _precision(dtype):
        params, x, y = cast((params, x, y), dtype)
        state = cast(init_state(model, params), dtype)
        title = f"backprop, {loss!r}, x{tuple(x.shape)}: {_short(model)}"
        names = lambda i, path: _leaf_name(model, path)  # noqa: E731
        pair, data = BackpropPair(model, loss), (x, y, jax.random.fold_in(jax_key(key), 1), state)
        return run(pair, (params,), data, numpy_rng(key), title, names, ("params",), opts)


# ---------------------------------------------------------------------------------------------
# Inputs, names and options


def _nudged(params: Params, rng: np.random.Generator) -> Params:
    return jax.tree.map(lambda a: np.asarray(a) + NUDGE * rng.standard_normal(a.shape), params)


def _selects(model: Any) -> bool:
    """Whether the model or any layer inside it picks among its inputs (`selects`, False where
    absent), so that ties decide where its gradient goes."""
    return any(getattr(layer, "selects", False) is True for _, layer in nodes(model))


def _and_ties(report: CheckReport, tied: CheckReport) -> CheckReport:
    """One report: the rows at the random x, then those at x with ties."""
    return dataclasses.replace(
        report, title=f"{report.title}, and with ties", rows=(*report.rows, *tied.rows),
        notes=(*report.notes, *tied.notes), legend=(LEGEND,),
    )  # fmt: skip


def _leaf_name(model: Any, path: tuple) -> str:
    """A params leaf's path, named after the leaf layer that owns it, however deep:
    "[2] Dense(features=3) ['W']", "[1][0][1] Dense(features=8) ['b']"."""
    steps = []
    for key in path:
        if not isinstance(key, jax.tree_util.SequenceKey):
            break
        steps.append(key.idx)
    owners = dict(leaves(model))
    for n in range(len(steps), -1, -1):  # the longest prefix that names a leaf layer
        if tuple(steps[:n]) in owners:
            rest = jax.tree_util.keystr(tuple(path[n:]))
            if not n:
                return rest
            owner = tuple(steps[:n])
            return f"{path_str(owner)} {_short(owners[owner])} {rest}".rstrip()
    return jax.tree_util.keystr(tuple(path))


def _short(layer: Any) -> str:
    """repr with "()" dropped, a serial's layers likewise: "serial(Dense(features=3), Relu)"."""
    if isinstance(getattr(layer, "layers", None), (tuple, list)):
        return f"serial({', '.join(map(_short, layer.layers))})"
    text = repr(layer)
    return text[:-2] if text.endswith("()") else text


def _describe(tree: Any) -> str:
    if hasattr(tree, "shape") and hasattr(tree, "dtype"):
        return f"{tree.dtype}{list(tree.shape)}"
    return f"pytree of {len(jax.tree.leaves(tree))} arrays"


def _precision(dtype: str) -> contextlib.AbstractContextManager:
    return enable_x64() if dtype == "float64" else contextlib.nullcontext()


def _options(dtype: str, directions: int, tolerances: Any) -> Options:
    if dtype not in TOLERANCES:
        raise ValueError(f"dtype must be one of {', '.join(TOLERANCES)}, got {dtype!r}")
    if isinstance(directions, bool) or not isinstance(directions, int) or directions < 1:
        raise ValueError(f"directions must be a positive int, got {directions!r}")
    tol = TOLERANCES[dtype]
    if isinstance(tolerances, dict):
        unknown = set(tolerances) - set(Tolerances._fields)
        if unknown:
            raise ValueError(f"unknown tolerances {sorted(unknown)}; known: {Tolerances._fields}")
        tol = tol._replace(**tolerances)
    elif tolerances is not None:
        tol = Tolerances(*tolerances)
    return Options(dtype, directions, tol)
