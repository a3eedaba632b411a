"""jaxbp.check catches every planted mistake: the mutation suite.

It plants one mistake of each common kind in a copy of a correct built-in (a subclass that
overrides `backward`) and asserts that the check fails on exactly the right rows; then the
report, the tolerances and given inputs, seen on a planted mistake.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _docs import documentation, flat
from jax import lax

from jaxbp import layers as L
from jaxbp import losses
from jaxbp.check import CheckReport, check_backprop, check_layer, check_loss, check_vjp
from jaxbp.walk import sweep_backward


def failing(report: CheckReport) -> set[str]:
    return {row.name for row in report.rows if row.failures(report.tolerances)}


def and_at_ties(layer, rows: set[str]) -> set[str]:
    """The rows, and where the layer selects (so it is checked again at ties) their twins."""
    return rows | {row + " (ties)" for row in rows} if getattr(layer, "selects", False) else rows


# ---------------------------------------------------------------------------------------------
# The mutation suite: a planted mistake of every common kind, each caught on the right rows


def mutant(base: type, name: str, backward) -> type:
    return dataclasses.dataclass(frozen=True)(type(name, (base,), {"backward": backward}))


def dense(change):
    """A Dense whose rule is the right one, then changed: change(r) -> (dW, db, dx), where r has
    the right dW, db, dx and the rule's inputs p (params), x and dy."""

    def backward(self, params, x, dy):
        d, dx = L.Dense.backward(self, params, x, dy)
        r = types.SimpleNamespace(p=params, x=x, dy=dy, dW=d["W"], db=d["b"], dx=dx)
        dW, db, dx = change(r)
        return {"W": dW, "b": db}, dx

    return mutant(L.Dense, "Mutant", backward)(4)  # square W, so a missing transpose still fits


def elementwise(base: L.Layer, df) -> L.Layer:
    """An activation whose derivative is df(self, saved) instead of the right one."""
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    return mutant(type(base), "Mutant", lambda self, p, saved, dy: ((), dy * df(self, saved)))(
        **fields
    )


def loss_mutant(base: losses.Loss, change) -> losses.Loss:
    """A loss whose rule is change(residuals, g, right_answer)."""

    def backward(self, residuals, g=1.0):
        return change(residuals, g, type(base).backward(self, residuals, g))

    return mutant(type(base), "Mutant", backward)()


sig = jax.nn.sigmoid


def normal_cdf(x):
    return 0.5 * (1 + jax.scipy.special.erf(x / math.sqrt(2)))


W, B, X, Y = "['W']", "['b']", "x", "y_pred"
DENSE = [  # (id, change, the rows that must fail)
    ("dW x2", lambda r: (2 * r.dW, r.db, r.dx), {W}),
    ("dW x0.5", lambda r: (0.5 * r.dW, r.db, r.dx), {W}),
    ("dW x1.01", lambda r: (1.01 * r.dW, r.db, r.dx), {W}),
    ("db x1.0001", lambda r: (r.dW, 1.0001 * r.db, r.dx), {B}),
    ("dW sign", lambda r: (-r.dW, r.db, r.dx), {W}),
    ("dW transposed", lambda r: (r.dW.T, r.db, r.dx), {W}),
    ("dx without transpose", lambda r: (r.dW, r.db, r.dy @ r.p["W"]), {X}),
    ("db dropped", lambda r: (r.dW, 0 * r.db, r.dx), {B}),
    ("db mean not sum", lambda r: (r.dW, r.dy.mean(0), r.dx), {B}),
    ("dW drops a row's term", lambda r: (r.x[:-1].T @ r.dy[:-1], r.db, r.dx), {W}),
    ("dx last row zeroed", lambda r: (r.dW, r.db, r.dx.at[-1].set(0)), {X}),
    ("dx sign", lambda r: (r.dW, r.db, -r.dx), {X}),
    ("dW gets db added", lambda r: (r.dW + r.db, r.db, r.dx), {W}),
    ("dx NaN in one entry", lambda r: (r.dW, r.db, r.dx.at[0, 0].set(jnp.nan)), {X}),
]
ACTIVATION = [  # (id, correct layer, wrong derivative from the saved array)
    ("sigmoid y not y(1-y)", L.Sigmoid(), lambda self, y: y),
    ("tanh 1-y not 1-y^2", L.Tanh(), lambda self, y: 1 - y),
    ("relu slope 1 for x<0", L.Relu(), lambda self, y: jnp.ones_like(y)),
    ("leaky relu slope 1 for x<0", L.LeakyRelu(), lambda self, x: jnp.ones_like(x)),
    ("leaky relu slope 0 for x<0", L.LeakyRelu(0.3), lambda self, x: (x > 0).astype(x.dtype)),
    ("elu e^x - 1 for x<0", L.Elu(), lambda self, x: jnp.where(x > 0, 1.0, jnp.expm1(x))),
    ("elu alpha for x>0", L.Elu(0.5), lambda self, x: jnp.where(x > 0, 0.5, 0.5 * jnp.exp(x))),
    ("gelu drops x phi(x)", L.Gelu(approximate=False), lambda self, x: normal_cdf(x)),
    ("softplus sigmoid(-x)", L.Softplus(), lambda self, x: sig(-x)),
    ("silu drops a term", L.Silu(), lambda self, x: sig(x)),
    ("gelu tanh form off by 1%", L.Gelu(), lambda self, x: 1.01 * L.Gelu().df(x)),
]  # fmt: skip


