"""The public API: every name in __all__ is jaxbp's own, the contract's names are there, and the
exported names nothing else calls directly (Engine, PRESETS, IMAGE_PRESETS, preset) do what they
say."""

from __future__ import annotations

import importlib
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxbp
from jaxbp import layers as L
from jaxbp.train import fit
from jaxbp.walk import leaves, params_at

CONTRACT = {
    "jaxbp": [
        "backprop", "autodiff", "to_custom_vjp",
        # DESIGN.md's "Growth" quantities
        "per_example_grads", "per_example_norms", "grad_variance", "sum_grad_squared",
        "diag_ggn", "diag_ggn_mc", "kfac_factors", "hvp", "ggn_vp", "dp_sgd",
    ],
    "jaxbp.check": ["check_layer", "check_loss", "check_backprop", "check_vjp"],
    "jaxbp.train": ["fit"],
    "jaxbp.datasets": ["load"],
    "jaxbp.layers": [
        "Dense", "Sigmoid", "Tanh", "Relu", "LeakyRelu", "Elu", "Gelu", "Softplus", "Silu",
        "Identity", "Softmax", "LogSoftmax", "Flatten", "serial", "mlp", "activation",
        # DESIGN.md's "Growth" names
        "Residual", "Parallel", "Dropout", "LayerNorm", "RMSNorm", "BatchNorm", "Embedding",
        "Conv", "MaxPool", "AvgPool", "GlobalAvgPool", "SelfAttention", "LSTM", "GRU", "cnn",
        "resnet", "gpt",
    ],
    "jaxbp.losses": ["mse", "binary_cross_entropy", "softmax_cross_entropy"],
}  # fmt: skip


MODULES = {"layers", "losses", "train", "datasets", "checkpoint", "explain", "signals", "feedback",
           "protocols", "walk", "check", "optimizers"}  # fmt: skip


@pytest.mark.parametrize("name", jaxbp.__all__)
def test_every_public_name_is_jaxbps_own(name):
    """A module is jaxbp.<name>; anything else is the object its defining module (its class's,
    for an instance such as a loss) holds under the same name: nothing shadowed or re-bound."""
    obj = getattr(jaxbp, name)
    if name in MODULES:
        assert isinstance(obj, types.ModuleType) and obj.__name__ == f"jaxbp.{name}"
        return
    own = isinstance(obj, type) or hasattr(obj, "__qualname__")  # a class or a function
    module = obj.__module__ if own else type(obj).__module__
    assert module.startswith("jaxbp."), (name, module)
    assert getattr(sys.modules[module], name) is obj, (name, module)


def test_the_public_modules_are_all_listed():
    assert {n for n in jaxbp.__all__ if isinstance(getattr(jaxbp, n), types.ModuleType)} == MODULES


@pytest.mark.parametrize("module, names", CONTRACT.items())
def test_contract_names(module, names):
    mod = importlib.import_module(module)
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f"{module} lacks {missing}"


def test_submodule_all_lists_are_importable():
    for module in (
        "jaxbp.layers",
        "jaxbp.losses",
        "jaxbp.backprop",
        "jaxbp.check",
        "jaxbp.train",
        "jaxbp.signals",
        "jaxbp.feedback",
        "jaxbp.quantities",
    ):
        mod = importlib.import_module(module)
        for name in mod.__all__:
            assert hasattr(mod, name), f"{module}.{name}"


# ---------------------------------------------------------------------------------------------
# Engine: every engine jaxbp makes is one, and fit runs whatever engine it is given


def test_jaxbps_engines_meet_the_engine_protocol():
    """Engine is a runtime-checkable Protocol whose one member is __call__: isinstance checks the
    structure only (any callable passes; what an engine returns is test_fit_trains_with_the_engine
    _it_is_given's and tests/test_protocols.py's to assert)."""
    model = L.mlp([3, 2], "tanh")
    _, params = jax.eval_shape(lambda k: model.init(k, (4,)), jax.random.PRNGKey(0))
    made = [
        jaxbp.feedback_alignment(model, params, key=jax.random.PRNGKey(1)),
        jaxbp.direct_feedback_alignment(model, params, key=jax.random.PRNGKey(1)),
        jaxbp.engine_from_rules({}),
        jaxbp.dp_sgd(1.0, 1.0),
    ]
    for engine in (jaxbp.backprop, jaxbp.autodiff, *made):
        assert isinstance(engine, jaxbp.Engine), engine
    assert jaxbp.Engine is jaxbp.protocols.Engine
    assert not isinstance(object(), jaxbp.Engine) and not isinstance(3.0, jaxbp.Engine)
    assert isinstance(print, jaxbp.Engine)  # structural: a callable of the wrong kind passes too


