"""backprop against the referee on random models, under jit and vmap, and to_custom_vjp."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import assert_trees_close, cast, np_forward, np_loss

import jaxbp
from jaxbp import layers as L
from jaxbp import losses

ACTIVATIONS = list(L.ACTIVATIONS)
LOSS_CASES = ["mse", "binary_cross_entropy", "softmax_cross_entropy"]


def _problem(depth, act, loss_name, key, dtype, batch=5):
    features = [4] * (depth - 1) + [3]
    model = L.mlp(features, act)
    k1, k2, k3 = jax.random.split(key, 3)
    _, params = model.init(k1, (6,))
    x = jax.random.normal(k2, (batch, 6), dtype)
    if loss_name == "mse":
        y = jax.random.normal(k3, (batch, 3), dtype)
    elif loss_name == "binary_cross_entropy":
        y = jax.random.bernoulli(k3, 0.5, (batch, 3)).astype(dtype)
    else:
        y = jax.random.randint(k3, (batch,), 0, 3)
    return model, losses.get(loss_name), cast(params, dtype), x, y


# Depth 1 to 4 for every activation and loss: the whole chain, not just one layer.
GRID = [
    (depth, act, loss)
    for (act, loss), depth in zip(
        itertools.product(ACTIVATIONS, LOSS_CASES), itertools.cycle([1, 2, 3, 4])
    )
]


@pytest.mark.parametrize("depth, act, loss_name", GRID)
def test_backprop_matches_jax_grad_float64_under_jit(depth, act, loss_name, key, x64):
    model, loss, params, x, y = _problem(depth, act, loss_name, key, jnp.float64)
    value, grads = jax.jit(lambda p: jaxbp.backprop(model, loss, p, x, y))(params)
    _, ref_grads = jaxbp.autodiff(model, loss, params, x, y)
    truth = np_loss(loss_name, np_forward(model, params, x), y)[0]  # NumPy/SciPy, float64
    # The cost: float64 ulps over up to 8 layers and the loss's sum; 1e-10 for the gradient over
    # a chain of up to 8 rules in float64 (each ~1e-15).
    assert abs(float(value) - truth) <= 1e-12 * abs(truth), (float(value), truth)
    assert_trees_close(grads, ref_grads, rtol=1e-10, what="grads")


@pytest.mark.parametrize("act", ["sigmoid", "relu", "gelu"])
def test_backprop_matches_jax_grad_float32_eager(act, key):
    model, loss, params, x, y = _problem(3, act, "softmax_cross_entropy", key, jnp.float32)
    value, grads = jaxbp.backprop(model, loss, params, x, y)
    ref_value, ref_grads = jaxbp.autodiff(model, loss, params, x, y)
    # float32: rounding in a different order; 1e-5 is ~100 ulps relative.
    assert_trees_close(grads, ref_grads, rtol=1e-5, what="float32 grads")
    assert grads[0]["W"].dtype == jnp.float32


# Every activation once, the losses and depths in turn: vmap of backprop over single examples.
PER_EXAMPLE = [
    (depth, act, loss)
    for act, loss, depth in zip(
        ACTIVATIONS, itertools.cycle(LOSS_CASES), itertools.cycle([3, 1, 2, 4])
    )
]


@pytest.mark.parametrize("depth, act, loss_name", PER_EXAMPLE)
def test_per_example_gradients_are_vmap_of_backprop(depth, act, loss_name, key, x64):
    """vmap of backprop on one example at a time against vmap of jax.grad (the referee), and
    their mean against backprop on the batch: float64, a chain of up to 8 rules, 1e-10."""
    model, loss, params, x, y = _problem(depth, act, loss_name, key, jnp.float64)

    def one(engine):
        return lambda xi, yi: engine(model, loss, params, xi[None], yi[None])

    (values, grads), (ref_values, ref_grads), (_, batch) = jax.jit(
        lambda: (
            jax.vmap(one(jaxbp.backprop))(x, y),
            jax.vmap(one(jaxbp.autodiff))(x, y),
            jaxbp.backprop(model, loss, params, x, y),
        )
    )()
    assert values.shape == (5,) and grads[0]["W"].shape == (5, *params[0]["W"].shape)
    assert_trees_close(values, ref_values, rtol=1e-12, what="per-example costs")
    assert_trees_close(grads, ref_grads, rtol=1e-10, what="per-example grads")
    # The batch gradient is the mean of the per-example ones (5 terms in float64).
    assert_trees_close(jax.tree.map(lambda g: g.mean(0), grads), batch, rtol=1e-12, what="mean")


def test_to_custom_vjp_runs_the_hand_written_rule(key):
    class Planted(L.Dense):
        def backward(self, params, x, dy):
            dparams, dx = super().backward(params, x, dy)
            return {"W": dparams["W"] + 1.0, "b": dparams["b"]}, dx

    layer = Planted(2)
    _, params = layer.init(key, (3,))
    x = jnp.ones((4, 3))
    f = jaxbp.to_custom_vjp(layer)
    # float32: x W + b with 3 terms per entry, a few ulps
    assert jnp.allclose(f(params, x), np_forward(layer, params, x), rtol=1e-6, atol=1e-6)
    got = jax.grad(lambda p: f(p, x).sum())(params)
    ref = jax.grad(lambda p: layer.apply(p, x).sum())(params)
    assert jnp.allclose(got["W"], ref["W"] + 1.0), "jax.grad must run the layer's own backward"
    assert jnp.allclose(got["b"], ref["b"])


def test_to_custom_vjp_in_an_optax_loop(key):
    model = L.mlp([8, 1], "tanh")
    _, params = model.init(key, (2,))
    f = jaxbp.to_custom_vjp(model)
    x = jax.random.normal(key, (32, 2))
    y = x[:, :1] * x[:, 1:]
    opt = optax.adam(0.05)

    @jax.jit
    def step(params, state):
        loss, g = jax.value_and_grad(lambda p: jnp.mean((f(p, x) - y) ** 2))(params)
        updates, state = opt.update(g, state)
        return optax.apply_updates(params, updates), state, loss

    state = opt.init(params)
    first = None
    for _ in range(100):
        params, state, loss = step(params, state)
        first = loss if first is None else first
    assert float(loss) < 0.5 * float(first)


def test_backprop_raises_before_work(key):
    model = L.mlp([3, 1], "relu")
    _, params = model.init(key, (2,))
    with pytest.raises(ValueError, match=r"\(4,\).*\(4, 1\)"):
        jax.jit(lambda p: jaxbp.backprop(model, losses.mse, p, jnp.ones((4, 2)), jnp.ones(4)))(
            params
        )