def softmax_no_sum(self, params, y, dy):
    return (), y * dy  # the -sum(dy y) term dropped


def log_softmax_no_sum(self, params, y, dy):
    return (), dy - jnp.exp(y)  # sum(dy) taken as 1


def flatten_wrong_order(self, params, carrier, dy):
    b, (m, n) = dy.shape[0], carrier.shape[1:3]
    return (), dy.reshape(b, n, m).transpose(0, 2, 1)  # right shape, wrong element order


OTHER_LAYERS = [  # (id, layer, input shape, rows that must fail)
    ("softmax drops sum term", mutant(L.Softmax, "Mutant", softmax_no_sum)(), (5,), {X}),
    ("log-softmax drops sum(dy)", mutant(L.LogSoftmax, "Mutant", log_softmax_no_sum)(), (5,), {X}),
    ("flatten wrong order", mutant(L.Flatten, "Mutant", flatten_wrong_order)(), (2, 3), {X}),
]
LOSS = [  # (id, loss, targets, change(residuals, g, right))
    ("mse sum not mean", losses.mse, "normal", lambda r, g, right: g * r),
    ("mse sign", losses.mse, "normal", lambda r, g, right: -right),
    ("mse ignores g", losses.mse, "normal", lambda r, g, right: right / g),
    ("bce sum not mean", losses.binary_cross_entropy, "unit", lambda r, g, right: g * r),
    ("bce 1.01x", losses.binary_cross_entropy, "unit", lambda r, g, right: 1.01 * right),
    ("ce labels sum not mean", losses.softmax_cross_entropy, "labels",
     lambda r, g, right: right * len(r[0])),
    ("ce labels off by one", losses.softmax_cross_entropy, "labels",
     lambda r, g, right: g * (r[0] - jnp.roll(r[1], 1, axis=1)) / len(r[0])),
    ("ce probs sign", losses.softmax_cross_entropy, "probs", lambda r, g, right: -right),
]  # fmt: skip


# Every distinct mistake the suite plants, with its kind: "numerical" (a wrong number: factor,
# sign, transpose, term, NaN) or "structure" (a wrong tree, shape or dtype, or a rule that cannot
# run), and the test that plants it. Repeats that test something else (the float32 tolerances,
# a mutant's name inside a serial, a loss mutant seen through check_backprop) are not counted.
PLANTED: list[tuple[str, str, str]] = [
    *((m[0], "numerical", "test_mutant_dense_is_caught") for m in DENSE),
    *((m[0], "numerical", "test_mutant_activation_is_caught") for m in ACTIVATION),
    *((m[0], "numerical", "test_mutant_last_axis_layer_is_caught") for m in OTHER_LAYERS),
    *((m[0], "numerical", "test_mutant_loss_is_caught") for m in LOSS),
]


def plants(kind: str, name: str):
    """Register a test that plants one more distinct mistake."""

    def register(test):
        PLANTED.append((name, kind, test.__name__))
        return test

    return register


@pytest.mark.parametrize("change, rows", [m[1:] for m in DENSE], ids=[m[0] for m in DENSE])
def test_mutant_dense_is_caught(change, rows):
    report = check_layer(dense(change), (4,))
    assert not report.ok and failing(report) == rows, str(report)


@pytest.mark.parametrize("base, df", [m[1:] for m in ACTIVATION], ids=[m[0] for m in ACTIVATION])
def test_mutant_activation_is_caught(base, df):
    report = check_layer(elementwise(base, df), (5,))
    assert not report.ok and failing(report) == and_at_ties(base, {X}), str(report)
    assert all(report.rows[0].errors[k] > getattr(report.tolerances, k) for k in ("vjp", "dot"))


@pytest.mark.parametrize(
    "layer, shape, rows", [m[1:] for m in OTHER_LAYERS], ids=[m[0] for m in OTHER_LAYERS]
)
def test_mutant_last_axis_layer_is_caught(layer, shape, rows):
    report = check_layer(layer, shape)
    assert not report.ok and failing(report) == rows, str(report)


@pytest.mark.parametrize("base, targets, change", [m[1:] for m in LOSS], ids=[m[0] for m in LOSS])
def test_mutant_loss_is_caught(base, targets, change):
    report = check_loss(loss_mutant(base, change), (8, 4), targets=targets)
    assert not report.ok and failing(report) == {Y}, str(report)
    assert all(
        report.rows[0].errors[k] > getattr(report.tolerances, k) for k in ("vjp", "fd", "dot")
    )


def test_mutant_inside_a_serial_is_named_by_position():
    bad = dense(lambda r: (2 * r.dW, r.db, r.dx))
    model = L.serial(L.Dense(4), L.Tanh(), bad, L.Sigmoid())
    report = check_layer(model, (3,))
    assert failing(report) == {"[2] Mutant(features=4) ['W']"}, str(report)
    assert "[2] Mutant(features=4) ['W']" in str(report)


def test_mutant_loss_fails_every_row_of_backprop():
    model = L.mlp([4, 2], "tanh")
    _, params = model.init(jax.random.PRNGKey(0), (3,))
    x, y = np.ones((5, 3)), np.zeros((5, 2))
    bad = loss_mutant(losses.mse, lambda r, g, right: g * r)
    report = check_backprop(model, bad, params, x, y)
    assert failing(report) == {r.name for r in report.rows} and len(report.rows) == 4, str(report)
    assert check_backprop(model, losses.mse, params, x, y).ok


