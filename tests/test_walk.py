"""The walk: every path names one leaf layer at any depth, rules bind to leaves only, and the
driver every tool shares reproduces backprop for every built-in model and nest of combinators."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_error
from jax.flatten_util import ravel_pytree

import jaxbp
from jaxbp import layers as L
from jaxbp import losses
from jaxbp.feedback import engine_from_rules, feedback_rule
from jaxbp.walk import children, layer_at, leaves, params_at, path_str, trace

CE = losses.softmax_cross_entropy
# float64: an engine whose rules are the leaves' own backward runs the very same formulas as
# backprop, so the two agree to rounding (~1e-16); 1e-12 leaves room, and a lost skip or branch
# (the bug this guards against) is off by tens of percent.
RTOL = 1e-12


def _ids(vocab, shape, seed):
    return np.random.default_rng(seed).integers(0, vocab, size=shape)


# name: (model, input shape per example, batch, x kind, outputs per example)
MODELS = {
    "mlp": (L.mlp([5, 4, 3], "relu"), (4,), 5, "x", (3,)),
    "mlp_dropout": (L.mlp([5, 3], "tanh", dropout=0.3), (4,), 5, "x", (3,)),
    "residual_mlp": (L.residual_mlp(6, 2, 3), (4,), 5, "x", (3,)),
    "residual_mlp_batchnorm": (L.residual_mlp(6, 2, 3, norm="batch"), (4,), 5, "x", (3,)),
    "branched_mlp": (L.branched_mlp([5, 4], 3), (4,), 5, "x", (3,)),
    "branched_mlp_sum": (L.branched_mlp([5, 4], 3, merge="sum"), (4,), 5, "x", (3,)),
    "cnn": (L.cnn(3, (4,), 8, convs=1), (6, 6, 1), 4, "x", (3,)),
    "resnet": (L.resnet(3, (4, 6), 1), (6, 6, 2), 3, "x", (3,)),
    "gpt": (L.gpt(11, 6, num_layers=2, features=8, num_heads=2), (6,), 3, "ids", (6, 11)),
    "gpt_tied": (
        L.gpt(11, 6, num_layers=2, features=8, num_heads=2, tie_weights=True),
        (6,),
        3,
        "ids",
        (6, 11),
    ),  # fmt: skip
    "char_rnn": (L.char_rnn(9, embed=5, hidden=6), (5,), 3, "ids", (5, 9)),
    "residual_in_residual": (
        L.serial(L.Residual(L.serial(L.Dense(6), L.Relu(), L.Residual(L.Dense(6)))), L.Dense(3)),
        (6,),
        5,
        "x",
        (3,),
    ),  # fmt: skip
    "residual_after_dense": (
        L.serial(L.Dense(6), L.Residual(L.Dense(6)), L.Tanh(), L.Dense(3)),
        (4,),
        5,
        "x",
        (3,),
    ),
    "parallel_of_residuals": (
        L.serial(
            L.Parallel(
                L.Residual(L.Dense(4)), L.Residual(L.Residual(L.serial(L.Dense(4), L.Tanh())))
            ),
            L.Residual(L.Parallel(L.Dense(4), L.serial(L.Dense(2), L.Dense(4)), merge="sum")),
            L.Dense(3),
        ),
        (4,),
        5,
        "x",
        (3,),
    ),  # fmt: skip
}


def _problem(name):
    model, shape, batch, kind, out = MODELS[name]
    rng = np.random.default_rng(len(name))
    _, params = model.init(jax.random.PRNGKey(1), shape)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    if kind == "ids":
        vocab = out[-1]
        x, y = _ids(vocab, (batch, *shape), 1), _ids(vocab, (batch, *shape), 2)
    else:
        x = jnp.asarray(rng.normal(size=(batch, *shape)))
        y = jnp.asarray(rng.integers(0, out[-1], size=batch))
    state = L.init_state(model, params)
    state = state if jax.tree.leaves(state) else None
    return model, params, jnp.asarray(x), jnp.asarray(y), state


def _grads(engine, model, params, x, y, state):
    kw = {"key": jax.random.PRNGKey(7)} | ({} if state is None else {"state": state})
    return jax.jit(lambda p: engine(model, CE, p, x, y, **kw)[:2])(params)


@pytest.mark.parametrize("name", MODELS)
def test_rules_that_are_each_leafs_own_backward_reproduce_backprop(name, x64):
    """For every built-in model and nests of Residual and Parallel: an engine whose rule at every
    leaf path is that leaf's own backward is backprop, the combinators' own backward (a
    Residual's skip, a Parallel's fan-out, a Tied table's two gradients) running as always."""
    model, params, x, y, state = _problem(name)
    own = engine_from_rules({p: layer.backward for p, layer in leaves(model)})
    value, want = _grads(jaxbp.backprop, model, params, x, y, state)
    got_value, got = _grads(own, model, params, x, y, state)
    assert rel_error(got, want) <= RTOL and abs(got_value - value) <= RTOL * abs(value)
    # Over the whole vector: a bias just before BatchNorm has an exact-zero gradient, rounding
    # noise on both sides, which a per-leaf relative error would compare with noise.
    ref = _grads(jaxbp.autodiff, model, params, x, y, state)[1]
    assert rel_error(ravel_pytree(want)[0], ravel_pytree(ref)[0]) <= 1e-10


@pytest.mark.parametrize("name", ["residual_after_dense", "residual_in_residual", "resnet"])
def test_feedback_alignment_with_b_equal_to_w_is_backprop(name, x64):
    """The issue's two models (and a ResNet): feedback alignment with B = W at every Dense is
    exactly backprop; with the rule at a Residual's path once replacing the whole Residual, the
    first layer's W was off by 33% and 91%."""
    model, params, x, y, state = _problem(name)
    rules = {
        p: feedback_rule(layer, params_at(params, p)["W"])
        for p, layer in leaves(model)
        if hasattr(layer, "feedback_backward")
    }
    assert any(isinstance(layer_at(model, p), L.Dense) for p in rules)
    _, want = _grads(jaxbp.backprop, model, params, x, y, state)
    _, got = _grads(engine_from_rules(rules), model, params, x, y, state)
    assert rel_error(got, want) <= RTOL


def test_a_path_names_the_leaf_never_the_combinator(x64):
    """(1,) in serial(Dense, Residual(Dense), ...) is the inner Dense: a rule there gets the
    Dense's params and residuals, and the Residual still adds its skip."""
    model, params, x, y, _ = _problem("residual_after_dense")
    assert [p for p, _ in leaves(model)] == [(0,), (1,), (2,), (3,)]
    assert isinstance(layer_at(model, (1,)), L.Dense) and isinstance(layer_at(model, 1), L.Dense)
    seen = {}

    def spy(params, residuals, dy):
        seen["params"], seen["x"] = params, residuals
        return L.Dense(6).backward(params, residuals, dy)

    value, grads = engine_from_rules({1: spy})(model, CE, params, x, y)
    assert set(seen["params"]) == {"W", "b"} and seen["x"].shape == (5, 6)
    assert rel_error(grads, jaxbp.backprop(model, CE, params, x, y)[1]) <= RTOL


@pytest.mark.parametrize(
    "model, path",
    [
        (L.serial(L.Dense(3), L.Dense(2)), ()),  # the root serial
        (L.serial(L.Parallel(L.Dense(2), L.Dense(2)), L.Dense(2)), (0,)),  # a Parallel
        (L.serial(L.Dense(3), L.Dense(2)), (5,)),
        (L.serial(L.Dense(3), L.Dense(2)), (0, 0)),
    ],
)
def test_rules_at_paths_that_name_no_leaf_raise(model, path, x64):
    _, params = model.init(jax.random.PRNGKey(0), (3,))
    x, y = jnp.ones((2, 3)), jnp.zeros((2,), int)
    with pytest.raises(ValueError, match=r"rules for layers \[.*never a combinator"):
        engine_from_rules({path: lambda p, r, dy: (p, dy)})(model, CE, params, x, y)


@dataclasses.dataclass(frozen=True)
class _Twin(L.CombinatorBase):
    """A user's combinator: both children on x, summed; params a pair (like Parallel)."""

    a: object
    b: object
    steps: tuple = ((0,), (1,))
    params_disjoint = True
    examples_independent = True

    def sublayers(self):
        return ((self.steps[0], self.a), (self.steps[1], self.b))

    def with_sublayers(self, layers):
        return _Twin(*layers, self.steps)

    def init(self, key, shape):
        (s, pa), (_, pb) = self.a.init(key, shape), self.b.init(key, shape)
        return s, (pa, pb)

    def walk_forward(self, params, state, x, key, path, sweep):
        ya, ra, _ = jaxbp.walk.sweep_forward(self.a, params[0], None, x, key, path + (0,), sweep)
        yb, rb, _ = jaxbp.walk.sweep_forward(self.b, params[1], None, x, key, path + (1,), sweep)
        return ya + yb, (ra, rb), state

    def walk_backward(self, params, residuals, dy, path, sweep):
        ga, dxa = jaxbp.walk.sweep_backward(self.a, params[0], residuals[0], dy, path + (0,), sweep)
        gb, dxb = jaxbp.walk.sweep_backward(self.b, params[1], residuals[1], dy, path + (1,), sweep)
        return (ga, gb), dxa + dxb


def test_a_users_combinator_is_walked_and_checked(x64):
    model = L.serial(_Twin(L.Dense(3), L.Dense(3)), L.Dense(2))
    _, params = model.init(jax.random.PRNGKey(0), (4,))
    x, y = jnp.ones((2, 4)), jnp.zeros((2,), int)
    assert [p for p, _ in leaves(model)] == [(0, 0), (0, 1), (1,)]
    own = engine_from_rules({p: layer.backward for p, layer in leaves(model)})
    assert (
        rel_error(own(model, CE, params, x, y)[1], jaxbp.backprop(model, CE, params, x, y)[1]) == 0
    )
    overlapping = _Twin(L.Dense(3), L.Dense(3), steps=((0,), (0, 1)))
    with pytest.raises(ValueError, match=r"steps \[0\] and \[0\]\[1\] overlap"):
        list(leaves(overlapping))
    with pytest.raises(ValueError, match=r"steps \[\] and \[1\] overlap"):
        children(_Twin(L.Dense(3), L.Dense(3), steps=((), (1,))))
    lying = L.serial(_Twin(L.Dense(3), L.Dense(3), steps=((0,), (2,))), L.Dense(2))
    with pytest.raises(ValueError, match=r"walk reached layers at \[0\]\[0\], \[0\]\[1\]"):
        trace(lying, CE, params, x, y)
    with pytest.raises(ValueError, match=r"rules for layers \[0\]\[2\] never ran"):
        engine_from_rules({(0, 2): lambda p, r, dy: (p, dy)})(lying, CE, params, x, y)


def test_paths_print_and_parse():
    assert path_str((3, 0, 1)) == "[3][0][1]" and path_str(()) == "[]"
    with pytest.raises(TypeError, match="a rule's path must be an int or a tuple of ints"):
        engine_from_rules({"0": lambda p, r, dy: (p, dy)})
