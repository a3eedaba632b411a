"""Every loss's hand-written rule against jax.grad, extreme logits, and shape and label errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_trees_close

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
    ref_value, ref_grad = jax.value_and_grad(loss.apply)(y_pred, y)
    # Exact formulas on both sides in float64: only rounding order differs.
    assert_trees_close(value, ref_value, rtol=1e-14, what="value")
    assert_trees_close(loss.backward(residuals, g), g * ref_grad, rtol=1e-12, what="dy_pred")


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


def test_extreme_logits_float32_stay_finite():
    z = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [1e4, 1e4, 1e4]], jnp.float32)
    cases = [
        (losses.softmax_cross_entropy, jnp.array([1, 0, 2])),
        (losses.softmax_cross_entropy, jnp.full((3, 3), 1 / 3, jnp.float32)),
        (
            losses.binary_cross_entropy,
            jnp.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.5, 0.0]]),
        ),
        (losses.mse, jnp.zeros((3, 3))),
    ]
    for loss, y in cases:
        value, residuals = loss.forward(z, y)
        grad = loss.backward(residuals)
        assert jnp.isfinite(value) and jnp.all(jnp.isfinite(grad)), loss
        ref_value, ref_grad = jax.value_and_grad(loss.apply)(z, y)
        # float32 at |z| = 1e4: the value is ~1e4, so rtol 1e-6 is a few ulps.
        np.testing.assert_allclose(value, ref_value, rtol=1e-6)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-7)
    # A confidently wrong answer costs ~2e4 per example, not inf.
    assert float(losses.softmax_cross_entropy.apply(z[:1], jnp.array([1]))) == pytest.approx(2e4)


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
    with pytest.raises(ValueError, match=r"\(batch, classes\)"):
        losses.softmax_cross_entropy.apply(jnp.zeros(4), jnp.array([0, 1, 2, 1]))


def test_value_errors_for_targets_and_predictions():
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\]"):
        losses.binary_cross_entropy.apply(jnp.zeros((2, 1)), jnp.array([[0.0], [2.0]]))
    with pytest.raises(TypeError, match="floating-point"):
        losses.mse.apply(jnp.zeros((2, 1), jnp.int32), jnp.zeros((2, 1)))
    with pytest.raises(ValueError, match="unknown loss 'l2'.*mse"):
        losses.get("l2")