@plants("numerical", "serial forgets to chain (every layer gets the output's cotangent)")
def test_mutant_serial_that_forgets_to_chain_is_caught():
    def backward(self, params, residuals, dy):  # every layer gets the output's cotangent
        grads = [layer.backward(p, r, dy) for layer, p, r in zip(self.layers, params, residuals)]
        return tuple(g for g, _ in grads), grads[0][1]

    bad = mutant(L.Serial, "BadSerial", backward)((L.Dense(4), L.Tanh(), L.Dense(4)))
    report = check_layer(bad, (4,))
    assert failing(report) == {"[0] Dense(features=4) ['W']", "[0] Dense(features=4) ['b']", "x"}, (
        str(report)
    )


def cube_fwd(x, y):
    return x**3 * jnp.sin(y), (x, y)


def cube_bwd(res, ct):
    x, y = res
    return 3 * x**2 * jnp.sin(y) * ct, x**3 * jnp.cos(y) * ct


def cube_bwd_wrong(res, ct):
    x, y = res
    return 3 * x**2 * jnp.sin(y) * ct, -(x**3) * jnp.cos(y) * ct  # sign of dy flipped


@plants("numerical", "custom_vjp rule: sign of one argument's cotangent")
def test_check_vjp_passes_a_right_rule_and_names_the_wrong_argument():
    x, y = np.linspace(-2, 2, 6), np.linspace(-1, 3, 6)
    assert check_vjp(cube_fwd, cube_bwd, x, y).ok
    report = check_vjp(cube_fwd, cube_bwd_wrong, x, y)
    assert failing(report) == {"arg1"}, str(report)


# Structure: a wrong tree, shape or dtype is a failing row that says what differs.
def _dense_structure(change):
    def backward(self, params, x, dy):
        d, dx = L.Dense.backward(self, params, x, dy)
        return change(d, dx)

    return mutant(L.Dense, "Mutant", backward)(3)


STRUCTURE = [  # (id, change(dparams, dx), failing row, words the problem must contain)
    ("missing key", lambda d, dx: ({"W": d["W"]}, dx), B, "missing"),
    ("extra key", lambda d, dx: ({**d, "c": d["b"]}, dx), "['c']", "unexpected"),
    ("wrong shape", lambda d, dx: ({"W": d["W"].T, "b": d["b"]}, dx), W,
     "shape (3, 4), expected (4, 3)"),
    ("wrong dtype", lambda d, dx: ({"W": d["W"], "b": d["b"].astype(jnp.float32)}, dx), B,
     "dtype float32"),
    ("dx wrong dtype", lambda d, dx: (d, dx.astype(jnp.float32)), X,
     "dtype float32, expected float64"),
    ("dx batch summed", lambda d, dx: (d, dx.sum(0)), X, "shape (4,), expected (8, 4)"),
]  # fmt: skip


PLANTED += [(m[0], "structure", "test_mutant_structure_is_a_failing_row") for m in STRUCTURE]


@pytest.mark.parametrize(
    "change, row, words", [m[1:] for m in STRUCTURE], ids=[m[0] for m in STRUCTURE]
)
def test_mutant_structure_is_a_failing_row(change, row, words):
    report = check_layer(_dense_structure(change), (4,))
    assert not report.ok and row in failing(report), str(report)
    problem = next(r.problem for r in report.rows if r.name == row)
    assert words in problem and words in str(report), str(report)


@plants("structure", "serial returns a list of params cotangents, not a tuple")
def test_list_instead_of_tuple_is_caught():
    def backward(self, params, residuals, dy):
        dparams, dx = L.Serial.backward(self, params, residuals, dy)
        return list(dparams), dx

    bad = mutant(L.Serial, "ListSerial", backward)((L.Dense(3), L.Tanh()))
    report = check_layer(bad, (4,))
    assert failing(report) == {"params"} and "expected PyTreeDef((" in str(report), str(report)
    assert all(r.errors["vjp"] is not None for r in report.rows if r.name != "params")


@plants("structure", "None instead of () for a layer without params")
def test_none_instead_of_empty_tuple_is_caught():
    bad = mutant(L.Tanh, "Mutant", lambda self, p, y, dy: (None, dy * (1 - y * y)))()
    assert failing(check_layer(bad, (5,))) == {"params"}


BROKEN_BWD = [  # (id, a custom_vjp bwd that breaks the convention, words the report must contain)
    ("bwd returns a list", lambda res, ct: list(cube_bwd(res, ct)), "must return a tuple"),
    ("bwd returns one cotangent of two", lambda res, ct: cube_bwd(res, ct)[:1], "2 cotangent(s)"),
    ("bwd raises", lambda res, ct: res[0] @ np.ones((5, 5)), "raised TypeError"),
]
PLANTED += [(m[0], "structure", "test_check_vjp_reports_a_broken_bwd") for m in BROKEN_BWD]


@pytest.mark.parametrize("bwd, words", [m[1:] for m in BROKEN_BWD], ids=[m[0] for m in BROKEN_BWD])
def test_check_vjp_reports_a_broken_bwd(bwd, words):
    report = check_vjp(cube_fwd, bwd, np.ones(6), np.ones(6))
    assert not report.ok and words in str(report), str(report)


