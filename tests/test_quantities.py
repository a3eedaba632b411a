"""Per-example gradients, their norms, the gradient variance and the sum of squared gradients,
each against jax.grad per example (vmap of jax.grad of L_i on a batch of one) in float64.

Tolerance 1e-10 relative: the rules and the reference add the same terms in different orders
(einsums against XLA's own transposes, Gram matrices against materialised products), which
costs a few float64 roundings per term, ~1e-14; 1e-10 leaves room for cancellation in the
variance while any missing term (a cross term, a factor m) shows up at >= 1e-3.
"""

from __future__ import annotations

import itertools
import re

import jax
import jax.numpy as jnp
import pytest
from conftest import rel_error

from jaxbp import layers as L
from jaxbp import losses
from jaxbp._compat import enable_x64
from jaxbp.backprop import backprop
from jaxbp.layers import init_state
from jaxbp.protocols import forward_state
from jaxbp.quantities import (
    first_order,
    grad_variance,
    per_example_grads,
    per_example_norms,
    sum_grad_squared,
)
from jaxbp.quantities._leaves import (
    deltas_for,
    leaf_per_example_grads,
    leaf_sq_norms,
    leaf_sum_grad_squared,
    leaf_weighted_grad,
    record,
)
from jaxbp.signals import params_at
from jaxbp.walk import leaves

RTOL = 1e-10
CAUGHT = 1e-3  # a planted error must move the result by at least this much


