"""jaxbp: backpropagation by hand in JAX, every factor of the chain rule written out and refereed.

Layers and losses carry hand-written backward rules (`jaxbp.layers`, `jaxbp.losses`); `backprop`
chains them in a reverse sweep; `autodiff` (jax.grad) is the referee; `jaxbp.check` verifies any
rule; the same sweep hands out per-example gradients, their norms, curvature and DP-SGD
(`jaxbp.quantities`); `jaxbp.train` runs compiled training loops with optax, and `kfac` is an
optimiser that preconditions by the sweep's own K-FAC factors.
"""

from jaxbp import (
    check,
    checkpoint,
    datasets,
    explain,
    feedback,
    layers,
    losses,
    optimizers,
    protocols,
    signals,
    train,
    walk,
)  # fmt: skip
from jaxbp.backprop import autodiff, backprop, to_custom_vjp
from jaxbp.check import CheckReport, check_backprop, check_layer, check_loss, check_vjp
from jaxbp.feedback import (
    RuleEngine,
    alignment,
    direct_feedback_alignment,
    engine_from_rules,
    feedback_alignment,
    feedback_rule,
)
from jaxbp.layers import (
    Dense,
    Elu,
    Flatten,
    Gelu,
    Identity,
    LeakyRelu,
    LogSoftmax,
    Relu,
    Sigmoid,
    Silu,
    Softmax,
    Softplus,
    Tanh,
    activation,
    mlp,
    serial,
)
from jaxbp.losses import binary_cross_entropy, mse, softmax_cross_entropy
from jaxbp.optimizers import KFAC, kfac
from jaxbp.protocols import Combinator, Engine, Layer, Loss
from jaxbp.quantities import grad_variance, per_example_grads, per_example_norms, sum_grad_squared
from jaxbp.quantities.curvature import diag_ggn, diag_ggn_mc, ggn_vp, hvp, kfac_factors
from jaxbp.quantities.dp import dp_sgd
from jaxbp.signals import LayerSignals, backprop_with_signals, signal_stats, to_floats

__version__ = "0.1.0"

__all__ = [
    "layers", "losses", "train", "datasets", "checkpoint", "explain", "signals", "feedback",
    "protocols", "walk", "Layer", "Combinator", "Loss",
    "check", "check_layer", "check_loss", "check_backprop", "check_vjp", "CheckReport",
    "backprop", "autodiff", "to_custom_vjp",
    "Dense", "Sigmoid", "Tanh", "Relu", "LeakyRelu", "Elu", "Gelu", "Softplus", "Silu",
    "Identity", "Softmax", "LogSoftmax", "Flatten", "serial", "mlp", "activation",
    "mse", "binary_cross_entropy", "softmax_cross_entropy",
    "backprop_with_signals", "LayerSignals", "signal_stats", "to_floats",
    "Engine", "RuleEngine", "engine_from_rules", "feedback_rule", "feedback_alignment",
    "direct_feedback_alignment", "alignment",
    "per_example_grads", "per_example_norms", "grad_variance", "sum_grad_squared", "dp_sgd",
    "diag_ggn", "diag_ggn_mc", "kfac_factors", "hvp", "ggn_vp", "optimizers", "kfac", "KFAC",
]  # fmt: skip