@pytest.mark.parametrize(
    "mutation", [DENSE[0], DENSE[4], DENSE[5]], ids=["x2", "sign", "transposed"]
)
def test_float32_catches_gross_mistakes(mutation):
    report = check_layer(dense(mutation[1]), (4,), dtype="float32")
    assert not report.ok and failing(report) == mutation[2], str(report)


@dataclasses.dataclass(frozen=True)
class Swish:
    """README's example: y = x s, s = sigmoid(b x); dy/dx = s + b x s (1 - s), but its rule
    forgot the b, which init sets to 1, so the mistake shows only off init."""

    def init(self, key, input_shape):
        return input_shape, {"b": jnp.ones(input_shape)}

    def forward(self, params, x, *, key=None):
        s = jax.nn.sigmoid(params["b"] * x)
        return x * s, (x, s)

    def backward(self, params, residuals, dy):
        x, s = residuals
        ds = s * (1 - s)
        return {"b": jnp.sum(dy * x * x * ds, axis=0)}, dy * (s + x * ds)  # forgot b in dx

    def apply(self, params, x, *, key=None):
        return self.forward(params, x)[0]


@plants("numerical", "a factor that init sets to 1 forgotten (Swish's b)")
def test_params_are_nudged_off_init_so_a_factor_of_one_shows():
    _, at_init = Swish().init(None, (4,))
    assert check_layer(Swish(), (4,), params=at_init).ok  # at b = 1 the mistake is invisible
    for seed in range(5):
        report = check_layer(Swish(), (4,), key=seed)  # layer.init's params, nudged
        assert failing(report) == {X}, f"seed {seed}\n{report}"


# ---------------------------------------------------------------------------------------------
# Planted mistakes in the rules of branches, normalisation, randomness and ids


def _layer_norm_no_variance_term(self, params, residuals, dy):
    xhat, rstd = residuals
    g = dy * params["scale"]
    dx = rstd * (g - g.mean(-1, keepdims=True))  # forgot that the variance depends on x
    return {"scale": (dy * xhat).reshape(-1, xhat.shape[-1]).sum(0), "bias": dy.sum((0, 1))}, dx


def _rms_norm_no_projection(self, params, residuals, dy):
    xhat, rrms = residuals
    return {"scale": (dy * xhat).sum(0)}, rrms * dy * params["scale"]


def _batch_norm_constant_statistics(self, params, residuals, dy):
    dparams, _ = L.BatchNorm.backward(self, params, residuals, dy)
    return dparams, dy * params["scale"] * residuals[1]  # as if mean and var did not depend on x


def _dropout_mask_missing(self, params, mask, dy):
    return (), dy


def _embedding_overwrites(self, params, ids, dy):
    table = jnp.zeros_like(params["table"]).at[ids].set(dy)  # repeated ids: the last one wins
    return {"table": table}, L.Embedding.backward(self, params, ids, dy)[1]


def _residual_without_skip(self, params, residuals, dy, path, sweep):
    dparams, dx = L.Residual.walk_backward(self, params, residuals, dy, path, sweep)
    return dparams, dx - dy  # the body's dx alone: the skip's cotangent dropped


def _parallel_first_branch_only(self, params, residuals, dy, path, sweep):
    dparams, _ = L.Parallel.walk_backward(self, params, residuals, dy, path, sweep)
    branch = self.branches[0]
    _, dx = branch.backward(params[0], residuals[0][0], dy)
    return dparams, dx  # x fans out to both branches: their dx must add


def _with(base, name, **methods):
    return type(name, (base,), methods)  # the base's dataclass init, repr and hash serve


BODY = L.serial(L.Dense(4), L.Tanh())
NEW_LAYERS = [  # (id, layer, input shape, rows that must fail)
    ("layer norm without the variance term",
     _with(L.LayerNorm, "Mutant", backward=_layer_norm_no_variance_term)(), (3, 4), {X}),
    ("rms norm without the projection term",
     _with(L.RMSNorm, "Mutant", backward=_rms_norm_no_projection)(), (5,), {X}),
    ("batch norm ignores that the batch statistics depend on x",
     _with(L.BatchNorm, "Mutant", backward=_batch_norm_constant_statistics)(), (4,), {X}),
    ("dropout's mask missing in backward",
     _with(L.Dropout, "Mutant", backward=_dropout_mask_missing)(0.5), (5,), {X}),
    ("residual drops the skip's cotangent",
     L.serial(L.Dense(4), _with(L.Residual, "Mutant", walk_backward=_residual_without_skip)(BODY)),
     (3,), {"[0] Dense(features=4) ['W']", "[0] Dense(features=4) ['b']", X}),
    ("parallel sends back one branch's dx, not the sum",
     _with(L.Parallel, "Mutant", walk_backward=_parallel_first_branch_only)(L.Dense(4), BODY),
     (4,), {X}),
]  # fmt: skip
PLANTED += [(m[0], "numerical", "test_mutant_new_layer_is_caught") for m in NEW_LAYERS]


@pytest.mark.parametrize(
    "layer, shape, rows", [m[1:] for m in NEW_LAYERS], ids=[m[0] for m in NEW_LAYERS]
)
def test_mutant_new_layer_is_caught(layer, shape, rows):
    report = check_layer(layer, shape)
    assert not report.ok and failing(report) == rows, str(report)


IDS = np.array([[0, 1, 1, 6], [2, 2, 2, 3]])  # repeated ids, so accumulation matters


