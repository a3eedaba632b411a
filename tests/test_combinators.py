"""Residual, Parallel and nesting: rules against jax.vjp, paths, state, keys and mode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close, cast, rel_error

import jaxbp
from jaxbp import layers as L
from jaxbp.layers import eval_mode, init_state, train_mode
from jaxbp.walk import leaves

MODELS = {
    "residual": lambda: L.serial(
        L.Dense(6), L.Residual(L.serial(L.Dense(6), L.Tanh())), L.Dense(3)
    ),
    "nested residual": lambda: L.serial(
        L.Dense(6),
        L.Residual(L.serial(L.LayerNorm(), L.Residual(L.serial(L.Dense(6), L.Gelu())), L.Dense(6))),
        L.Dense(3),
    ),
    "parallel sum": lambda: L.serial(
        L.Parallel(L.Dense(5), L.serial(L.Dense(5), L.Tanh())), L.Dense(3)
    ),
    "parallel concat": lambda: L.serial(
        L.Parallel(L.serial(L.Dense(4), L.Relu()), L.Dense(2), L.Identity(), merge="concat"),
        L.Dense(3),
    ),
    "residual_mlp": lambda: L.residual_mlp(8, 2, 3),
    "branched_mlp": lambda: L.branched_mlp((6, 5), 3),
    "batchnorm in a residual": lambda: L.residual_mlp(8, 2, 3, norm="batch"),
    "dropout": lambda: L.mlp([8, 8, 3], "relu", dropout=0.3),
}
KEY = jax.random.PRNGKey(7)


def _setup(model, key, dtype, shape=(5,), batch=6):
    k1, k2, k3 = jax.random.split(key, 3)
    out_shape, params = model.init(k1, shape)
    # Off init, so a dropped bias, scale or skip term shows.
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: np.asarray(a) + 0.3 * rng.standard_normal(a.shape), params)
    x = 2 * jax.random.normal(k2, (batch, *shape), dtype)
    dy = jax.random.normal(k3, (batch, *out_shape), dtype)
    return cast(params, dtype), x, dy


@pytest.mark.parametrize("name", MODELS)
def test_backward_matches_jax_vjp_float64(name, key, x64):
    model = MODELS[name]()
    params, x, dy = _setup(model, key, jnp.float64)
    state = cast(init_state(model, params), jnp.float64)

    def forward(p, x):
        return L.forward_state(model, p, state, x, key=KEY)[0]

    y, vjp = jax.vjp(forward, params, x)
    ours_y, residuals, _ = jax.jit(lambda p, x: L.forward_state(model, p, state, x, key=KEY))(
        params, x
    )
    dparams, dx = jax.jit(model.backward)(params, residuals, dy)
    ref_dparams, ref_dx = vjp(dy)
    # 1e-12: the same formulas in float64; only the order of rounding differs.
    assert rel_error(ours_y, y) <= 1e-12
    assert_trees_close((dparams, dx), (ref_dparams, ref_dx), rtol=1e-12, what=name)


@pytest.mark.parametrize("name", MODELS)
def test_backprop_matches_autodiff_with_state_float64(name, key, x64):
    model = MODELS[name]()
    params, x, _ = _setup(model, key, jnp.float64)
    y = jnp.arange(6) % 3
    state = cast(init_state(model, params), jnp.float64)
    loss = jaxbp.softmax_cross_entropy
    run = jax.jit(lambda f, p: f(model, loss, p, x, y, key=KEY, state=state), static_argnums=0)
    value, grads, new_state = run(jaxbp.backprop, params)
    ref_value, ref_grads, ref_state = run(jaxbp.autodiff, params)
    assert rel_error(value, ref_value) <= 1e-12
    # Per leaf, relative to the whole gradient: a bias before BatchNorm has a gradient of exactly
    # zero, of which both sides compute only rounding noise (~1e-17).
    scale = float(jnp.linalg.norm(jnp.concatenate([g.ravel() for g in jax.tree.leaves(ref_grads)])))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        assert float(jnp.linalg.norm(a - b)) <= 1e-12 * scale
    assert_trees_close(new_state, ref_state, rtol=1e-12, what="state")


def test_residual_adds_the_skip_cotangent(key, x64):
    body = L.serial(L.Dense(4), L.Tanh())
    params, x, dy = _setup(L.Residual(body), key, jnp.float64, shape=(4,))
    _, r = L.Residual(body).forward(params, x)
    _, dx = L.Residual(body).backward(params, r, dy)
    _, body_dx = body.backward(params, body.forward(params, x)[1], dy)
    np.testing.assert_allclose(dx, dy + body_dx, rtol=1e-14)


def test_parallel_concat_splits_dy_and_sums_dx(key, x64):
    a, b = L.Dense(2), L.Dense(3)
    model = L.Parallel(a, b, merge="concat")
    params, x, dy = _setup(model, key, jnp.float64, shape=(4,))
    y, r = model.forward(params, x)
    assert y.shape == (6, 5)
    (da, db), dx = model.backward(params, r, dy)
    ra, rb = a.forward(params[0], x)[1], b.forward(params[1], x)[1]
    (ref_da, dxa), (ref_db, dxb) = (
        a.backward(params[0], ra, dy[:, :2]),
        b.backward(params[1], rb, dy[:, 2:]),
    )
    assert_trees_close((da, db, dx), (ref_da, ref_db, dxa + dxb), rtol=1e-14)


def test_dense_takes_any_leading_axes(key, x64):
    layer = L.Dense(3)
    out_shape, params = layer.init(key, (7, 4))
    assert out_shape == (7, 3)
    params, x, dy = _setup(layer, key, jnp.float64, shape=(7, 4))
    y, vjp = jax.vjp(layer.apply, params, x)
    assert_trees_close(layer.backward(params, layer.forward(params, x)[1], dy), vjp(dy), rtol=1e-12)


def test_signals_are_keyed_by_path_at_any_depth(key, x64):
    model = MODELS["nested residual"]()
    params, x, _ = _setup(model, key, jnp.float64)
    y = jnp.arange(6) % 3
    _, grads, signals = jaxbp.backprop_with_signals(
        model, jaxbp.softmax_cross_entropy, params, x, y
    )
    paths = [p for p, _ in leaves(model)]
    assert list(signals) == paths == [(0,), (1, 0), (1, 1, 0), (1, 1, 1), (1, 2), (2,)]
    # The textbook identity at every Dense layer, however deep: dW = input^T delta.
    for path in [(0,), (1, 1, 0), (1, 2), (2,)]:
        s, g = signals[path], jaxbp.signals.params_at(grads, path)
        np.testing.assert_allclose(g["W"], s.input.T @ s.delta, rtol=1e-12)
    stats = jaxbp.signal_stats(signals, grads)
    assert set(jaxbp.to_floats(stats)) == {
        "[0]",
        "[1][0]",
        "[1][1][0]",
        "[1][1][1]",
        "[1][2]",
        "[2]",
    }


def test_errors_name_the_layer_by_path(key):
    model = MODELS["nested residual"]()
    _, params = model.init(key, (5,))
    with pytest.raises(
        ValueError, match=r"^layer \[1\]\[1\]\[0\] Dense\(features=6\): params must be"
    ):
        bad = (
            params[0],
            (params[1][0], ({"W": params[1][1][0]["W"]}, ()), params[1][2]),
            params[2],
        )
        model.apply(bad, jnp.ones((2, 5)))
    with pytest.raises(
        ValueError, match=r"^layer \[0\] Dense\(features=6\): expects inputs .* \(2, 4\)"
    ):
        model.apply(params, jnp.ones((2, 4)))
    with pytest.raises(
        ValueError, match=r"^layer \[1\] serial of 3 layers needs a tuple of 3 params"
    ):
        model.apply((params[0], params[1][:2], params[2]), jnp.ones((2, 5)))
    with pytest.raises(ValueError, match=r"Residual: y = x \+ body\(x\) needs the body to keep"):
        L.serial(L.Residual(L.Dense(3))).init(key, (4,))
    with pytest.raises(
        ValueError, match=r"Parallel\(merge='sum'\) needs equal shapes.*\(2,\), \(3,\)"
    ):
        L.Parallel(L.Dense(2), L.Dense(3)).init(key, (4,))
    with pytest.raises(ValueError, match="merge must be 'sum' or 'concat'"):
        L.Parallel(L.Dense(2), merge="add")
    with pytest.raises(TypeError, match="is not a layer"):
        L.Residual("relu")


def test_dropout_keys_come_from_the_path(key):
    """Adding a branch or a layer after it leaves a dropout's mask where it was."""
    x = jnp.ones((4, 16))
    one = L.Parallel(L.Dropout(0.5))
    two = L.Parallel(L.Dropout(0.5), L.Identity())
    y1 = one.apply(((),), x, key=KEY)
    y2 = two.apply(((), ()), x, key=KEY) - x
    np.testing.assert_array_equal(y1, y2)
    longer = L.serial(L.Dropout(0.5), L.Identity(), L.Dropout(0.5))
    shorter = L.serial(L.Dropout(0.5))
    np.testing.assert_array_equal(
        longer.forward(((), (), ()), x, key=KEY)[1][0], shorter.forward(((),), x, key=KEY)[1][0]
    )
    with pytest.raises(
        ValueError, match=r"layer \[0\] Dropout\(rate=0.5, train=True\) in training needs a key"
    ):
        shorter.apply(((),), x)


