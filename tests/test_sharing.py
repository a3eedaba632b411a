"""Weight sharing decided, not guessed: per-leaf norms add up only where each leaf owns its params.

A combinator declares params_disjoint; an undeclared one is treated as sharing (the exact route,
per-example gradients assembled into the params tree), and a declaration that the arrays the
leaves read contradict raises instead of giving a wrong clip norm.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import rel_error
from jax.flatten_util import ravel_pytree

import jaxbp
from jaxbp import layers as L
from jaxbp import losses
from jaxbp.walk import disjoint, sweep_backward, sweep_forward

CE = losses.softmax_cross_entropy
C = 1.0  # a clip norm for the refusals, which raise before any norm is taken
# float64: the exact route and jax.grad compute the same sums in another order (~1e-15).
RTOL = 1e-12


def _twice(tree):
    return jax.tree.map(lambda a: 2 * a, tree)


@dataclasses.dataclass(frozen=True)
class Doubled(L.CombinatorBase):
    """A user's reparametrisation: the body reads 2 p, so the body's own gradient is doubled
    on its way back (dC/dp = 2 dC/dp'). It does not declare params_disjoint."""

    body: object
    examples_independent = True  # row by row, as the body

    def sublayers(self):
        return (((), self.body),)

    def with_sublayers(self, layers):
        return type(self)(*layers)

    def init(self, key, shape):
        return self.body.init(key, shape)

    def walk_forward(self, params, state, x, key, path, sweep):
        return sweep_forward(self.body, _twice(params), state, x, key, path, sweep)

    def walk_backward(self, params, residuals, dy, path, sweep):
        grads, dx = sweep_backward(self.body, _twice(params), residuals, dy, path, sweep)
        return _twice(grads), dx


@dataclasses.dataclass(frozen=True)
class DoubledClaimingDisjoint(Doubled):
    params_disjoint = True  # a false claim: the body reads 2 p, not p


@dataclasses.dataclass(frozen=True)
class Gain(L.CombinatorBase):
    """y = g * body(x) with a gain g of its own: params (g, body's), the body at step (1,)."""

    body: object
    examples_independent = True  # one gain for every row

    def sublayers(self):
        return (((1,), self.body),)

    def with_sublayers(self, layers):
        return type(self)(*layers)

    def init(self, key, shape):
        shape, p = self.body.init(key, shape)
        return shape, (jnp.asarray(1.5), p)

    def walk_forward(self, params, state, x, key, path, sweep):
        y, r, s = sweep_forward(self.body, params[1], state, x, key, path + (1,), sweep)
        return params[0] * y, (y, r), s

    def walk_backward(self, params, residuals, dy, path, sweep):
        y, r = residuals
        grads, dx = sweep_backward(self.body, params[1], r, params[0] * dy, path + (1,), sweep)
        return (jnp.sum(dy * y), grads), dx


@dataclasses.dataclass(frozen=True)
class GainClaimingDisjoint(Gain):
    params_disjoint = True  # a false claim: g is read by no leaf


@dataclasses.dataclass(frozen=True)
class InputGain(Gain):
    """y = body(g * x): g's gradient reads the body's own dx, sum(x * dx_body)."""

    def walk_forward(self, params, state, x, key, path, sweep):
        y, r, s = sweep_forward(self.body, params[1], state, params[0] * x, key, path + (1,), sweep)
        return y, (x, r), s

    def walk_backward(self, params, residuals, dy, path, sweep):
        x, r = residuals
        grads, dx = sweep_backward(self.body, params[1], r, dy, path + (1,), sweep)
        return (jnp.sum(x * dx), grads), params[0] * dx


@dataclasses.dataclass(frozen=True)
class Normalised(Doubled):
    """y = body(x) / ||W||, W the body's: the combinator reads its child's params besides it, and
    adds a term to their gradient. Claims params_disjoint, which the arrays contradict."""

    params_disjoint = True

    def walk_forward(self, params, state, x, key, path, sweep):
        y, r, s = sweep_forward(self.body, params, state, x, key, path, sweep)
        n = jnp.linalg.norm(params["W"])
        return y / n, (y, n, r), s

    def walk_backward(self, params, residuals, dy, path, sweep):
        y, n, r = residuals
        grads, dx = sweep_backward(self.body, params, r, dy / n, path, sweep)
        extra = -jnp.sum(dy * y) / n**3 * params["W"]  # d(1/||W||)/dW = -W / ||W||^3
        return {**grads, "W": grads["W"] + extra}, dx


@dataclasses.dataclass(frozen=True)
class Twice(Doubled):
    """y = body(body(x)): one leaf applied twice, so one path would name two applications."""

    def walk_forward(self, params, state, x, key, path, sweep):
        h, r1, _ = sweep_forward(self.body, params, None, x, key, path, sweep)
        y, r2, _ = sweep_forward(self.body, params, None, h, key, path, sweep)
        return y, (r1, r2), state

    def walk_backward(self, params, residuals, dy, path, sweep):
        g2, dh = sweep_backward(self.body, params, residuals[1], dy, path, sweep)
        g1, dx = sweep_backward(self.body, params, residuals[0], dh, path, sweep)
        return jax.tree.map(jnp.add, g1, g2), dx


def _problem(model):
    rng = np.random.default_rng(0)
    _, params = model.init(jax.random.PRNGKey(0), (4,))
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    x, y = jnp.asarray(rng.normal(size=(6, 4))), jnp.asarray(rng.integers(0, 3, size=6))
    return params, x, y


def _reference(model, params, x, y):
    """g_i = grad L_i by jax.grad on example i alone: the tree, and its norms (batch,)."""

    def one(xi, yi):
        return jax.grad(lambda p: CE.apply(model.apply(p, xi[None]), yi[None]))(params)

    g = jax.vmap(one)(x, y)
    flat = jnp.concatenate([a.reshape(len(x), -1) for a in jax.tree.leaves(g)], axis=1)
    return g, jnp.linalg.norm(flat, axis=1)


MODELS = {
    "doubled": L.serial(L.Dense(5), L.Tanh(), Doubled(L.Dense(3))),
    "gain_last": L.serial(L.Dense(5), L.Tanh(), Gain(L.Dense(3))),
    # Params of its own away from the output: their gradient reads the cotangent from above.
    "gain_first": L.serial(Gain(L.Dense(5)), L.Tanh(), L.Dense(3)),
    # ... or the body's own dx, from below.
    "input_gain": L.serial(L.Dense(5), L.Tanh(), InputGain(L.Dense(3))),
    "normalised": L.serial(
        L.Dense(5), L.Tanh(), type("Open", (Normalised,), {"params_disjoint": False})(L.Dense(3))
    ),  # fmt: skip
}


def _diag_ggn(model, params, x, y):
    """diag(sum_i J_i^T H_i J_i) from the explicit Jacobian of every example's logits."""
    flat, unravel = ravel_pytree(params)

    def logits(v, xi):
        return model.apply(unravel(v), xi[None])[0]

    J = jax.vmap(jax.jacrev(logits), (None, 0))(flat, x)  # (m, k, n)
    p = jax.nn.softmax(jax.vmap(lambda xi: logits(flat, xi))(x))
    H = (jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]) / len(x)
    return unravel(jnp.einsum("mkn,mkl,mln->n", J, H, J))