def test_embedding_passes_over_many_keys_with_parameter_rows_only():
    for seed in range(50):
        report = check_layer(L.Embedding(7, 3), (4,), x=IDS, key=seed)
        assert report.ok and [r.name for r in report.rows] == ["['table']"], str(report)


@plants("numerical", "embedding overwrites repeated ids instead of accumulating")
def test_mutant_embedding_is_caught():
    bad = _with(L.Embedding, "Mutant", backward=_embedding_overwrites)(7, 3)
    report = check_layer(bad, (4,), x=IDS)
    assert not report.ok and failing(report) == {"['table']"}, str(report)


# ---------------------------------------------------------------------------------------------
# Planted mistakes in convolution and pooling


def _conv_backward(flip=True, dilate_dy=True, invert_padding=True, groups=True, dilation=True):
    """Conv's backward, with one of its ingredients switched off."""
    from jaxbp.layers import _spatial as S
    from jaxbp.layers import conv as C

    def backward(self, params, x, dy):
        nd, s, d = len(self.kernel_size), self.strides, self.dilation
        spatial, axes = x.shape[1:-1], tuple(range(1, nd + 1))
        pairs = self._padding(spatial)
        W = params["W"] if flip else jnp.flip(params["W"], axis=tuple(range(nd)))
        pads = tuple(map(S.transpose_padding, spatial, pairs, self._spans, s))
        g = self.groups if groups else 1
        dx = lax.conv_general_dilated(
            dy, C._transposed_kernel(W, g if g == self.groups else self.groups), (1,) * nd,
            pads if invert_padding else pairs, lhs_dilation=s if dilate_dy else (1,) * nd,
            rhs_dilation=d if dilation else (1,) * nd, dimension_numbers=C._dims(nd),
            feature_group_count=self.groups,
        )  # fmt: skip
        if not groups:  # dx right; dW pairs every input channel with every output's group 0
            W_all = lax.conv_general_dilated(
                x, dy, d, tuple((lo, hi - r) for (lo, hi), r in zip(
                    pairs, map(S.unread, spatial, pairs, self._spans, s))),
                rhs_dilation=s, dimension_numbers=C._weight_grad_dims(nd),
            )  # fmt: skip
            k = x.shape[-1] // self.groups
            return {"W": W_all[..., :k, :], "b": dy.sum(axis=(0, *axes))}, dx
        right, _ = L.Conv.backward(self, params, x, dy)
        return right, dx

    return backward


def _max_pool_spread(self, params, residuals, dy):
    _, carrier = residuals  # every element of a window gets dy / window size, as if averaging
    return L.AvgPool.backward(L.AvgPool(self.window, self.strides, self.padding), params,
                              carrier, dy)  # fmt: skip


def _avg_pool_divisor_ignores_padding(self, params, carrier, dy):
    full = L.AvgPool(self.window, self.strides, self.padding)  # divides by prod(window) everywhere
    return L.AvgPool.backward(full, params, carrier, dy)


CONV = L.Conv(4, (3, 3), strides=2, dilation=2, groups=2)
VISION = [  # (id, layer, input shape, a row that must fail)
    ("conv kernel not flipped in dx", _with(L.Conv, "Mutant", backward=_conv_backward(flip=False))(
        *dataclasses.astuple(CONV)), (7, 8, 4), X),
    ("conv stride ignored in dx", _with(L.Conv, "Mutant", backward=_conv_backward(
        dilate_dy=False))(*dataclasses.astuple(CONV)), (7, 8, 4), X),
    ("conv padding not inverted in dx", _with(L.Conv, "Mutant", backward=_conv_backward(
        invert_padding=False))(3, (3, 3), 1, ((2, 0), (1, 1))), (5, 6, 2), X),
    ("conv groups mixed up in dW", _with(L.Conv, "Mutant", backward=_conv_backward(
        groups=False))(*dataclasses.astuple(CONV)), (7, 8, 4), W),
    ("conv dilation dropped in dx", _with(L.Conv, "Mutant", backward=_conv_backward(
        dilation=False))(3, (3, 3), 1, "SAME", 2), (6, 6, 2), X),
    ("max-pool gradient spread over the window",
     _with(L.MaxPool, "Mutant", backward=_max_pool_spread)((2, 2)), (4, 6, 2), X),
    ("average-pool divisor wrong at padded edges",
     _with(L.AvgPool, "Mutant", backward=_avg_pool_divisor_ignores_padding)(
         (3, 3), (2, 2), ((1, 1), (1, 1)), False), (5, 6, 2), X),
]  # fmt: skip
# Ignoring the stride or the dilation in dx gives dx the wrong shape: a misshapen leaf.
MISSHAPEN = {"conv stride ignored in dx", "conv dilation dropped in dx"}
PLANTED += [
    (m[0], "structure" if m[0] in MISSHAPEN else "numerical", "test_mutant_vision_layer_is_caught")
    for m in VISION
]


@pytest.mark.parametrize("layer, shape, row", [m[1:] for m in VISION], ids=[m[0] for m in VISION])
def test_mutant_vision_layer_is_caught(layer, shape, row):
    report = check_layer(layer, shape)
    assert not report.ok and failing(report) == and_at_ties(layer, {row}), str(report)


# ---------------------------------------------------------------------------------------------
# Planted mistakes in sequence layers: attention, recurrence, positions and tied weights.
# Each attention and recurrent mutant carries its own forward and backward, written out again
# from the formulas in the layers' docstrings with one ingredient switched off: they depend on
# the public params layout alone, not on the layers' internals. The copies with nothing
# switched off pass (test_sequence_copies_pass), so a failure is the planted mistake's.


