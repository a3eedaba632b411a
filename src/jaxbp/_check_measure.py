"""The numbers of `jaxbp.check`: a rule against jax.vjp, finite differences and the dot-product
test, every leaf and direction in one program compiled once per (pair, shapes).

A pair (jaxbp._check_pairs) gives the function and the rule; random draws come from NumPy
(jaxbp._check_inputs) and enter as arguments, so one compilation serves every key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._check_inputs import as_float64, cotangent, direction
from jaxbp._check_report import CheckReport, Tolerances
from jaxbp._check_structure import hand_leaves, shapes, structure
from jaxbp._compat import enable_x64

NOISE = 10.0  # rounding in s = <ct, f> is at most this many eps of <|ct|, |f|>
KINK = 3.0  # curvature at h/8 this many times that at h: a kink at the point (8 if exactly there)
EPS = float(np.finfo(np.float64).eps)  # finite differences always run in float64


class Options(NamedTuple):
    dtype: str
    directions: int
    tolerances: Tolerances


def run(pair, primals, aux, rng, title: str, names: Callable, labels, opts: Options) -> CheckReport:
    """Check the pair at primals: structure rows first, then errors for the leaves that fit."""
    tol = opts.tolerances
    out, got = shapes(pair, primals, aux)
    if isinstance(got, Exception):  # a rule that cannot run is a failed check, not a crash
        note = f"the backward rule raised {type(got).__name__}: {' '.join(str(got).split())}"
        return CheckReport(title, opts.dtype, tol, (), (note[:300],))
    rows, usable, extra, notes = structure(primals, got, names, labels, strict=pair.strict)
    errors, values = _numbers(pair, primals, aux, out, rng, opts)
    rows = [dataclasses.replace(r, errors=e) if u else r for r, e, u in zip(rows, errors, usable)]
    notes += _value_notes(values, tol.vjp)
    return CheckReport(title, opts.dtype, tol, (*rows, *extra), tuple(notes))


def _numbers(pair, primals, aux, out, rng, opts: Options):
    """Each leaf's errors against the three references; the values to compare."""
    k = opts.directions
    ct = jax.tree.map(lambda o: cotangent(rng, o), out)
    us = [direction(rng, (k, *p.shape), p.dtype) for p in jax.tree.leaves(primals)]
    args, steps = (primals, aux, ct, _tangents(us)), _steps(primals, k)
    in64 = opts.dtype == "float64"  # a float32 check takes finite differences apart, in float64
    hands, refs, jvps, values, fd = _call(_measure, pair, *args, steps if in64 else None)
    floors = [0.0] * len(refs)  # how far float32 autodiff itself is off, leaf by leaf
    if not in64:
        with enable_x64():
            fd, refs64 = _call(_references64, pair, *as_float64((*args, steps)))
        floors = [_norm(np.asarray(r, np.float64) - np.asarray(q)) for r, q in zip(refs, refs64)]
    s0, fs, mag, jvps = (np.asarray(a, np.float64) for a in (*fd, jvps))

    def block(j, a):  # leaf j's rows of a per-tangent array
        return a[j * k : (j + 1) * k]

    leaves = zip(hands, refs, us, floors)
    fds = ((s0, block(j, fs), block(j, steps), float(mag)) for j in range(len(us)))
    errors = [
        _errors(*leaf, block(j, jvps), fd, opts.tolerances)
        for j, (leaf, fd) in enumerate(zip(leaves, fds))
    ]
    return errors, values


# ---------------------------------------------------------------------------------------------
# Numbers, compiled once per (pair, shapes). Every (leaf, direction) is one row b of a batch of
# tangents that are zero outside that leaf, so the forward pass appears once in the program.


def _measure(pair, primals, aux, ct, tangents, steps):
    """The rule's cotangents, jax.vjp's, <ct, J t_b> by jax.jvp for each tangent t_b, the
    values to compare, and (when steps are given) the finite differences."""
    out, vjp_fn = jax.vjp(lambda *p: pair.fun(aux, *p), *primals)
    hands = hand_leaves(pair.hand(aux, *primals, ct=ct), primals)
    s, flat = _inner(pair, primals, aux, ct)
    jvps = jax.vmap(lambda t: jax.jvp(s, (flat,), (t,))[1])(tangents)
    fd = None if steps is None else _differences(pair, primals, aux, ct, tangents, steps)
    return hands, jax.tree.leaves(vjp_fn(ct)), jvps, pair.values(aux, *primals), fd


def _differences(pair, primals, aux, ct, tangents, steps):
    """s = <ct, f> at the primals, at primals + t t_b for each step t of steps[b], and
    <|ct|, |f|> (the scale of rounding in s)."""
    s, flat = _inner(pair, primals, aux, ct)
    at = jax.vmap(lambda t, ts: jax.vmap(lambda c: s([p + c * d for p, d in zip(flat, t)]))(ts))
    mag = _vdot(jax.tree.map(jnp.abs, ct), jax.tree.map(jnp.abs, pair.fun(aux, *primals)))
    return s(flat), at(tangents, steps), mag