def _problem(model, in_shape, batch, outputs, *, ids=None, eval_state=False):
    """float64 params, inputs and integer labels for a model; state when it keeps one."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    _, params = model.init(k1, in_shape)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    if ids is None:
        x = jax.random.normal(k2, (batch, *in_shape), jnp.float64)
    else:
        x = jax.random.randint(k2, (batch, *in_shape), 0, ids)
    y_shape = (batch,) if ids is None else (batch, *in_shape)
    y = jax.random.randint(k3, y_shape, 0, outputs)
    state = None
    if eval_state:  # running statistics away from (0, 1), so evaluation mode is not trivial
        state = jax.tree.map(lambda a: a + 0.3, init_state(model, params))
    return params, x, y, state


def _reference(model, loss, params, x, y, state=None):
    """g_i = jax.grad of L_i, computed on example i alone, for every i."""

    def one(xi, yi):
        def cost(p):
            xb = xi[None]
            y_pred = model.apply(p, xb) if state is None else forward_state(model, p, state, xb)[0]
            return loss.apply(y_pred, yi[None])

        return jax.grad(cost)(params)

    return jax.jit(jax.vmap(one))(x, y)


def _flat(tree):
    """(batch, all params): every leaf of a per-example tree, side by side."""
    return jnp.concatenate([a.reshape(len(a), -1) for a in jax.tree.leaves(tree)], axis=1)


def _check_all(model, loss, params, x, y, ref, state=None, key=None, *, total=False, first=False):
    """The quantities against the reference g_i, in one jitted call (one compile). total: the
    total norm too (per_leaf=False: the per-leaf squares summed); first: only g_i and the
    per-leaf norms (variance and sums of squares are the same per-leaf code for every layer)."""
    kw = {"state": state, "key": key}
    run = lambda p: (  # noqa: E731
        per_example_grads(model, loss, p, x, y, **kw),
        per_example_norms(model, loss, p, x, y, per_leaf=True, **kw),
        None if first else grad_variance(model, loss, p, x, y, **kw),
        None if first else sum_grad_squared(model, loss, p, x, y, **kw),
        per_example_norms(model, loss, p, x, y, **kw) if total else None,
    )
    g, per_leaf, var, sgs, norms = jax.jit(run)(params)
    assert rel_error(g, ref) <= RTOL
    with_params = {p for p, _ in leaves(model) if jax.tree.leaves(params_at(params, p))}
    assert set(per_leaf) == with_params
    for path, n in per_leaf.items():
        assert rel_error(n, jnp.linalg.norm(_flat(params_at(ref, path)), axis=1)) <= RTOL, path
    if not first:
        assert rel_error(var, jax.tree.map(lambda a: jnp.var(a, axis=0), ref)) <= RTOL
        assert rel_error(sgs, jax.tree.map(lambda a: jnp.sum(a * a, axis=0), ref)) <= RTOL
    if total:
        assert rel_error(norms, jnp.linalg.norm(_flat(ref), axis=1)) <= RTOL


def test_residual_branched_mlp_with_dropout(x64):
    """Dense (one position: ||x_i|| ||dy_i||), LayerNorm and RMSNorm inside a Residual and a
    Parallel, a Dense at its Residual's own path, Dropout. With dropout L_i reads the batch's
    mask, so the reference slices one full-batch forward (same key) at example i."""
    model = L.serial(
        L.Dense(6),
        L.Residual(L.serial(L.LayerNorm(), L.Dense(6), L.Tanh(), L.Dropout(0.3), L.Dense(6))),
        L.Parallel(
            L.serial(L.Dense(4), L.Relu()), L.serial(L.RMSNorm(), L.Dense(3)), merge="concat"
        ),  # fmt: skip
        L.Residual(L.Dense(7)),
        L.Dense(3),
    )
    loss, key = losses.softmax_cross_entropy, jax.random.PRNGKey(7)
    params, x, y, _ = _problem(model, (5,), 6, 3)

    def one(i):
        def cost(p):
            y_pred = jax.lax.dynamic_slice_in_dim(model.apply(p, x, key=key), i, 1)
            return loss.apply(y_pred, y[i][None])

        return jax.grad(cost)(params)

    ref = jax.jit(jax.vmap(one))(jnp.arange(6))
    _check_all(model, loss, params, x, y, ref, key=key, total=True)


def test_cnn_with_pools_and_batchnorm_in_eval_mode(x64):
    """Conv (materialised: P (K + F) >= K F), a grouped, dilated Conv, and a Conv whose ghost
    norm is the cheaper (3x3 outputs, K = 36, F = 24); MaxPool, AvgPool, BatchNorm."""
    model = L.eval_mode(
        L.serial(
            L.Conv(4, (3, 3)),
            L.BatchNorm(),
            L.Relu(),
            L.MaxPool((2, 2)),
            L.Conv(4, (2, 2), dilation=2, groups=2, padding=((1, 0), (0, 1))),
            L.Conv(24, (3, 3)),
            L.Tanh(),
            L.AvgPool((2, 2)),
            L.Flatten(),
            L.Dense(3),
        )  # fmt: skip
    )
    loss = losses.softmax_cross_entropy
    params, x, y, state = _problem(model, (8, 8, 3), 5, 3, eval_state=True)
    ref = _reference(model, loss, params, x, y, state)
    _check_all(model, loss, params, x, y, ref, state=state)


def test_small_gpt(x64):
    """Embedding (ghost: T^2 = 25 < vocab = 30), PositionEmbedding, LayerNorm, causal
    SelfAttention, Dense on sequences both ghost (8 -> 32 -> 8: T (in + out) < in out) and
    materialised (the head, 8 -> 30)."""
    model = L.gpt(30, 6, num_layers=1, features=8, num_heads=2)
    loss = losses.softmax_cross_entropy
    params, x, y, _ = _problem(model, (5,), 3, 30, ids=30)
    _check_all(model, loss, params, x, y, _reference(model, loss, params, x, y), first=True)


def test_recurrent_cells(x64):
    """LSTM, GRU and RNN by the generic rule (a forward and backward per example; the norms,
    variance and sums of squares of generic leaves come from the same g_i, checked on GPT's
    attention)."""
    model = L.serial(L.Embedding(9, 4), L.LSTM(5), L.GRU(4), L.RNN(3), L.Dense(9))
    loss = losses.softmax_cross_entropy
    params, x, y, _ = _problem(model, (4,), 3, 9, ids=9)
    ref = _reference(model, loss, params, x, y)
    g = jax.jit(lambda p: per_example_grads(model, loss, p, x, y))(params)
    assert rel_error(g, ref) <= RTOL


def test_tied_weights_add_per_example(x64):
    """Tied shares one matrix between the Embedding and the head: each g_i's table adds the
    head's W^T, so norms, variance and sums of squares come from the assembled g_i."""
    model = L.Tied(L.serial(L.Embedding(6, 4), L.Tanh(), L.Dense(6)), (0,), (2,))
    loss = losses.softmax_cross_entropy
    params, x, y, _ = _problem(model, (3,), 4, 6, ids=6)
    _check_all(model, loss, params, x, y, _reference(model, loss, params, x, y))


# ---------------------------------------------------------------------------------------------
# Mutation plants: each must be caught by the comparison above