def _split(a, H):
    """(batch, T, C) -> (batch, H, T, d)."""
    b, T, C = a.shape
    return a.reshape(b, T, H, C // H).transpose(0, 2, 1, 3)


def _merge(a):
    """(batch, H, T, d) -> (batch, T, C)."""
    b, H, T, d = a.shape
    return a.transpose(0, 2, 1, 3).reshape(b, T, H * d)


def _scores(q, k, causal):
    s = jnp.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1])
    T = s.shape[-1]
    return jnp.where(jnp.tril(jnp.ones((T, T), bool)), s, -jnp.inf) if causal else s


def _attention(scale=True, mask=True, full_softmax=True):
    """SelfAttention's forward, and its backward (p rebuilt from lse, as recompute=True does)."""

    def forward(self, params, x, *, key=None):
        H = self.num_heads
        q, k, v = (_split(a, H) for a in jnp.split(x @ params["W_qkv"] + params["b_qkv"], 3, -1))
        s = _scores(q, k, self.causal)
        m = lax.stop_gradient(s.max(-1, keepdims=True))
        lse = m + jnp.log(jnp.exp(s - m).sum(-1, keepdims=True))
        o = _merge(jnp.exp(s - lse) @ v)
        return o @ params["W_out"] + params["b_out"], (x, q, k, v, o, lse)

    def backward(self, params, residuals, dy):
        x, q, k, v, o, lse = residuals
        p = jnp.exp(_scores(q, k, self.causal and mask) - lse)  # mask=False: the future leaks
        do = _split(dy @ params["W_out"].T, self.num_heads)
        dp, dv = do @ jnp.swapaxes(v, -1, -2), jnp.swapaxes(p, -1, -2) @ do
        ds = p * (dp - (dp * p).sum(-1, keepdims=True)) if full_softmax else p * dp
        ds = ds / math.sqrt(q.shape[-1]) if scale else ds
        dq, dk = ds @ k, jnp.swapaxes(ds, -1, -2) @ q
        dqkv = jnp.concatenate([_merge(dq), _merge(dk), _merge(dv)], -1)
        sums = lambda a: a.reshape(-1, a.shape[-1]).sum(0)  # noqa: E731
        dparams = {
            "W_qkv": jnp.einsum("bti,btj->ij", x, dqkv), "b_qkv": sums(dqkv),
            "W_out": jnp.einsum("bti,btj->ij", o, dy), "b_out": sums(dy),
        }  # fmt: skip
        return dparams, dqkv @ params["W_qkv"].T

    return {"forward": forward, "backward": backward}


def _lstm(forget_path=True):
    """LSTM's forward and its BPTT; forget_path=False drops dc_prev = f dc (the cell's memory)."""

    def forward(self, params, x, *, key=None):
        def step(carry, xw_t):
            h, c = carry
            i, f, g, o = jnp.split(xw_t + h @ params["U"], 4, -1)
            i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
            c_new = f * c + i * g
            h_new = o * jnp.tanh(c_new)
            return (h_new, c_new), (h_new, jnp.concatenate([i, f, g, o], -1), c_new, h, c)

        zero = jnp.zeros((x.shape[0], self.features), x.dtype)
        xw = jnp.swapaxes(x @ params["W"] + params["b"], 0, 1)  # time-major
        h, *saved = lax.scan(step, (zero, zero), xw)[1]
        return jnp.swapaxes(h, 0, 1), (x, *saved)

    def backward(self, params, residuals, dy):
        x, gates, c, h_prev, c_prev = residuals

        def step(carry, inputs):
            dh_next, dc_next = carry
            dy_t, gates_t, c_t, c_prev_t = inputs
            i, f, g, o = jnp.split(gates_t, 4, -1)
            tc = jnp.tanh(c_t)
            dh = dy_t + dh_next
            dc = dh * o * (1 - tc * tc) + dc_next
            dz = jnp.concatenate([dc * g * i * (1 - i), dc * c_prev_t * f * (1 - f),
                                  dc * i * (1 - g * g), dh * tc * o * (1 - o)], -1)  # fmt: skip
            return (dz @ params["U"].T, dc * f if forget_path else 0 * dc), dz

        zero = jnp.zeros_like(c[0])
        inputs = (jnp.swapaxes(dy, 0, 1), gates, c, c_prev)
        dz = lax.scan(step, (zero, zero), inputs, reverse=True)[1]
        return _recurrent_grads(params, x, h_prev, dz)

    return {"forward": forward, "backward": backward}


def _rnn(cut=None):
    """The tanh RNN's forward and its BPTT; at step `cut` the carry from step cut + 1 is lost."""

    def forward(self, params, x, *, key=None):
        def step(h, xw_t):
            h_new = jnp.tanh(xw_t + h @ params["U"])
            return h_new, (h_new, h)

        h0 = jnp.zeros((x.shape[0], self.features), x.dtype)
        h, h_prev = lax.scan(step, h0, jnp.swapaxes(x @ params["W"] + params["b"], 0, 1))[1]
        return jnp.swapaxes(h, 0, 1), (x, h, h_prev)

    def backward(self, params, residuals, dy):
        x, h, h_prev = residuals

        def step(dh_next, inputs):
            t, dy_t, h_t = inputs
            dh_next = jnp.where(t == cut, 0, dh_next) if cut is not None else dh_next
            dz = (dy_t + dh_next) * (1 - h_t * h_t)
            return dz @ params["U"].T, dz

        inputs = (jnp.arange(len(h)), jnp.swapaxes(dy, 0, 1), h)
        dz = lax.scan(step, jnp.zeros_like(h[0]), inputs, reverse=True)[1]
        return _recurrent_grads(params, x, h_prev, dz)

    return {"forward": forward, "backward": backward}


