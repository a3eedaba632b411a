"""What `bench --quantities` measures: each group's rows (jaxbp's quantity, its vmap(jax.grad)
reference, its BackPACK, Opacus or jax-privacy peers), their bases, and the problem they run on."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

from jaxbp.bench.mlp import Config, _problem
from jaxbp.bench.sequence import SequenceConfig
from jaxbp.bench.vision import VisionConfig

CLIP_NORM, NOISE_MULTIPLIER = 1.0, 1.0  # DP-SGD's usual scale: noise std = clip norm
LR = 1e-3
# gpt runs when named: torch has no peer for it, and its first-order and curvature groups take
# minutes here; the committed results hold its DP group (jax-privacy the peer).
DEFAULT_CONFIGS = ("digits", "wide", "cnn")
# The diag-GGN reference's whole Jacobian, batch x outputs x params: cnn's 128 x 10 x 25k takes
# ~1 s a call; wide's 512 x 10 x 1.86M would take minutes per call, so it is left out there.
JACOBIAN_ENTRIES = 10**8
GROUPS = ("first_order", "curvature", "dp")
BASES = {"first_order": "backprop", "curvature": "backprop", "dp": "sgd step"}
TORCH_BASES = {"first_order": "torch backward", "curvature": "torch backward", "dp": "torch step"}


@dataclasses.dataclass(frozen=True)
class Row:
    """A jaxbp quantity, its vmap(jax.grad) reference (or None) and its peers, in one group."""

    group: str
    quantity: str
    reference: str | None = None
    peers: tuple[str, ...] = ()


ROWS = (
    Row("first_order", "per_example_grads", "vmap(grad)", ("BatchGrad",)),
    Row("first_order", "per_example_norms", "vmap(grad) norms", ("BatchL2Grad",)),
    Row("first_order", "grad_variance", "vmap(grad) variance", ("Variance",)),
    Row("first_order", "sum_grad_squared", "vmap(grad) squares", ("SumGradSquared",)),
    Row("curvature", "diag_ggn", "jacobians", ("DiagGGNExact",)),
    Row("curvature", "diag_ggn_mc", None, ("DiagGGNMC",)),
    Row("curvature", "kfac_factors", None, ("KFLR",)),
    Row("curvature", "kfac_factors_mc", None, ("KFAC",)),
    Row("curvature", "hvp", "jvp(grad)", ()),
    Row("curvature", "ggn_vp", "jvp + vjp", ()),
    Row("dp", "dp_sgd step", "vmap(grad) dp step", ("Opacus hooks", "Opacus ghost", "jax-privacy")),
    # noise_multiplier 0: the clipping and its norms alone
    Row("dp", "dp clip step", None, ("jax-privacy clip",)),
    Row("dp", "clipped sum", None, ("jax-privacy clipped_grad",)),  # no optimiser, no mean
)
# The peers that run in JAX (jax_privacy_peer); the rest run on torch (torch_quantities).
JAX_PEERS = ("jax-privacy clipped_grad", "jax-privacy clip", "jax-privacy")
_MODULES = {
    "per_example_grads": "first_order", "per_example_norms": "first_order",
    "grad_variance": "first_order", "sum_grad_squared": "first_order", "diag_ggn": "curvature",
    "diag_ggn_mc": "curvature", "kfac_factors": "curvature", "hvp": "curvature",
    "ggn_vp": "curvature", "dp_sgd": "dp",
}  # fmt: skip


def jaxbp_function(name: str) -> Callable | None:
    """jaxbp.quantities.<module>.<name>, or None while it does not exist."""
    try:
        return getattr(importlib.import_module(f"jaxbp.quantities.{_MODULES[name]}"), name)
    except (ImportError, AttributeError):
        return None


def check(config) -> None:
    """Raise ValueError for a config the quantities cannot run on: BatchNorm couples examples,
    and of the sequence models only gpt is a stack of per-example layers jaxbp's sweeps know."""
    if isinstance(config, VisionConfig) and config.builder == "cnn" or isinstance(config, Config):
        return
    if isinstance(config, SequenceConfig) and config.builder == "gpt":
        return
    raise ValueError(
        "bench --quantities runs on the MLP configs and cnn (BatchNorm dropped), and on gpt, "
        f"not {config.name}"
    )


def problem(config: Config | VisionConfig):
    """(model, loss, params, x, y, input_shape); cnn without its BatchNorm."""
    check(config)
    if isinstance(config, SequenceConfig):  # ids (batch, context), a loss at every position
        model, loss, params, _, x, y = config.problem()
        return model, loss, params, x, y, (config.context,)
    if isinstance(config, VisionConfig):
        options = tuple(o for o in config.options if o[0] != "batch_norm")
        config = dataclasses.replace(config, options=options + (("batch_norm", False),))
        model, loss, params, _, x, y = config.problem()
        return model, loss, params, x, y, config.input_shape
    model, loss, params, x, y = _problem(config)
    return model, loss, params, x, y, (config.inputs,)