def test_eval_mode_reaches_every_depth_and_train_mode_undoes_it():
    model = L.serial(
        L.Residual(L.serial(L.BatchNorm(), L.Dropout(0.1))), L.Parallel(L.Dropout(0.2))
    )
    modes = [layer.train for _, layer in leaves(eval_mode(model)) if hasattr(layer, "train")]
    assert modes == [False, False, False]
    assert train_mode(eval_mode(model)) == model


def test_eval_mode_batchnorm_reads_the_running_statistics(key, x64):
    model = L.serial(L.Dense(3), L.BatchNorm())
    params, x, _ = _setup(model, key, jnp.float64)
    state = cast(init_state(model, params), jnp.float64)
    _, _, trained = L.forward_state(model, params, state, x)
    h = x @ params[0]["W"] + params[0]["b"]
    np.testing.assert_allclose(trained[1]["mean"], 0.1 * h.mean(0), rtol=1e-12)
    y, _, same = L.forward_state(eval_mode(model), params, trained, x)
    assert_trees_close(same, trained, rtol=0, what="evaluation leaves the state")
    expected = (h - trained[1]["mean"]) / np.sqrt(trained[1]["var"] + 1e-5)
    expected = expected * params[1]["scale"] + params[1]["bias"]
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    with pytest.raises(TypeError, match=r"layer \[1\] BatchNorm.*forward_state"):
        eval_mode(model).apply(params, x)


