"""The public API: every name in __all__ imports, and the contract's names are there."""

from __future__ import annotations

import importlib

import pytest

import jaxbp

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


@pytest.mark.parametrize("name", jaxbp.__all__)
def test_every_public_name_imports(name):
    assert getattr(jaxbp, name) is not None


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