class Frozen:
    """An engine written outside jaxbp: backprop's value, and a zero gradient."""

    def __call__(self, model, loss, params, x, y, *, key=None, state=None):
        value, grads = jaxbp.backprop(model, loss, params, x, y, key=key)
        return value, jax.tree.map(jnp.zeros_like, grads)


def test_fit_trains_with_the_engine_it_is_given():
    """SGD with Frozen's zero gradients leaves every parameter exactly as it was, and the
    losses fit reports are the value Frozen returns, the loss at those parameters."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 2, size=8))
    model = L.mlp([3, 2], "tanh")
    _, params = model.init(jax.random.PRNGKey(0), (4,))
    assert isinstance(Frozen(), jaxbp.Engine)
    options = dict(optimizer=optax.sgd(1.0), epochs=2, batch_size=8, progress=False)
    options |= dict(key=jax.random.PRNGKey(1), grad=Frozen())
    after, history = fit(model, jaxbp.softmax_cross_entropy, params, (x, y), **options)
    assert all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(params))
    )
    want = float(jaxbp.softmax_cross_entropy.apply(model.apply(params, x), y))
    # the same float32 loss of 8 rows, shuffled (summed in another order) and in another
    # program: a few ulps of each term, ~1e-6 at most; a step that moved the params, far more
    assert history["loss"] == pytest.approx([want, want], rel=1e-5)


# ---------------------------------------------------------------------------------------------
# PRESETS, IMAGE_PRESETS and preset: the networks `jaxbp train --model` names


def _built(name: str, outputs: int):
    """(model, params' shapes, output shape) of a preset, on digits as the CLI feeds it."""
    model = L.preset(name, outputs)
    shape, out = (8, 8, 1) if name in L.IMAGE_PRESETS else (64,), []

    def init(key):
        out.append(model.init(key, shape)[0])  # the output shape: plain ints, traced or not
        return model.init(key, shape)[1]

    return model, jax.eval_shape(init, jax.random.PRNGKey(0)), out[0]


def _kinds(model, params, kind) -> list[tuple]:
    """The weight shapes of the model's layers of one kind (by class name), in forward order."""
    found = [params_at(params, p) for p, layer in leaves(model) if type(layer).__name__ == kind]
    return [tuple(p["W"].shape) if "W" in p else tuple(p["scale"].shape) for p in found]


def test_presets_are_the_networks_the_cli_names():
    assert list(jaxbp.layers.PRESETS) == [
        "residual", "residual-bn", "branched", "batchnorm", "dropout", "cnn", "resnet",
    ]  # fmt: skip
    assert jaxbp.layers.IMAGE_PRESETS == ("cnn", "resnet")
    for name, (text, build) in jaxbp.layers.PRESETS.items():
        assert isinstance(text, str) and text, name
        assert build(7) == L.preset(name, 7), name  # layers are frozen dataclasses: compared
        assert _built(name, 7)[2] == (7,), name
    cnn, params, _ = _built("cnn", 10)
    # "2x(Conv16-BN-relu), pool, 2x(Conv32-BN-relu), pool, Dense(64), Dense(out)"
    assert _kinds(cnn, params, "Conv") == [
        (3, 3, 1, 16),
        (3, 3, 16, 16),
        (3, 3, 16, 32),
        (3, 3, 32, 32),
    ]
    assert _kinds(cnn, params, "BatchNorm") == [(16,), (16,), (32,), (32,)]
    assert _kinds(cnn, params, "Dense") == [(128, 64), (64, 10)]
    assert [type(layer).__name__ for _, layer in leaves(cnn)].count("MaxPool") == 2
    resnet, params, _ = _built("resnet", 10)
    # "ResNet of 4 classic blocks (16, 32 channels), BatchNorm, projection shortcut": a stem
    # conv, 2 convs per block, one strided 1x1 projection where 16 channels become 32.
    convs = _kinds(resnet, params, "Conv")
    assert convs == [(3, 3, 1, 16), *[(3, 3, 16, 16)] * 4, (3, 3, 16, 32), (3, 3, 32, 32),
                     (1, 1, 16, 32), *[(3, 3, 32, 32)] * 2]  # fmt: skip
    assert len(_kinds(resnet, params, "BatchNorm")) == len(convs)
    assert _kinds(resnet, params, "Dense") == [(32, 10)]


def test_preset_refuses_an_unknown_name_listing_the_known_ones():
    with pytest.raises(ValueError) as error:
        L.preset("vgg", 10)
    assert str(error.value) == (
        "unknown model 'vgg'; presets: residual, residual-bn, branched, batchnorm, dropout, cnn, "
        "resnet"
    )
