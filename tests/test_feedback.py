"""Swappable backward rules: the hook against backprop, FA and DFA by definition, training."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_trees_close, rel_error

import jaxbp
from jaxbp import layers as L
from jaxbp import losses
from jaxbp.feedback import (
    alignment,
    angles,
    direct_feedback,
    direct_feedback_alignment,
    engine_from_rules,
    feedback_alignment,
    feedback_rule,
)

LOSS = losses.softmax_cross_entropy
# Raw PRNG keys, made without compiling anything.
KEY, OTHER_KEY = jnp.array([0, 42], jnp.uint32), jnp.array([0, 43], jnp.uint32)


def _problem(features=(8, 6, 3), inputs=4, seed=0):
    """A tanh MLP on logits, float64 params (biases too) and data drawn by numpy: eager
    jax.random would compile each small op on its own and dominate the tests' time."""
    rng = np.random.default_rng(seed)
    model = L.mlp(list(features), "tanh")
    _, shapes = jax.eval_shape(lambda: model.init(KEY, (inputs,)))
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) / 2), shapes)
    x = jnp.asarray(rng.normal(size=(16, inputs)))
    y = jnp.asarray(rng.integers(0, features[-1], size=16))
    return model, params, x, y


def _grads(engine, model, params, x, y):
    return jax.jit(lambda p: engine(model, LOSS, p, x, y))(params)


def test_feedback_rule_with_B_equal_W_is_backprop(x64):
    model, params, x, y = _problem()
    dense = [i for i, layer in enumerate(model.layers) if isinstance(layer, L.Dense)]
    rules = {i: feedback_rule(model.layers[i], params[i]["W"]) for i in dense}
    value, grads = _grads(engine_from_rules(rules), model, params, x, y)
    ref_value, ref_grads = _grads(jaxbp.backprop, model, params, x, y)
    # The same ops in the same order; 1e-12 leaves room for a different fusion only.
    assert_trees_close((value, grads), (ref_value, ref_grads), rtol=1e-12, what="B = W")


def _np_feedback_alignment(params, x, y, B):
    """FA on _problem's tanh MLP [Dense 0, Tanh 1, Dense 2, Tanh 3, Dense 4] by hand, in NumPy
    float64: (C, grads, {layer: delta at its output}). e = dC/dz_4 for the mean cross-entropy;
    below Dense k the delta is delta_k B_k^T (W_k^T in backprop), times tanh' = 1 - tanh^2 on
    the way through Tanh; dW_k = input_k^T delta_k, db_k = sum over the batch of delta_k."""
    W = {k: np.asarray(params[k]["W"]) for k in (0, 2, 4)}
    b = {k: np.asarray(params[k]["b"]) for k in (0, 2, 4)}
    x, y = np.asarray(x), np.asarray(y)
    a1 = np.tanh(x @ W[0] + b[0])
    a3 = np.tanh(a1 @ W[2] + b[2])
    z4 = a3 @ W[4] + b[4]
    log_p = z4 - z4.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    onehot = np.eye(z4.shape[1])[y]
    value = -np.sum(onehot * log_p) / len(y)
    deltas = {4: (np.exp(log_p) - onehot) / len(y)}
    deltas[3] = deltas[4] @ B[4].T
    deltas[2] = deltas[3] * (1 - a3**2)
    deltas[1] = deltas[2] @ B[2].T
    deltas[0] = deltas[1] * (1 - a1**2)
    inputs = {0: x, 2: a1, 4: a3}
    grads = tuple(
        {"W": inputs[k].T @ deltas[k], "b": deltas[k].sum(0)} if k in W else () for k in range(5)
    )
    return value, grads, deltas


def test_fa_sends_deltas_back_through_B_and_differs_only_below_the_top(x64):
    model, params, x, y = _problem()
    fa = feedback_alignment(model, params, key=KEY)
    value, grads, signals = jax.jit(lambda p: fa.with_signals(model, LOSS, p, x, y))(params)
    B = {k: np.asarray(fa.feedback[k]) for k in (0, 2, 4)}
    _, ref = _grads(jaxbp.backprop, model, params, x, y)
    assert_trees_close(grads[4], ref[4], rtol=1e-12, what="last Dense layer")
    assert rel_error(grads[2], ref[2]) > 0.1 and rel_error(grads[0], ref[0]) > 0.1
    # Against FA written out in NumPy: float64 products of a few terms in another order, ~1e-16
    # each; 1e-12 leaves room for the exp and log, while a W in place of a B moves them by > 0.1.
    np_value, np_grads, np_deltas = _np_feedback_alignment(params, x, y, B)
    assert float(value) == pytest.approx(np_value, rel=1e-12)
    assert_trees_close(grads, np_grads, rtol=1e-12, what="FA against NumPy")
    for k in range(5):  # the deltas the engine reports are the ones it sent back
        assert_trees_close(np.asarray(signals[k].delta), np_deltas[k], rtol=1e-12, what=f"{k}")
    # and the reference itself: with B = W, FA is backprop
    with_w = _np_feedback_alignment(params, x, y, {k: np.asarray(params[k]["W"]) for k in B})
    assert_trees_close(with_w[1], ref, rtol=1e-12, what="NumPy FA with B = W against backprop")