@pytest.fixture(scope="module")
def dense_sequence():
    """Dense on sequences where the ghost norm is the cheaper (T = 4: 4 (16 + 32) < 16 32), its
    float64 problem and reference g_i, computed once for the plants."""
    with enable_x64():
        model = L.serial(L.Embedding(7, 16), L.Dense(32), L.Tanh(), L.Dense(7))
        loss = losses.softmax_cross_entropy
        params, x, y, _ = _problem(model, (4,), 3, 7, ids=7)
        ref = _reference(model, loss, params, x, y)
    return model, loss, params, x, y, ref


def test_plant_ghost_norm_without_cross_terms_is_caught(dense_sequence, x64, monkeypatch):
    model, loss, params, x, y, ref = dense_sequence
    want = jnp.linalg.norm(_flat(ref), axis=1)
    assert rel_error(per_example_norms(model, loss, params, x, y), want) <= RTOL

    def diagonal_only(a, b):  # sum_t ||x_t||^2 ||dy_t||^2: the t != s terms dropped
        return jnp.sum(jnp.sum(a * a, -1) * jnp.sum(b * b, -1), axis=1)

    monkeypatch.setattr(L.dense, "ghost_sq_norms", diagonal_only)
    assert rel_error(per_example_norms(model, loss, params, x, y), want) > CAUGHT


def test_plant_norms_squared_twice_is_caught(dense_sequence, x64, monkeypatch):
    model, loss, params, x, y, ref = dense_sequence
    squared = first_order.leaf_sq_norms
    monkeypatch.setattr(first_order, "leaf_sq_norms", lambda *a: squared(*a) ** 2)
    got = per_example_norms(model, loss, params, x, y)
    assert rel_error(got, jnp.linalg.norm(_flat(ref), axis=1)) > CAUGHT


def test_plant_per_example_grads_without_the_factor_m_is_caught(dense_sequence, x64, monkeypatch):
    model, loss, params, x, y, ref = dense_sequence
    monkeypatch.setattr(first_order, "_scaled", lambda tree, factor: tree)
    assert rel_error(per_example_grads(model, loss, params, x, y), ref) > CAUGHT


# ---------------------------------------------------------------------------------------------
# Errors and the internal API


class Scale(L.Layer):
    """A user layer with params and no per-example rule: y = s x; ds = sum(x dy), dx = s dy."""

    def init(self, key, shape):
        return shape, {"s": jnp.ones(())}

    def forward(self, params, x, *, key=None):
        return x * params["s"], x

    def backward(self, params, x, dy):
        return {"s": jnp.sum(x * dy)}, dy * params["s"]


class Declared(Scale):
    examples_independent = True  # the generic per-example rule may run on it


def test_batchnorm_in_training_raises_naming_its_path(key):
    model = L.mlp([4, 3], batch_norm=True)
    _, params = model.init(key, (5,))
    x, y = jnp.ones((4, 5)), jnp.zeros((4,), int)
    for f in (per_example_grads, per_example_norms, grad_variance, sum_grad_squared):
        with pytest.raises(NotImplementedError, match=r"layer \[1\] BatchNorm.*couple"):
            f(model, losses.softmax_cross_entropy, params, x, y, state=init_state(model, params))


def test_a_layer_must_declare_its_examples_independent(key, x64):
    """A user layer that does not say its examples never meet is refused, naming its path;
    declared, the generic exact rule (its own backward, example by example) gives grad L_i."""

    x = jax.random.normal(key, (4, 2), jnp.float64)
    y = jax.random.normal(jax.random.fold_in(key, 1), (4, 3), jnp.float64)
    model = L.serial(L.Dense(3), Scale())
    _, params = model.init(key, (2,))
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) + 0.5, params)
    with pytest.raises(NotImplementedError, match=r"layer \[1\] .*examples_independent"):
        per_example_grads(model, losses.mse, params, x, y)

    model = L.serial(L.Dense(3), Declared())
    got = per_example_grads(model, losses.mse, params, x, y)
    one = jax.grad(lambda p, xi, yi: losses.mse.apply(model.apply(p, xi[None]), yi[None]))
    assert rel_error(got, jax.vmap(one, (None, 0, 0))(params, x, y)) <= RTOL


def test_wrong_label_shape_raises_as_backprop_does(key):
    model = L.mlp([3])
    _, params = model.init(key, (2,))
    with pytest.raises(ValueError):
        per_example_norms(model, losses.mse, params, jnp.ones((4, 2)), jnp.ones((4,)))