def _recurrent_grads(params, x, h_prev, dz):
    """dW = sum_t x_t^T dz_t, dU = sum_t h_{t-1}^T dz_t, db = sum dz, dx = dz W^T; h_prev and dz
    time-major, (T, batch, ...)."""
    dU = jnp.einsum("tbf,tbk->fk", h_prev, dz)
    dz = jnp.swapaxes(dz, 0, 1)
    return {"W": jnp.einsum("bti,btk->ik", x, dz), "U": dU, "b": dz.sum((0, 1))}, dz @ params["W"].T


def _position_mean_not_sum(self, params, residuals, dy):
    T = dy.shape[1]  # dtable[t] must sum dy over the batch; the mean divides by it
    return {"table": jnp.zeros_like(params["table"]).at[:T].set(dy.mean(0))}, dy


def _tied_head_gradient_dropped(self, params, residuals, dy, path, sweep):
    """Tied's walk with W = table^T put at the head, its dW then dropped, not added to dtable."""
    (s,), (t,) = self.source, self.target
    full = (*params[:t], {**params[t], "W": params[s]["table"].T}, *params[t + 1 :])
    grads, dx = sweep_backward(self.body, full, residuals, dy, path, sweep)
    return (*grads[:t], {"b": grads[t]["b"]}, *grads[t + 1 :]), dx


QKV = {"['W_qkv']", "['b_qkv']", X}  # the rows a mistake in s = q k^T / sqrt(d) or before reaches
SEQ = (4, 4)  # T, C (and T, in): 2 heads of d = 2; a (4, 4) attention matrix per head
SEQUENCE_COPIES = [  # (id, layer): the copies above, nothing switched off
    ("attention", _with(L.SelfAttention, "Copy", **_attention())(2, True, True)),
    ("attention non-causal", _with(L.SelfAttention, "Copy", **_attention())(2, False, True)),
    ("lstm", _with(L.LSTM, "Copy", **_lstm())(3)),
    ("rnn", _with(L.RNN, "Copy", **_rnn())(3)),
]
SEQUENCE = [  # (id, layer, input shape, rows that must fail)
    ("attention without 1/sqrt(d) in backward",
     _with(L.SelfAttention, "Mutant", **_attention(scale=False))(2, True, True), SEQ, QKV),
    ("attention rebuilds p without the causal mask in backward",
     _with(L.SelfAttention, "Mutant", **_attention(mask=False))(2, True, True), SEQ, QKV),
    ("softmax Jacobian taken as its diagonal in attention (ds = p dp)",
     _with(L.SelfAttention, "Mutant", **_attention(full_softmax=False))(2, True, True), SEQ, QKV),
    ("lstm drops the forget-gate path of dc (dc_prev = f dc)",
     _with(L.LSTM, "Mutant", **_lstm(forget_path=False))(3), SEQ, {W, "['U']", B, X}),
    ("bptt truncated at one step (carry from t + 1 lost)",
     _with(L.RNN, "Mutant", **_rnn(cut=1))(3), SEQ, {W, "['U']", B, X}),
    ("position embedding takes the batch mean, not the sum",
     _with(L.PositionEmbedding, "Mutant", backward=_position_mean_not_sum)(6, 4), SEQ,
     {"['table']"}),
]  # fmt: skip
PLANTED += [(m[0], "numerical", "test_mutant_sequence_layer_is_caught") for m in SEQUENCE]


@pytest.mark.parametrize(
    "layer", [m[1] for m in SEQUENCE_COPIES], ids=[m[0] for m in SEQUENCE_COPIES]
)
def test_sequence_copies_pass(layer):
    report = check_layer(layer, SEQ)
    assert report.ok and all(row.errors["vjp"] <= 1e-12 for row in report.rows), str(report)


@pytest.mark.parametrize(
    "layer, shape, rows", [m[1:] for m in SEQUENCE], ids=[m[0] for m in SEQUENCE]
)
def test_mutant_sequence_layer_is_caught(layer, shape, rows):
    report = check_layer(layer, shape)
    assert not report.ok and failing(report) == rows, str(report)


TIED = L.Tied(L.serial(L.Embedding(7, 4), L.Tanh(), L.Dense(7)), 0, 2)
TABLE = "[0] Embedding(num_embeddings=7, features=4) ['table']"


@plants("numerical", "tied weights: the head's gradient not added to the shared table's")
def test_mutant_tied_is_caught_on_the_table_row_only():
    report = check_layer(TIED, (4,), x=IDS)
    names = [r.name for r in report.rows]
    assert report.ok and names == [TABLE, "[2] Dense(features=7) ['b']"], str(report)
    bad = _with(L.Tied, "Mutant", walk_backward=_tied_head_gradient_dropped)(
        TIED.body, TIED.source, TIED.target
    )
    report = check_layer(bad, (4,), x=IDS)
    assert not report.ok and failing(report) == {TABLE}, str(report)