def test_fa_in_a_residual_block_replaces_the_dense_backward_and_keeps_the_skip(x64):
    """x -> h = Dense 0 -> h + Dense (1, 2)(tanh(Dense (1, 0)(h))) -> Dense 2, by hand in NumPy
    float64: FA sends each Dense's delta back through its B, and the skip adds the delta at the
    block's output to what the body sends back, untouched by any B."""
    model = L.residual_mlp(6, 1, 3, "tanh", norm=None)
    rng = np.random.default_rng(3)
    _, shapes = jax.eval_shape(lambda: model.init(KEY, (4,)))
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) / 2), shapes)
    x, y = jnp.asarray(rng.normal(size=(16, 4))), jnp.asarray(rng.integers(0, 3, size=16))
    fa = feedback_alignment(model, params, key=KEY)
    assert list(fa.feedback) == [(0,), (1, 0), (1, 2), (2,)]
    B = {k: np.asarray(v) for k, v in fa.feedback.items()}
    (d0, (d10, _, d12), d2), x_ = jax.tree.map(np.asarray, params), np.asarray(x)
    h = x_ @ d0["W"] + d0["b"]
    a = np.tanh(h @ d10["W"] + d10["b"])
    h2 = h + a @ d12["W"] + d12["b"]
    z = h2 @ d2["W"] + d2["b"]
    p = np.exp(z - z.max(1, keepdims=True))
    e = (p / p.sum(1, keepdims=True) - np.eye(3)[np.asarray(y)]) / len(y)
    dh2 = e @ B[(2,)].T  # the block's output
    du = (dh2 @ B[1, 2].T) * (1 - a**2)  # the body: through B_(1,2), then tanh'
    dh = dh2 + du @ B[1, 0].T  # the skip's dh2 plus the body's, through B_(1,0)
    dense = lambda inputs, delta: {"W": inputs.T @ delta, "b": delta.sum(0)}  # noqa: E731
    want = (dense(x_, dh), (dense(h, du), (), dense(a, dh2)), dense(h2, e))
    _, grads = _grads(fa, model, params, x, y)
    # float64 products of a few terms each, in another order: ~1e-16; a B lost or added on the
    # skip moves the first layers' gradients by far more than 1e-12.
    assert_trees_close(grads, want, rtol=1e-12, what="FA through a residual block")


def test_dfa_projects_the_output_error_to_every_hidden_layer(x64):
    model, params, x, y = _problem()
    dfa = direct_feedback_alignment(model, params, key=KEY)
    _, grads = _grads(dfa, model, params, x, y)
    _, ref = _grads(jaxbp.backprop, model, params, x, y)
    assert_trees_close(grads[4], ref[4], rtol=1e-12, what="output layer")
    assert rel_error(grads[2], ref[2]) > 0.1 and rel_error(grads[0], ref[0]) > 0.1
    # By hand, in numpy: e = dC/dlogits; dz_k = (e @ B) * tanh'(z_k); dW_k = input_k^T dz_k.
    params, x, B = jax.tree.map(np.asarray, (params, x, dfa.feedback))
    h1 = np.tanh(x @ params[0]["W"] + params[0]["b"])
    h3 = np.tanh(h1 @ params[2]["W"] + params[2]["b"])
    logits = h3 @ params[4]["W"] + params[4]["b"]
    p = np.exp(logits - logits.max(1, keepdims=True))
    e = (p / p.sum(1, keepdims=True) - np.eye(3)[np.asarray(y)]) / len(y)
    dz2 = (e @ B[4]) * (1 - h3**2)
    dz0 = (e @ B[2]) * (1 - h1**2)
    expected = ({"W": x.T @ dz0, "b": dz0.sum(0)}, (), {"W": h1.T @ dz2, "b": dz2.sum(0)})
    assert_trees_close(grads[:3], expected, rtol=1e-12, what="DFA by hand")


def test_dfa_with_one_hidden_layer_and_B_equal_W_out_transposed_is_backprop(x64):
    model, params, x, y = _problem(features=(6, 3))
    dfa = direct_feedback(model, {2: params[2]["W"].T})
    assert_trees_close(
        _grads(dfa, model, params, x, y), _grads(jaxbp.backprop, model, params, x, y), rtol=1e-12
    )