def _references64(pair, primals, aux, ct, tangents, steps):
    """For a float32 check, in float64: the finite differences, and jax.vjp's cotangents."""
    _, vjp_fn = jax.vjp(lambda *p: pair.fun(aux, *p), *primals)
    return _differences(pair, primals, aux, ct, tangents, steps), jax.tree.leaves(vjp_fn(ct))


# Nothing here runs long, and compiling is most of a check's time: skip LLVM's optimisations.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}
_COMPILED: dict = {}


def _call(fn, pair, *args):
    """fn(pair, *args), compiled once per (fn, pair, shapes); per call for an unhashable pair."""
    try:
        hash(pair)
    except TypeError:
        return _jit(lambda *a: fn(pair, *a))(*args)
    if fn not in _COMPILED:
        _COMPILED[fn] = _jit(fn, static_argnums=0)
    return _COMPILED[fn](pair, *args)


def _jit(fn, **kwargs):
    try:
        return jax.jit(fn, compiler_options=_FAST_COMPILE, **kwargs)
    except TypeError:  # a jax without compiler_options
        return jax.jit(fn, **kwargs)


def _inner(pair, primals, aux, ct):
    """s(leaves) = <ct, f(primals with these leaves)>, and the primals' leaves."""
    flat, treedef = jax.tree.flatten(primals)
    return (lambda leaves: _vdot(ct, pair.fun(aux, *treedef.unflatten(leaves)))), flat


def _tangents(us: list[np.ndarray]) -> list[np.ndarray]:
    """For leaves with directions us[j]: (K, *shape_j), the batch of L*K tangent trees, each
    zero but in one leaf: leaf j's array is (L*K, *shape_j), its rows j*K.. (j+1)*K-1 us[j]."""
    k, rows = len(us[0]) if us else 0, len(us) * (len(us[0]) if us else 0)
    out = []
    for j, u in enumerate(us):
        t = np.zeros((rows, *u.shape[1:]), u.dtype)
        t[j * k : (j + 1) * k] = u
        out.append(t)
    return out


def _steps(primals, directions: int) -> np.ndarray:
    """For each tangent row: +-h/8 and +-h, h = eps^(1/3) times the leaf's scale max(1, rms)."""
    rows = []
    for p in jax.tree.leaves(primals):
        p = np.asarray(p, np.float64)
        h = EPS ** (1 / 3) * (max(1.0, float(np.sqrt(np.mean(p * p)))) if p.size else 1.0)
        rows += [[h / 8, -h / 8, h, -h]] * directions
    return np.array(rows, np.float64).reshape(-1, 4)


def _errors(hand, ref, u, floor, jvp, fd, tol: Tolerances) -> dict[str, float | None]:
    """One leaf's relative errors. The gradient's size is the measure, or, in float32, ten times
    float32 autodiff's own error against float64 over the tolerance, where that is larger (a
    gradient summed from terms that cancel is only known to that accuracy)."""
    hand, ref, jvp, u = (np.asarray(a, np.float64) for a in (hand, ref, jvp, u))
    tiny = np.finfo(np.float64).tiny
    dd = u.reshape(len(u), -1) @ hand.ravel()  # <u, hand> for each direction u
    size = np.linalg.norm(u.reshape(len(u), -1), axis=1)

    def against(k):
        return max(_norm(hand), _norm(ref), 10 * floor / getattr(tol, k), tiny)

    return {
        "vjp": _norm(hand - ref) / max(_norm(ref), 10 * floor / tol.vjp, tiny),
        "fd": _fd_error(dd, size * against("fd"), *fd, tol.fd),
        "dot": float(np.max(np.abs(jvp - dd) / (size * against("dot")))),
    }


def _fd_error(dd, scale, s0, f, steps, mag: float, tol: float) -> float | None:
    """Central differences at the better of two steps t. Where the curvature s'' differs between
    them (a kink within reach), less t |s''| / 2, which bounds what crossing it costs; directions
    with a kink at the point (s'' growing as 1/t) are skipped. Measured against the rounding
    noise where the gradient is too small to stand above it."""
    t, noise = steps[:, ::2], NOISE * EPS * mag  # t: the two steps (small, large) of each row
    central = (f[:, ::2] - f[:, 1::2]) / (2 * t)
    curve = (f[:, ::2] + f[:, 1::2] - 2 * s0) / t**2
    rough = np.abs(curve[:, 0] - curve[:, 1]) > 4 * noise / t[:, 0] ** 2
    at_kink = np.abs(curve[:, 0]) > KINK * np.abs(curve[:, 1]) + 4 * noise / t[:, 0] ** 2
    allowance = np.where(rough[:, None], t * np.abs(curve) / 2, 0)
    excess = np.maximum(np.abs(central - dd[:, None]) - allowance, 0)
    err = (excess / np.maximum(scale[:, None], 4 * noise / t / tol)).min(axis=1)
    return None if at_kink.all() else float(np.max(err[~at_kink]))


def _value_notes(values, tol: float) -> list[str]:
    if not values:
        return []
    value, ref = (float(v) for v in values)
    if abs(value - ref) <= tol * max(abs(ref), np.finfo(np.float64).tiny):
        return []
    return [f"the value {value:.10g} differs from the reference {ref:.10g}"]


def _norm(a) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64)))


def _vdot(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))
    return sum(jnp.vdot(u.ravel(), v.ravel()) for u, v in pairs)