# ---------------------------------------------------------------------------------------------
# Planted mistakes at ties: right wherever inputs differ, so only the tie draw can catch them


def _max_pool_saving_x(self, params, x, *, key=None):
    y, _ = L.MaxPool.forward(self, params, x)
    return y, (x, y)


def _max_pool_every_tied_max(self, params, residuals, dy):
    x, y = residuals  # 2 x 2 windows, strides 2, VALID: disjoint blocks of x
    b, h, w, c = x.shape
    block = x.reshape(b, h // 2, 2, w // 2, 2, c)
    at_max = block == y[:, :, None, :, None]  # every maximum of its window, not only the first
    return (), jnp.where(at_max, dy[:, :, None, :, None], 0).reshape(x.shape)


def _relu_one_at_zero(x):
    return (x >= 0).astype(x.dtype)  # jax.nn.relu's derivative at 0 is 0


AT_TIES = [  # (id, layer, input shape): wrong only where inputs tie
    ("max-pool gives dy to every tied maximum of a window, not to the first",
     _with(L.MaxPool, "Mutant", forward=_max_pool_saving_x, backward=_max_pool_every_tied_max)(
         (2, 2)), (4, 6, 2)),
    ("relu's derivative at exactly 0 taken as 1",
     _with(L.Relu, "Mutant", save="x", df=staticmethod(_relu_one_at_zero))(), (5,)),
]  # fmt: skip
PLANTED += [(m[0], "numerical", "test_mutant_at_ties_is_caught_by_the_tie_draw") for m in AT_TIES]


@pytest.mark.parametrize("layer, shape", [m[1:] for m in AT_TIES], ids=[m[0] for m in AT_TIES])
def test_mutant_at_ties_is_caught_by_the_tie_draw(layer, shape):
    report = check_layer(layer, shape)
    assert failing(report) == {"x (ties)"}, str(report)  # the random draw's "x" passes
    row, tol = report.rows[-1], report.tolerances
    assert row.errors["vjp"] > tol.vjp and row.errors["dot"] > tol.dot, str(report)
    text = str(report).splitlines()
    assert text[0].endswith("and with ties [float64]: FAILED") and "(ties): " in text[-2], text
    assert json.loads(report.to_json())["rows"][-1]["ok"] is False
    x = np.random.default_rng(0).normal(size=(8, *shape))  # no ties: the mistake cannot show
    assert check_layer(layer, shape, x=x).ok


def test_every_planted_mistake_is_distinct_and_counted_in_the_readme():
    names = [name for name, _, _ in PLANTED]
    assert len(set(names)) == len(names), "a mistake is planted twice under one name"
    assert {test for _, _, test in PLANTED} <= set(globals()), "a planted mistake has no test"
    kinds = {kind: sum(k == kind for _, k, _ in PLANTED) for kind in ("numerical", "structure")}
    assert kinds == {"numerical": 60, "structure": 13} and len(PLANTED) == 73, kinds
    readme = flat(documentation())
    claim = re.search(r"plant (\d+) distinct numerical mistakes .*? and (\d+) malformed", readme)
    assert claim and tuple(map(int, claim.groups())) == (60, 13), "the docs state other counts"


# ---------------------------------------------------------------------------------------------
# The report and the options


def test_report_table_json_and_assertion():
    bad = dense(DENSE[0][1])
    report = check_layer(bad, (4,))
    text = str(report)
    assert text.splitlines()[0] == "Mutant(features=4) on x(8, 4) [float64]: FAILED"
    assert "leaf" in text and "vjp err" in text and "fd err" in text and "dot err" in text
    data = json.loads(report.to_json())
    assert data["ok"] is False and data == report.to_dict() | {"rows": data["rows"]}
    assert [(r["name"], r["ok"]) for r in data["rows"]] == [(W, False), (B, True), (X, True)]
    with pytest.raises(AssertionError, match=r"\['W'\]"):
        report.raise_if_failed()
    with pytest.raises(AssertionError):
        report.assert_ok()
    good = check_layer(L.Dense(3), (4,))
    assert good.assert_ok() is good and bool(good)


def test_tolerances_can_be_overridden_and_options_are_validated():
    bad = dense(DENSE[2][1])  # 1.01x: caught at 1e-10, passed when 2% is allowed
    assert not check_layer(bad, (4,)).ok
    assert check_layer(bad, (4,), tolerances={"vjp": 0.02, "fd": 0.02, "dot": 0.02}).ok
    with pytest.raises(ValueError, match="dtype"):
        check_layer(L.Tanh(), (5,), dtype="float16")
    with pytest.raises(ValueError, match="unknown tolerances"):
        check_layer(L.Tanh(), (5,), tolerances={"atol": 1})
    with pytest.raises(ValueError, match="targets"):
        check_loss(losses.mse, targets="bogus")


def test_given_inputs_and_targets_are_used():
    x = np.full((2, 5), -1.0)  # negative inputs only: leaky relu's slope-1 mutant shows
    bad = elementwise(L.LeakyRelu(), lambda self, x: jnp.ones_like(x))
    assert not check_layer(bad, (5,), x=x).ok
    assert check_layer(bad, (5,), x=-x).ok  # on positive inputs the mistake cannot be seen
    y = np.array([0, 1, 2, 3])
    report = check_loss(losses.softmax_cross_entropy, (4, 4), targets=y)
    assert report.ok and "targets: given" in report.title
