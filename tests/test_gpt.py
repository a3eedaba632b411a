"""gpt, Tied, PositionEmbedding and char_rnn: the hand-written sweep against jax.grad in float64,
causality by Jacobian, shared-weight gradients, errors that name the path, and a short training run.

A tiny configuration throughout (vocab 7, context 6, 2 blocks of 8 features, 2 heads), one
compilation per (model, shape): the structure is what is tested, not the size.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_trees_close, rel_error

import jaxbp
from jaxbp import layers as L
from jaxbp import losses
from jaxbp.check import check_backprop, check_layer

V, CTX, C, H, BATCH, T = 7, 6, 8, 2, 3, 5
TINY = dict(num_layers=2, features=C, num_heads=H)
CE = losses.softmax_cross_entropy
KEY = jax.random.PRNGKey(0)
# Compiling is most of these tests' time and the programs run once: skip LLVM's optimisations,
# as jaxbp.check does.
FAST = {"xla_backend_optimization_level": 0}


def _gpt(tie=False, recompute=False):
    return L.gpt(V, CTX, tie_weights=tie, recompute=recompute, **TINY)


def _data(T=T, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (BATCH, T)), rng.integers(0, V, (BATCH, T))


def _params(model, dtype, input_shape=(T,)):
    """Params of the model's shapes drawn in NumPy (no eager JAX op to compile): LayerNorm
    scales 1 + N(0, 0.5^2), every other leaf N(0, 0.5^2), so no bias is zero and no factor 1."""
    shapes = jax.eval_shape(lambda k: model.init(k, input_shape)[1], KEY)
    rng = np.random.default_rng(1)

    def draw(path, leaf):
        one = float(jax.tree_util.keystr(path).endswith("['scale']"))
        return (one + 0.5 * rng.normal(size=leaf.shape)).astype(dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.cache
def _both(model):
    """(backprop, autodiff) of the cross-entropy, jitted together: one compilation per model."""

    def both(p, x, y):
        return jaxbp.backprop(model, CE, p, x, y), jaxbp.autodiff(model, CE, p, x, y)

    return jax.jit(both, compiler_options=FAST)


# ---------------------------------------------------------------------------------------------
# The hand-written sweep against jax.grad


@pytest.mark.parametrize(
    "tie, recompute", [(False, False), (True, True)], ids=["gpt-saved-p", "tied-gpt-recompute"]
)
def test_gpt_backprop_matches_autodiff_and_passes_check(tie, recompute):
    # check_backprop's vjp column is ||backprop - ref|| / ||ref|| leaf by leaf, ref = jax.vjp of
    # loss.apply(model.apply(params, x), y), the function jaxbp.autodiff differentiates; and the
    # report fails unless the two values agree. One compilation covers both, with fd and dot.
    model = _gpt(tie, recompute)
    report = check_backprop(model, CE, _params(model, np.float64), *_data(), directions=1)
    assert report.ok, str(report)
    # 1e-12: the same formulas in float64 in another order, ~1e-15 per operation over ~40 layers.
    assert all(row.errors["vjp"] <= 1e-12 for row in report.rows), str(report)
    names = [row.name for row in report.rows]
    assert names[0] == "[0] Embedding(num_embeddings=7, features=8) ['table']"
    head = "[7] Dense(features=7) "
    assert names[-1] == head + "['b']" and (head + "['W']" in names) == (not tie)
    assert len(names) == 30 - tie  # 2 tables, 2 x (6 + 6) in the blocks, LayerNorm 2, head 2


def test_tied_table_starts_at_the_heads_dense_scale():
    tied, untied = _gpt(tie=True), _gpt()
    table = tied.init(KEY, (T,))[1][0]["table"]
    rows = untied.init(KEY, (T,))[1][0]["table"]  # the same N(0, 1) draw, unscaled
    # The library rounds to float32 once or twice (a division, or a product by 1 / sqrt(C)):
    # <= 1.5 ulp, 1.8e-7 relative; the reference here is divided in float64.
    np.testing.assert_allclose(table, np.asarray(rows) / np.sqrt(C), rtol=3e-7)
    # So the tied head's logits start near unit scale, as an untied Dense's do. Unscaled rows
    # gave std ~sqrt(128) ~ 11 or more here; 128 features x 16 x 28 logits make the bound safe.
    model = L.gpt(28, 16, num_layers=1, features=128, tie_weights=True)
    logits = model.apply(model.init(KEY, (16,))[1], jnp.arange(16)[None] % 28)
    assert 0.5 < float(jnp.std(logits)) < 2.0


def test_tied_params_hold_the_table_once_and_its_gradient_is_the_sum(x64):
    tied, untied = _gpt(tie=True), _gpt()
    shapes = [jax.eval_shape(lambda k, m=m: m.init(k, (T,))[1], KEY) for m in (tied, untied)]
    assert shapes[0][-1].keys() == {"b"} and shapes[0][0]["table"].shape == (V, C)
    sizes = [sum(a.size for a in jax.tree.leaves(tree)) for tree in shapes]
    assert sizes[1] - sizes[0] == V * C  # one (vocab, C) matrix fewer
    # A small tied model and its untied twin at W = table^T compute the same function: the tied
    # table's gradient is the sum of the twin's two, the head's transposed.
    body = L.serial(L.Embedding(V, C), L.Tanh(), L.Dense(V))
    tied = L.Tied(body, 0, 2)
    params = _params(tied, np.float64)
    untied_params = (*params[:-1], {**params[-1], "W": params[0]["table"].T})
    ids, y = _data()
    (_, g_tied), (_, g_ref) = _both(tied)(params, ids, y)
    (_, g_untied), _ = _both(body)(untied_params, ids, y)
    summed = g_untied[0]["table"] + g_untied[-1]["W"].T
    assert_trees_close(g_tied, g_ref, rtol=1e-12, what="tied grads")  # float64 rounding, as above
    assert rel_error(g_tied[0]["table"], summed) <= 1e-12
    assert rel_error(g_untied[0]["table"], summed) > 0.1  # the head's share is no rounding error


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_char_rnn_backprop_matches_autodiff_float64(cell, x64):
    model = L.char_rnn(V, cell=cell, embed=4, hidden=5)
    params, (ids, y) = _params(model, np.float64), _data()
    (value, grads), (value_ref, grads_ref) = _both(model)(params, ids, y)
    assert abs(value - value_ref) <= 1e-12 * abs(value_ref)
    assert_trees_close(grads, grads_ref, rtol=1e-12, what="grads")  # as for gpt: float64 rounding
    assert [type(layer).__name__ for layer in model.layers] == [
        "Embedding", {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[cell], "Dense"]  # fmt: skip


def test_position_embedding_rule_and_check():
    layer = L.PositionEmbedding(CTX, C)
    report = check_layer(layer, (4, C))  # T = 4 < context: rows 4 and 5 get no gradient
    assert report.ok and [r.name for r in report.rows] == ["['table']", "x"], str(report)
    params = {"table": np.arange(CTX * C, dtype=np.float32).reshape(CTX, C)}
    dy = np.ones((BATCH, 4, C), np.float32)
    dparams, dx = layer.backward(params, (), dy)
    np.testing.assert_array_equal(dparams["table"][:4], BATCH)  # summed over the batch
    assert not np.asarray(dparams["table"][4:]).any() and dx is dy


# ---------------------------------------------------------------------------------------------
# Causality: no path from a later position to an earlier logit


def _future_blocks(J):
    """J: (1, T, V, 1, T, C), d logits[t] / d e[t']: the norms of the blocks t' > t and t' <= t."""
    norms = np.sqrt(np.sum(np.asarray(J[0, :, :, 0]) ** 2, axis=(1, 3)))  # (T, T')
    return norms[np.triu_indices(T, k=1)], norms[np.tril_indices(T)]


@pytest.mark.parametrize("recompute", [False, True])
def test_logits_ignore_later_positions_by_jacobian(recompute, x64):
    model = _gpt(recompute=recompute)
    params = _params(model, np.float64)
    rest, rest_params = L.serial(*model.layers[1:]), params[1:]  # embeddings -> logits
    e = jnp.asarray(np.random.default_rng(2).normal(size=(1, T, C)))

    @functools.partial(jax.jit, compiler_options=FAST)
    def jacobians(e):
        J_autodiff = jax.jacobian(lambda e: rest.apply(rest_params, e))(e)
        residuals = rest.forward(rest_params, e)[1]  # the hand rule, one-hot cotangent by one
        basis = jnp.eye(T * V, dtype=e.dtype).reshape(-1, 1, T, V)
        J = jax.vmap(lambda dy: rest.backward(rest_params, residuals, dy)[1])(basis)
        return J_autodiff, J.reshape(1, T, V, 1, T, C)

    J_autodiff, J = jacobians(e)
    assert rel_error(J, J_autodiff) <= 1e-12
    for jac in (J_autodiff, J):
        future, past = _future_blocks(jac)
        assert not future.any()  # exactly zero: the mask leaves no path, not merely a small one
        assert past.min() > 1e-3  # and the test can fail: every earlier position does reach


# ---------------------------------------------------------------------------------------------
# Errors, before any work


@pytest.mark.parametrize("tie", [False, True], ids=["gpt", "tied-gpt"])
def test_bad_inputs_name_the_layer_path(tie):
    model = _gpt(tie)
    params = _params(model, np.float32)
    ids, _ = _data(T=CTX + 2)
    longer = r"T = 8 positions is longer than the context of 6"
    with pytest.raises(ValueError, match=r"layer \[1\] PositionEmbedding\(context=6.*" + longer):
        jax.eval_shape(model.apply, params, ids)
    with pytest.raises(TypeError, match=r"layer \[0\] Embedding.*ids must be integers.*float32"):
        jax.eval_shape(model.apply, params, jnp.zeros((BATCH, T), jnp.float32))


def test_gpt_and_char_rnn_refuse_bad_arguments():
    with pytest.raises(ValueError, match="features = 9 do not split into num_heads = 2"):
        L.gpt(V, CTX, features=9, num_heads=2)
    for name in ("vocab_size", "context", "num_layers", "features", "num_heads", "mlp_ratio"):
        args = dict(vocab_size=V, context=CTX, **TINY) | {name: 0}
        with pytest.raises(ValueError, match=f"gpt: {name} must be positive, got 0"):
            L.gpt(**args)
    with pytest.raises(TypeError, match="gpt: context must be an int, got 6.0"):
        L.gpt(V, 6.0)
    with pytest.raises(TypeError, match="tie_weights must be a bool"):
        L.gpt(V, CTX, tie_weights=1)
    with pytest.raises(ValueError, match="cell must be one of lstm, gru, rnn, got 'elman'"):
        L.char_rnn(V, cell="elman")
    with pytest.raises(ValueError, match="char_rnn: hidden must be positive"):
        L.char_rnn(V, hidden=-1)


def test_tied_refuses_wrong_layers_shapes_and_params():
    body = L.serial(L.Embedding(V, C), L.Dense(V))
    with pytest.raises(TypeError, match=r"source \[1\] must name an Embedding.*Dense\(features"):
        L.Tied(body, 1, 1)
    with pytest.raises(TypeError, match=r"target \[2\] must name a Dense of the body, found no "
                       r"layer; layers at \[0\], \[1\]"):  # fmt: skip
        L.Tied(body, 0, 2)
    with pytest.raises(ValueError, match=r"head's features to equal the vocabulary.*7 rows.*5 out"):
        L.Tied(L.serial(L.Embedding(V, C), L.Dense(5)), 0, 1)
    narrow = L.Tied(L.serial(L.Embedding(V, C), L.Dense(4), L.Dense(V)), 0, 2)
    with pytest.raises(ValueError, match=r"reads 4 \(its W is \(4, 7\), the table \(7, 8\)\)"):
        jax.eval_shape(lambda k: narrow.init(k, (T,)), KEY)
    tied = L.Tied(body, 0, 1)
    params = _params(tied, np.float32)
    untied = (params[0], {**params[1], "W": params[0]["table"].T})
    with pytest.raises(ValueError, match=r"params at \[1\] must be \{'b': \(vocab,\)\} alone.*'W'"):
        tied.apply(untied, jnp.zeros((BATCH, T), jnp.int32))
    nested = L.serial(tied, L.Tanh())  # the error names the Tied's own path
    with pytest.raises(ValueError, match=r"layer \[0\] Tied: params have no entry at \[0\]\[1\]"):
        nested.apply(((params[0],), ()), jnp.zeros((BATCH, T), jnp.int32))


def test_tied_keeps_paths_for_signals_modes_and_rules():
    dropout = L.Tied(L.serial(L.Embedding(V, C), L.Dropout(0.5), L.Dense(V)), 0, 2)
    evaluated = L.eval_mode(dropout)  # rebuilt through with_sublayers, still tied
    assert isinstance(evaluated, L.Tied) and evaluated.body.layers[1].train is False
    tied, untied = _gpt(tie=True), _gpt()
    ids, y = _data()
    seen = []

    def head_rule(p, r, dy):  # a replacement rule by path sees the whole head, W included
        seen.append(p["W"].shape)
        return L.Dense.backward(L.Dense(V), p, r, dy)

    def signal_paths(model):
        def run(params):
            rules = lambda e: {7: head_rule}  # noqa: E731
            return jaxbp.backprop_with_signals(model, CE, params, ids, y, rules=rules)[2]

        params = jax.eval_shape(lambda k: model.init(k, (T,))[1], KEY)
        return list(jax.eval_shape(run, params))  # shapes only: nothing compiles

    paths = signal_paths(tied)
    assert paths == signal_paths(untied) and paths[0] == (0,) and paths[-1] == (7,)
    assert (2, 1) in paths and seen == [(C, V), (C, V)]


# ---------------------------------------------------------------------------------------------
# float32: extreme values and a training run


def test_extreme_float32_table_values_stay_finite():
    model = _gpt(tie=True)  # the head reads the same huge table: logits ~ 1e4 sqrt(C)
    params = _params(model, np.float32)
    params = ({"table": 2e4 * params[0]["table"]}, *params[1:])  # entries ~ 1e4
    ids, y = _data()
    value, grads = jax.jit(lambda p: jaxbp.backprop(model, CE, p, ids, y), compiler_options=FAST)(
        params
    )
    assert np.isfinite(value) and value > 100  # the logits are this large: a loss of ~1e4
    assert all(np.isfinite(a).all() for a in jax.tree.leaves(grads))


def test_fit_on_random_ids_decreases_the_loss():
    model = L.gpt(V, CTX, num_layers=1, features=C, num_heads=H, tie_weights=True)
    params = jax.jit(lambda k: model.init(k, (CTX,))[1], compiler_options=FAST)(KEY)  # real init
    rng = np.random.default_rng(3)
    x = rng.integers(0, V, (32, CTX))
    y = (3 * x + 1) % V  # a function of the token at each position: learnable in a few steps
    _, history = jaxbp.train.fit(
        model, CE, params, (x, y), optimizer=optax.adam(1e-2), epochs=4, batch_size=8,
        key=jax.random.PRNGKey(0), progress=False,
    )  # fmt: skip
    losses_ = history["loss"]
    assert np.isfinite(losses_).all() and losses_[-1] < 0.9 * losses_[0], losses_
