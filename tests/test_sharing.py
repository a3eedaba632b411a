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
import pytest
from conftest import rel_error

import jaxbp
from jaxbp import layers as L
from jaxbp import losses
from jaxbp.walk import disjoint, sweep_backward, sweep_forward

CE = losses.softmax_cross_entropy
C = 2.8  # the clip norm: the examples' median norm here, so some are clipped and some not
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
    "gain": L.serial(L.Dense(5), L.Tanh(), Gain(L.Dense(3))),
}


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
    assert 0 < np.mean(np.asarray(norms) > C) < 1  # both sides of the clip
    clipped = jax.tree.map(lambda a: jnp.tensordot(jnp.minimum(1, C / norms), a, 1) / 6, g)
    got = jaxbp.dp_sgd(C, 0.0, delta=None)(model, CE, params, x, y)[1]
    assert rel_error(got, clipped) <= RTOL


@pytest.mark.parametrize(
    "model, match",
    [
        (L.serial(L.Dense(5), DoubledClaimingDisjoint(L.Dense(3))), r"layer \[1\] Dense.*own"),
        (L.serial(L.Dense(5), GainClaimingDisjoint(L.Dense(3))), r"read 4 of the 5 params"),
    ],
)
def test_a_false_declaration_raises_never_a_wrong_clip_norm(model, match, x64):
    params, x, y = _problem(model)
    for f in (
        jaxbp.per_example_norms,
        jaxbp.sum_grad_squared,
        jaxbp.diag_ggn,
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