def test_matrices_are_fixed_by_the_key_and_scaled_like_W(x64):
    model, params, _, _ = _problem(features=(64, 48, 10))
    fa = feedback_alignment(model, (4,), key=KEY)
    assert_trees_close(fa.feedback, feedback_alignment(model, params, key=KEY).feedback, rtol=0)
    assert {k: B.shape for k, B in fa.feedback.items()} == {
        (0,): (4, 64),
        (2,): (64, 48),
        (4,): (48, 10),
    }
    other = feedback_alignment(model, (4,), key=OTHER_KEY).feedback
    assert rel_error(fa.feedback, other) > 0.5
    dfa = direct_feedback_alignment(model, (4,), key=KEY).feedback
    assert {k: B.shape for k, B in dfa.items()} == {(2,): (10, 64), (4,): (10, 48)}
    # Variance 1/fan: std 1/sqrt(64) for FA's B_2 (3072 draws), 1/sqrt(10) for DFA's (640).
    np.testing.assert_allclose(np.std(fa.feedback[2]) * 8, 1, rtol=0.05)
    np.testing.assert_allclose(np.std(dfa[2]) * np.sqrt(10), 1, rtol=0.1)


@pytest.mark.parametrize("build", [feedback_alignment, direct_feedback_alignment])
def test_engines_run_under_jit_in_float32_with_finite_grads(build):
    model, params, x, y = _problem()
    params, x = jax.tree.map(lambda a: a.astype(jnp.float32), (params, x))
    engine = build(model, (4,), key=KEY)
    value, grads = _grads(engine, model, params, x, y)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
    assert value.dtype == jnp.float32 and jnp.isfinite(value)


def test_alignment_is_0_for_the_truth_and_180_for_its_opposite(x64):
    model, params, x, y = _problem()
    _, grads = _grads(jaxbp.backprop, model, params, x, y)
    same = alignment(grads, grads)
    assert list(same) == ["[0]['W']", "[0]['b']", "[2]['W']", "[2]['b']", "[4]['W']", "[4]['b']"]
    assert all(abs(a) < 1e-6 for a in same.values())
    opposite = alignment(jax.tree.map(jnp.negative, grads), grads)
    assert all(abs(a - 180) < 1e-6 for a in opposite.values())
    json.dumps(same)


def test_angles_of_known_pairs():
    a = {"u": jnp.array([1.0, 0.0]), "v": jnp.array([1.0, 0.0]), "zero": jnp.zeros(2)}
    b = {"u": jnp.array([1.0, 1.0]), "v": jnp.array([0.0, -3.0]), "zero": jnp.ones(2)}
    result = alignment(a, b)
    assert result["['zero']"] is None  # no direction, no angle
    np.testing.assert_allclose([result["['u']"], result["['v']"]], [45, 90], rtol=1e-6)
    assert_trees_close(jax.jit(angles)(a, b)["u"], jnp.float32(45), rtol=1e-6)


def _separable_task(n=256, seed=1):
    # Two classes split by the line x0 + 2 x1 = 0; inputs standard normal.
    x = np.random.default_rng(seed).normal(size=(n, 2)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray((x[:, 0] + 2 * x[:, 1] > 0).astype(np.int32))


@pytest.mark.parametrize("build", [feedback_alignment, direct_feedback_alignment])
def test_engine_trains_a_small_mlp_well_above_chance(build):
    model, params, _, _ = _problem(features=(16, 2), inputs=2)
    params = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    engine = build(model, (2,), key=OTHER_KEY)
    (x, y), (x_test, y_test) = _separable_task(), _separable_task(seed=2)
    optimizer = optax.sgd(0.5)

    def step(carry, _):
        params, state = carry
        value, grads = engine(model, LOSS, params, x, y)
        updates, state = optimizer.update(grads, state)
        return (optax.apply_updates(params, updates), state), value

    @jax.jit  # all in one program: compiling op by op would take longer than training
    def train(params):
        (params, _), values = jax.lax.scan(step, (params, optimizer.init(params)), length=200)
        accuracy = jnp.mean(jnp.argmax(model.apply(params, x_test), -1) == y_test)
        ours, true = (g(model, LOSS, params, x, y)[1] for g in (engine, jaxbp.backprop))
        return accuracy, values, angles(ours, true)

    accuracy, values, angle = train(params)
    assert accuracy > 0.9, f"{engine!r}: test accuracy {accuracy:.2f} (chance is 0.5)"
    assert values[-1] < 0.5 * values[0]
    # What makes FA and DFA learn: the hidden layer's update ends within 90 degrees of the gradient.
    assert angle[0]["W"] < 90, angle


def test_bad_rules_and_models_are_refused():
    model, params, x, y = _problem()
    with pytest.raises(ValueError, match=r"rules for layers \[7\], but .* at \[0\], \[1\]"):
        engine_from_rules({7: feedback_rule(L.Dense(2), jnp.ones((2, 2)))})(
            model, LOSS, params, x, y
        )
    wrong = engine_from_rules({4: feedback_rule(model.layers[4], jnp.ones((3, 6)))})
    with pytest.raises(ValueError, match="shape"):
        wrong(model, LOSS, params, x, y)
    with pytest.raises(ValueError, match=r"two or more layers with a feedback rule \(Dense\)"):
        direct_feedback_alignment(L.mlp([3]), (4,), key=KEY)
    with pytest.raises(ValueError, match=r"no layer with a feedback rule \(Dense\)"):
        feedback_alignment(L.serial(L.Tanh()), (4,), key=KEY)