def test_feedback_alignment_finds_dense_layers_inside_residual_blocks(key):
    model = L.residual_mlp(8, 2, 3)
    fa = jaxbp.feedback_alignment(model, (5,), key=key)
    assert list(fa.feedback) == [(0,), (1, 1), (1, 3), (2, 1), (2, 3), (3,)]
    dfa = jaxbp.direct_feedback_alignment(model, (5,), key=key)
    assert list(dfa.feedback) == [(1, 1), (1, 3), (2, 1), (2, 3), (3,)]
    _, params = model.init(key, (5,))
    x, y = jnp.ones((4, 5)), jnp.arange(4) % 3
    for engine in (fa, dfa):
        value, grads = jax.jit(lambda p, e=engine: e(model, jaxbp.softmax_cross_entropy, p, x, y))(
            params
        )
        assert jax.tree.structure(grads) == jax.tree.structure(params)
        assert np.isfinite(float(value))


def test_rules_by_path_replace_one_nested_layer(key, x64):
    model = MODELS["nested residual"]()
    params, x, _ = _setup(model, key, jnp.float64)
    y = jnp.arange(6) % 3

    def zero_rule(p, r, dy):
        return jax.tree.map(jnp.zeros_like, p), jnp.zeros_like(r)

    engine = jaxbp.engine_from_rules({(1, 1, 0): zero_rule})
    _, grads = engine(model, jaxbp.softmax_cross_entropy, params, x, y)
    _, true = jaxbp.backprop(model, jaxbp.softmax_cross_entropy, params, x, y)
    assert float(jnp.abs(grads[1][1][0]["W"]).max()) == 0
    # Inside a residual block, the skip still carries the delta past the zeroed layer.
    assert rel_error(grads[0], true[0]) > 1e-6 and float(jnp.abs(grads[0]["W"]).max()) > 0
    assert_trees_close(grads[2], true[2], rtol=1e-14, what="layers after the replaced one")
