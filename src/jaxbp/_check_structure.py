"""The shape of a rule's output against the primals': its tree, shapes and dtypes, leaf by leaf,
before any number (a difference is a failing row that says what differs, never an exception)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxbp._check_report import Row

_NONE = {"vjp": None, "fd": None, "dot": None}


def shapes(pair, primals, aux):
    """The shapes of f's output and of the rule's (or the error it raised); traced once per
    (pair, shapes), since tracing costs more than the compiled check itself."""
    leaves, treedef = jax.tree.flatten((primals, aux))
    signature = (pair, treedef, *((a.shape, a.dtype) for a in leaves), jax.config.jax_enable_x64)
    try:
        hash(signature)
    except TypeError:  # an unhashable layer: trace every time
        return _shapes_traced(pair, primals, aux)
    if signature not in _SHAPES:
        if len(_SHAPES) > 512:
            _SHAPES.clear()
        _SHAPES[signature] = _shapes_traced(pair, primals, aux)
    return _SHAPES[signature]


_SHAPES: dict = {}


def _shapes_traced(pair, primals, aux):
    out = jax.eval_shape(lambda p: pair.fun(aux, *p), primals)
    try:
        return out, jax.eval_shape(lambda p, ct: pair.hand(aux, *p, ct=ct), primals, out)
    except Exception as error:
        return out, error


def structure(primals, got, names, labels, *, strict: bool):
    """A row per expected leaf (saying what is wrong with it, if anything), whether each can be
    measured, rows for leaves the rule made up, and notes on the outer container."""
    n, notes = len(primals), []
    if not isinstance(got, (tuple, list)) or len(got) != n:
        notes.append(f"the rule must return {n} cotangent(s), one per primal; got {_kind(got)}")
        got = (None,) * n
    elif strict and not isinstance(got, tuple):
        notes.append("bwd must return a tuple (jax.custom_vjp's convention), got a list")
    rows, usable, extra = [], [], []
    for i, (expected, given) in enumerate(zip(primals, got)):
        found = _by_path(given)
        for path, leaf in jax.tree_util.tree_flatten_with_path(expected)[0]:
            g = found.pop(tuple(path), None)
            problem = "missing from the rule's output" if g is None else _leaf_problem(leaf, g)
            usable.append(g is not None and tuple(g.shape) == leaf.shape)
            rows.append(Row(names(i, path), leaf.shape, str(leaf.dtype), dict(_NONE), problem))
        for path, g in found.items():
            problem = f"unexpected leaf (not in {labels[i]})"
            extra.append(Row(names(i, path), tuple(g.shape), str(g.dtype), dict(_NONE), problem))
        want, have = jax.tree.structure(expected), jax.tree.structure(given)
        if not found and want != have:
            problem = f"tree {have}, expected {want}"
            extra.append(Row(labels[i], None, None, dict(_NONE), problem))
    return rows, usable, extra, notes


def hand_leaves(got, primals):
    """The rule's cotangents in the primals' leaf order; zeros where a leaf is missing or
    misshapen (those rows fail on structure and show no numbers)."""
    n = len(primals)
    got = tuple(got) if isinstance(got, (tuple, list)) and len(got) == n else (None,) * n
    leaves = []
    for expected, given in zip(primals, got):
        found = _by_path(given)
        for path, e in jax.tree_util.tree_flatten_with_path(expected)[0]:
            g = found.get(tuple(path))
            fits = g is not None and jnp.shape(g) == e.shape
            leaves.append(jnp.asarray(g, e.dtype) if fits else jnp.zeros_like(e))
    return leaves


def _leaf_problem(expected, got) -> str | None:
    if tuple(got.shape) != tuple(expected.shape):
        return f"shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    if got.dtype != expected.dtype:
        return f"dtype {got.dtype}, expected {expected.dtype}"
    return None


def _by_path(tree) -> dict:
    return {tuple(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _kind(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of length {len(value)}"
    return type(value).__name__