def test_internal_api_second_backward(dense_sequence, x64):
    """deltas_for from the loss's own dy_pred gives the recorded deltas."""
    model, loss, params, x, y, _ = dense_sequence
    rec = jax.jit(lambda p: record(model, loss, p, x, y))(params)
    again = deltas_for(model, params, rec, rec.dy_pred)
    assert rel_error(again, rec.deltas) <= RTOL
    with pytest.raises(ValueError, match="y_pred's shape"):
        deltas_for(model, params, rec, rec.dy_pred[:1])


def test_each_leafs_rules_against_jax_grad_on_each_example(x64):
    """The leaf rules the quantities share, leaf by leaf on one recording: Embedding's and
    Dense's own, and the generic rule for a layer with none (Declared: its own backward with dy
    kept at example i alone; LSTM's recompute_per_example rule is test_recurrent_cells'). Each
    against g_i / m, g_i = jax.grad of L_i on example i alone (the recorded deltas
    carry C's 1/m): per-example grads, sum_i w_i of them, their squared norms and the sums of
    their squares."""
    model = L.serial(L.Embedding(7, 4), Declared(), L.Dense(7))
    loss, m = losses.softmax_cross_entropy, 3
    params, x, y, _ = _problem(model, (4,), m, 7, ids=7)
    params = (params[0], {"s": jnp.float64(0.7)}, params[2])
    want = jax.tree.map(lambda g: g / m, _reference(model, loss, params, x, y))
    w = jnp.linspace(0.5, 2.0, m)

    @jax.jit  # one program for every leaf's rules
    def rules(params):
        rec = record(model, loss, params, x, y)
        out = {}
        for path, layer in rec.layers.items():
            args = (path, layer, rec.params[path], rec.inputs[path], rec.deltas[path])
            residuals = rec.residuals[path]
            out[path] = (
                leaf_per_example_grads(*args, residuals),
                leaf_weighted_grad(*args[:3], residuals, rec.deltas[path], w),
                leaf_sq_norms(*args, residuals),
                leaf_sum_grad_squared(*args, residuals),
            )
        return out

    got = rules(params)
    assert list(got) == [(0,), (1,), (2,)]
    for path, (per_example, weighted, sq_norms, squares) in got.items():
        g = params_at(want, path)
        assert rel_error(per_example, g) <= RTOL, path
        assert rel_error(weighted, jax.tree.map(lambda a: jnp.tensordot(w, a, 1), g)) <= RTOL
        assert rel_error(sq_norms, jnp.sum(_flat(g) ** 2, axis=1)) <= RTOL, path
        assert rel_error(squares, jax.tree.map(lambda a: jnp.sum(a * a, axis=0), g)) <= RTOL


def _result_shapes(stablehlo: str, op: str = "") -> set[str]:
    """The shapes the operations (named op, or every one) of a lowered program produce
    ("32x64x128"), its arguments left out: the type after "->", else the one after the last " : "
    of "%n = op ... : type"."""
    shapes = set()
    for line in stablehlo.splitlines():
        if not re.match(rf"\s*%\S+ = .*{op}", line) or " : " not in line:
            continue
        result = line.rsplit(" : ", 1)[1].split("->")[-1]
        shapes.update(re.findall(r"tensor<((?:\d+x)*\d+)x[a-z]", result))
    return shapes


def test_per_example_norms_of_dense_layers_form_no_gradient():
    """Dense's norms are ||x_i||^2 ||dy_i||^2: neither a per-example gradient (32, in, out) by any
    operation nor the batch's x^T dy (in, out) by a product is ever computed, in any order of
    their axes (the README: "no x^T dy is formed"; a transposed W, (out, in), is no gradient).
    The same search finds them in per_example_grads, so it can fail."""
    model = L.mlp([128, 10], "relu")
    _, params = model.init(jax.random.PRNGKey(0), (64,))
    x, y = jnp.ones((32, 64)), jnp.zeros((32,), jnp.int32)
    shapes = [(64, 128), (128, 10)]
    per_example = {"x".join(map(str, s)) for d in shapes for s in itertools.permutations((32, *d))}
    summed = {"x".join(map(str, s)) for d in shapes for s in itertools.permutations(d)}

    def made(quantity):
        ce = losses.softmax_cross_entropy
        text = jax.jit(lambda p: quantity(model, ce, p, x, y)).lower(params).as_text()
        return (_result_shapes(text) & per_example) | (_result_shapes(text, "dot_general") & summed)

    assert made(per_example_norms) == set()
    assert made(per_example_grads) >= {"32x64x128", "32x128x10"}
    assert made(backprop) & summed  # the plain gradient's x^T dy is found where it is formed