@pytest.mark.parametrize("name", MODELS)
def test_an_undeclared_combinator_takes_the_exact_route(name, x64):
    model = MODELS[name]
    assert not disjoint(model)
    params, x, y = _problem(model)
    g, norms = _reference(model, params, x, y)
    assert rel_error(jaxbp.per_example_grads(model, CE, params, x, y), g) <= RTOL
    assert rel_error(jaxbp.per_example_norms(model, CE, params, x, y), norms) <= RTOL
    sums = jaxbp.sum_grad_squared(model, CE, params, x, y)
    assert rel_error(sums, jax.tree.map(lambda a: jnp.sum(a * a, 0), g)) <= RTOL
    c = float(np.median(norms))  # the clip norm: some examples clipped, some not
    assert 0 < np.mean(np.asarray(norms) > c) < 1
    clipped = jax.tree.map(lambda a: jnp.tensordot(jnp.minimum(1, c / norms), a, 1) / 6, g)
    got = jaxbp.dp_sgd(c, 0.0, delta=None)(model, CE, params, x, y)[1]
    assert rel_error(got, clipped) <= RTOL
    assert (
        rel_error(jaxbp.diag_ggn(model, CE, params, x, y), _diag_ggn(model, params, x, y)) <= RTOL
    )
    with pytest.raises(NotImplementedError, match="do not each own their params"):
        jaxbp.kfac_factors(model, CE, params, x, y)


