"""Every loss's hand-written rule against jax.grad, extreme logits, and shape and label errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_trees_close, np_loss

from jaxbp import losses


def _targets(name, key, shape, dtype):
    if name == "mse":
        return jax.random.normal(key, shape, dtype)
    if name == "binary_cross_entropy":
        return jax.random.uniform(key, shape, dtype)
    if name == "softmax_cross_entropy/labels":
        return jax.random.randint(key, shape[:1], 0, shape[1])
    return jax.nn.softmax(jax.random.normal(key, shape, dtype))  # probability rows


CASES = [
    "mse",
    "binary_cross_entropy",
    "softmax_cross_entropy/labels",
    "softmax_cross_entropy/rows",
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("g", [1.0, -2.5])
def test_backward_matches_jax_grad_float64(case, g, key, x64):
    loss = losses.get(case.split("/")[0])
    k1, k2 = jax.random.split(key)
    y_pred = 3 * jax.random.normal(k1, (7, 4), jnp.float64)
    y = _targets(case, k2, (7, 4), jnp.float64)
    value, residuals = loss.forward(y_pred, y)
    ref_grad = jax.grad(loss.apply)(y_pred, y)
    truth, truth_grad = np_loss(case.split("/")[0], y_pred, y)
    # Exact formulas on every side in float64: only rounding order (and SciPy's own exp/log)
    # differ, ~1e-16 per operation over the 28 terms of a (7, 4) batch.
    assert abs(float(value) - truth) <= 1e-13 * abs(truth), (float(value), truth)
    assert_trees_close(loss.backward(residuals, g), g * ref_grad, rtol=1e-12, what="dy_pred")
    assert_trees_close(
        loss.backward(residuals, g), jnp.asarray(g * truth_grad), rtol=1e-12, what="vs NumPy"
    )


def test_mse_is_the_seeds_cost():
    y_pred = jnp.array([[0.25], [0.5], [1.0]])
    y = jnp.array([[0.0], [1.0], [1.0]])
    # C = 1/m sum 1/2 (y - y')^2 = (0.0625 + 0.25 + 0) / 2 / 3
    assert float(losses.mse.apply(y_pred, y)) == pytest.approx(0.3125 / 6, rel=1e-7)
    _, residuals = losses.mse.forward(y_pred, y)
    np.testing.assert_allclose(losses.mse.backward(residuals), (y_pred - y) / 3, rtol=1e-7)


def test_cross_entropies_match_optax():
    z = jnp.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    labels = jnp.array([2, 1])
    expected = optax.softmax_cross_entropy_with_integer_labels(z, labels).mean()
    np.testing.assert_allclose(losses.softmax_cross_entropy.apply(z, labels), expected, rtol=1e-6)
    t = jnp.array([[1.0, 0.0, 0.3], [0.0, 1.0, 0.5]])
    expected = optax.sigmoid_binary_cross_entropy(z, t).sum(-1).mean()
    np.testing.assert_allclose(losses.binary_cross_entropy.apply(z, t), expected, rtol=1e-6)


EPS32 = float(np.finfo(np.float32).eps)
# Logits at every scale the README names, with ties, both signs and a confidently wrong row.
PATTERN = np.array([[1.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [-1.0, -1.0, 0.5]])
OPTAX = {  # (loss, targets, optax's per-example loss on (logits, targets))
    "labels": (losses.softmax_cross_entropy, np.array([1, 0, 2, 2]),
               optax.softmax_cross_entropy_with_integer_labels),
    "probability rows": (losses.softmax_cross_entropy,
                         np.array([[1 / 3] * 3, [0.0, 0.5, 0.5], [1, 0, 0], [0.2, 0.3, 0.5]]),
                         optax.softmax_cross_entropy),
    "binary": (losses.binary_cross_entropy,
               np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.5, 0.0], [0.3, 1.0, 0.0]]),
               lambda z, t: optax.sigmoid_binary_cross_entropy(z, t).sum(-1)),
}  # fmt: skip


@pytest.mark.parametrize("scale", [30.0, 1e3, 1e4])
@pytest.mark.parametrize("case", OPTAX)
def test_extreme_logits_float32_match_optax_and_the_float64_truth(case, scale):
    loss, y, per_example = OPTAX[case]
    z = jnp.asarray(scale * PATTERN, jnp.float32)
    y = jnp.asarray(y, jnp.float32 if y.dtype.kind == "f" else jnp.int32)
    value, residuals = loss.forward(z, y)
    grad = loss.backward(residuals)
    by_optax = jax.value_and_grad(lambda z: per_example(z, y).mean())(z)
    truth, truth_grad = np_loss(repr(loss), z, y)
    # float32: each per-example loss is a few roundings of terms up to k |z| (logsumexp, z y),
    # so it is good to ~k ulps of the scale; each gradient entry is (p - y) / m with p in
    # [0, 1] good to a few ulps, so it is good to ~4 eps / m absolutely.
    value_tol = 8 * EPS32 * PATTERN.shape[1] * (scale + 1)
    grad_tol = 4 * EPS32 / len(PATTERN)
    for who, (v, g) in {"jaxbp": (value, grad), "optax": by_optax}.items():
        assert np.isfinite(v) and np.all(np.isfinite(g)), (who, v, g)
        assert abs(float(v) - truth) <= value_tol, (who, float(v), truth)
        np.testing.assert_allclose(g, truth_grad, rtol=0, atol=grad_tol, err_msg=who)
    assert abs(float(value) - float(by_optax[0])) <= 2 * value_tol
    np.testing.assert_allclose(grad, by_optax[1], rtol=0, atol=2 * grad_tol)


def test_extreme_mse_float32_stays_finite():
    z = jnp.asarray(1e4 * PATTERN, jnp.float32)
    value, residuals = losses.mse.forward(z, jnp.zeros_like(z))
    truth, truth_grad = np_loss("mse", z, np.zeros(z.shape))
    # A sum of 12 squares up to 1e8, each rounded once: a few ulps of the total.
    assert abs(float(value) - truth) <= 8 * EPS32 * truth
    np.testing.assert_allclose(losses.mse.backward(residuals), truth_grad, rtol=2 * EPS32)


def test_a_confidently_wrong_answer_costs_its_margin_not_inf():
    z = jnp.asarray([[1e4, -1e4, 0.0]], jnp.float32)
    # -log p_1 = logsumexp(z) - z_1 = 1e4 + log(1 + e^-1e4 + e^-2e4) + 1e4 = 2e4 in float32
    assert float(losses.softmax_cross_entropy.apply(z, jnp.array([1]))) == 2e4


@pytest.mark.parametrize("loss", [losses.mse, losses.binary_cross_entropy])
def test_column_against_vector_is_refused(loss):
    with pytest.raises(ValueError, match=r"\(4,\).*\(4, 1\).*must match"):
        loss.apply(jnp.zeros((4, 1)), jnp.zeros(4))
    with pytest.raises(ValueError, match="must match"):
        jax.jit(loss.apply)(jnp.zeros((4,)), jnp.zeros((4, 1)))  # at trace time


def test_softmax_cross_entropy_label_kinds():
    z = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match="class labels must be integers"):
        losses.softmax_cross_entropy.apply(z, jnp.array([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match=r"integer labels must have shape \(4,\)"):
        losses.softmax_cross_entropy.apply(z, jnp.zeros((4, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\].*\[0, 3\]"):
        losses.softmax_cross_entropy.apply(z, jnp.array([0, 1, 2, 3]))
    with pytest.raises(TypeError, match="integers or float"):
        losses.softmax_cross_entropy.apply(z, jnp.array([True, False, True, True]))
    with pytest.raises(ValueError, match=r"\(batch, \.\.\., classes\)"):
        losses.softmax_cross_entropy.apply(jnp.zeros(4), jnp.array([0, 1, 2, 1]))


def test_value_errors_for_targets_and_predictions():
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\]"):
        losses.binary_cross_entropy.apply(jnp.zeros((2, 1)), jnp.array([[0.0], [2.0]]))
    with pytest.raises(TypeError, match="floating-point"):
        losses.mse.apply(jnp.zeros((2, 1), jnp.int32), jnp.zeros((2, 1)))
    with pytest.raises(ValueError, match="unknown loss 'l2'.*mse"):
        losses.get("l2")


def test_softmax_cross_entropy_over_positions_matches_optax_float64(x64):
    """Logits (batch, T, k), labels (batch, T): C is the mean over every position."""
    z = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 7), jnp.float64)
    labels = jax.random.randint(jax.random.PRNGKey(1), (3, 5), 0, 7)
    rows = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(2), (3, 5, 7), jnp.float64))
    for y, reference in (
        (labels, optax.softmax_cross_entropy_with_integer_labels),
        (rows, optax.softmax_cross_entropy),
    ):
        value, residuals = losses.softmax_cross_entropy.forward(z, y)
        ref_value, ref_grad = jax.value_and_grad(lambda z, y=y, f=reference: f(z, y).mean())(z)
        # 1e-12: the same float64 formulas, summed in another order.
        assert abs(float(value) - float(ref_value)) <= 1e-12 * abs(float(ref_value))
        np.testing.assert_allclose(
            losses.softmax_cross_entropy.backward(residuals), ref_grad, rtol=1e-12, atol=1e-15
        )
    with pytest.raises(ValueError, match=r"integer labels must have shape \(3, 5\)"):
        losses.softmax_cross_entropy.apply(z, labels[:, :4])
