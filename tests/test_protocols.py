"""The protocols: every built-in is what it says, engines return one shape of result, and what a
layer or loss knows about itself is declared on it, never guessed from its class elsewhere."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import jaxbp
from jaxbp import layers as L
from jaxbp import losses, protocols
from jaxbp.protocols import Combinator, Engine, Layer, Loss

SRC = Path(jaxbp.__file__).parent
LAYER_CLASSES = [
    getattr(L, n)
    for n in L.__all__
    if inspect.isclass(getattr(L, n)) and n not in ("CombinatorBase", "Layer")
]
COMBINATORS = (L.Serial, L.Residual, L.Parallel, L.Tied)
LOSS_CLASSES = (losses.MSE, losses.BinaryCrossEntropy, losses.SoftmaxCrossEntropy)


@pytest.mark.parametrize("cls", LAYER_CLASSES, ids=lambda c: c.__name__)
def test_every_builtin_layer_is_a_layer_and_declares_its_examples(cls):
    assert issubclass(cls, Layer) and cls.apply is Layer.apply
    assert issubclass(cls, Combinator) == (cls in COMBINATORS)
    # Declared in the class's own file (a class attribute or a property), never defaulted.
    assert any("examples_independent" in vars(c) for c in cls.__mro__ if c is not Layer)


def test_modes_decide_what_batchnorm_declares():
    assert L.BatchNorm().examples_independent is False
    assert L.eval_mode(L.BatchNorm()).examples_independent is True
    assert all(c.params_disjoint for c in (L.Serial, L.Residual, L.Parallel))
    assert L.Tied.params_disjoint is False


def test_losses_declare_their_targets_and_scoring():
    assert all(isinstance(loss, Loss) for loss in losses.LOSSES.values())
    assert [losses.get(n).targets for n in losses.LOSSES] == ["normal", "unit", "labels"]
    y = jnp.array([0, 1, 1])
    assert losses.mse.scorer(jnp.array([0.5, 2.0])) is None  # no right or wrong off 0/1
    assert float(losses.mse.scorer(y)(jnp.array([0.2, 0.7, 0.1]), y)) == pytest.approx(2 / 3)
    z = jnp.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert float(losses.softmax_cross_entropy.scorer(y)(z, y)) == pytest.approx(2 / 3)


def test_engines_return_one_shape_of_result():
    """(value, grads) without state; (value, grads, new_state) with state=..., for every engine."""
    model = L.serial(L.Dense(4), L.BatchNorm(), L.Relu(), L.Dense(3))
    _, params = model.init(jax.random.PRNGKey(0), (5,))
    x, y = jax.random.normal(jax.random.PRNGKey(1), (6, 5)), jnp.arange(6) % 3
    plain_model = L.serial(L.Dense(4), L.Identity(), L.Relu(), L.Dense(3))
    _, plain_params = plain_model.init(jax.random.PRNGKey(0), (5,))
    key, CE, state = (
        jax.random.PRNGKey(2),
        losses.softmax_cross_entropy,
        L.init_state(model, params),
    )
    engines = {
        "backprop": (jaxbp.backprop, model),
        "autodiff": (jaxbp.autodiff, model),
        "fa": (jaxbp.feedback_alignment(model, params, key=key), model),
        "own rules": (jaxbp.engine_from_rules({0: L.Dense(4).backward}), model),
        "dp_sgd": (jaxbp.dp_sgd(1.0, 1.0, delta=None), L.eval_mode(model)),
    }
    for name, (engine, stateful) in engines.items():
        assert isinstance(engine, Engine), name
        plain = engine(plain_model, CE, plain_params, x, y, key=key)
        value, grads, new_state = engine(stateful, CE, params, x, y, key=key, state=state)
        assert len(plain) == 2 and plain[0].shape == value.shape == (), name
        assert jax.tree.structure(plain[1]) == jax.tree.structure(plain_params), name
        assert jax.tree.structure(grads) == jax.tree.structure(params), name
        assert jax.tree.structure(new_state) == jax.tree.structure(state), name


def _own_module(cls) -> str:
    return inspect.getsourcefile(cls)


# isinstance of a class named here, or `is` of a built-in loss, outside the file that defines
# it, is a switch a new layer or loss would silently miss. Allowed: translations into PyTorch
# for the benchmarks' peers, which name each layer they translate and raise on any other. (Tied
# names Embedding and Dense in its own file: which two layers it ties is its definition.)
TRANSLATIONS = {SRC / "bench" / "torch_nets.py", SRC / "bench" / "torch_seq.py"}


def test_no_switch_on_a_specific_layer_or_loss_outside_its_own_module():
    classes = {c.__name__: Path(_own_module(c)) for c in (*LAYER_CLASSES, *LOSS_CLASSES)}
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path in TRANSLATIONS:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            call = isinstance(node, ast.Call) and getattr(node.func, "id", None)
            if call in ("isinstance", "issubclass", "type"):
                for name in ast.walk(node):
                    named = getattr(name, "id", None) or getattr(name, "attr", None)
                    if named in classes and classes[named] != path:
                        found.append(f"{path.relative_to(SRC)}:{node.lineno} {named}")
            if isinstance(node, ast.Compare) and any(  # loss is losses.mse: an identity switch
                isinstance(op, ast.Is | ast.IsNot) for op in node.ops
            ):
                text = ast.unparse(node)
                if any(name in text for name in losses.LOSSES):
                    found.append(f"{path.relative_to(SRC)}:{node.lineno} {text}")
            if isinstance(node, ast.Compare):  # type(x).__name__ == "...": a name list
                text = ast.unparse(node)
                if "__name__" in text and any(repr(name) in text for name in classes):
                    found.append(f"{path.relative_to(SRC)}:{node.lineno} {text}")
    assert not found, found


def test_protocol_adapters_default_to_the_safe_answer():
    class Bare:
        def init(self, key, shape):
            return shape, ()

        def forward(self, params, x, *, key=None):
            return x, ()

        def backward(self, params, residuals, dy):
            return (), dy

    assert not protocols.examples_independent(Bare()) and not protocols.is_combinator(Bare())
    assert L.init_state(Bare(), ()) == ()
    assert not protocols.params_disjoint(Bare())