@pytest.mark.parametrize(
    "model, match",
    [
        (L.serial(L.Dense(5), DoubledClaimingDisjoint(L.Dense(3))), r"layer \[1\] Dense.*own"),
        (L.serial(L.Dense(5), GainClaimingDisjoint(L.Dense(3))), r"read 4 of the 5 params"),
        (L.serial(L.Dense(5), Normalised(L.Dense(3))), r"layer \[1\] Dense.*gradient changed"),
    ],
)
def test_a_false_declaration_raises_never_a_wrong_clip_norm(model, match, x64):
    params, x, y = _problem(model)
    for f in (
        jaxbp.per_example_norms,
        jaxbp.sum_grad_squared,
        jaxbp.diag_ggn,
        jaxbp.kfac_factors,
        lambda *a: jaxbp.dp_sgd(C, 0.0, delta=None)(*a),
    ):
        with pytest.raises(ValueError, match=match):
            jax.eval_shape(lambda p, f=f: f(model, CE, p, x, y), params)  # traced, no work


def test_declarations_of_the_builtins():
    assert disjoint(L.residual_mlp(4, 2, 3)) and disjoint(L.branched_mlp([3], 2))
    assert not disjoint(L.gpt(5, 4, num_layers=1, features=4, num_heads=1, tie_weights=True))
    assert disjoint(L.gpt(5, 4, num_layers=1, features=4, num_heads=1))


def test_a_combinator_must_declare_its_examples_independent(x64):
    """A combinator could mix examples as a layer can: one that does not say is refused."""

    @dataclasses.dataclass(frozen=True)
    class Silent(Doubled):
        examples_independent = False

    model = L.serial(L.Dense(5), Silent(L.Dense(3)))
    params, x, y = _problem(model)
    with pytest.raises(NotImplementedError, match=r"layer \[1\] .*Silent.*examples_independent"):
        jaxbp.per_example_norms(model, CE, params, x, y)


def test_a_layer_applied_twice_is_refused_where_one_path_would_name_two(x64):
    """backprop is right for body(body(x)); a recording, which names each application by the
    leaf's path, refuses it instead of overwriting one with the other."""
    model = L.serial(L.Dense(4), Twice(L.Dense(4)), L.Dense(3))
    params, x, y = _problem(model)
    got, want = jaxbp.backprop(model, CE, params, x, y), jaxbp.autodiff(model, CE, params, x, y)
    assert rel_error(got, want) <= RTOL
    for f in (jaxbp.per_example_grads, jaxbp.backprop_with_signals, jaxbp.diag_ggn):
        with pytest.raises(ValueError, match=r"layer \[1\] Dense.*reached twice"):
            f(model, CE, params, x, y)


@dataclasses.dataclass(frozen=True)
class Noisy(L.Layer):
    """y = (x + z) a, z ~ N(0, 1) from the key, a: (C,): a user layer with params and noise."""

    examples_independent = True

    def init(self, key, shape):
        return shape, {"a": jnp.linspace(0.5, 1.5, shape[-1])}

    def forward(self, params, x, *, key=None):
        z = jax.random.normal(key, x.shape, x.dtype)
        return (x + z) * params["a"], x + z

    def backward(self, params, xz, dy):
        return {"a": jnp.sum(dy * xz, axis=0)}, dy * params["a"]


def test_a_layers_generic_rule_reads_what_its_forward_saw(x64):
    """No per-example rule: the generic one differentiates the recorded residuals (this
    forward's noise), not a forward recomputed without the key."""
    model, key = L.serial(L.Dense(4), Noisy()), jax.random.PRNGKey(3)
    params, x, y = _problem(model)
    z = jax.random.normal(jax.random.fold_in(key, 1), (6, 4), jnp.float64)  # the key at [1]

    def one(p, xi, zi, yi):
        h = L.Dense(4).apply(p[0], xi[None])
        return CE.apply((h + zi) * p[1]["a"], yi[None])

    want = jax.vmap(jax.grad(one), (None, 0, 0, 0))(params, x, z, y)
    assert rel_error(jaxbp.per_example_grads(model, CE, params, x, y, key=key), want) <= RTOL


def test_a_combinator_around_state_must_say_how_it_keeps_it():
    """Without init_state, a combinator around BatchNorm would lose its running statistics:
    everything that sets up state refuses it, naming what keeps state."""
    model = L.serial(L.Dense(4), Doubled(L.BatchNorm()), L.Dense(3))
    _, params = model.init(jax.random.PRNGKey(0), (4,))
    x, y = jnp.ones((6, 4)), jnp.zeros((6,), int)
    match = r"Doubled.*keep state \(\[\] inside it\) but has no init_state"
    with pytest.raises(TypeError, match=match):
        L.init_state(model, params)
    step = jaxbp.train.make_step(model, CE, optax.sgd(0.1))
    with pytest.raises(TypeError, match=match):
        step(params, optax.sgd(0.1).init(params), x, y)
    with pytest.raises(TypeError, match=match):
        jaxbp.check_backprop(model, CE, params, x, y)
