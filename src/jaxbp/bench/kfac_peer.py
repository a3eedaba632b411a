"""kfac-jax (DeepMind's K-FAC optimiser) as a peer: the same MLP, loss, params and batches as
jaxbp's K-FAC, run step by step with its loss, wall time and compiled memory, and its factors
read back in jaxbp's convention.

What kfac-jax runs with fixed learning rate eta, momentum mu and damping lam (the settings here):
each step it first updates the factors of every Dense layer, A = mean over the batch of a a^T
(a = [x, 1], the bias entry last) and G = mean of d d^T (d: the layer's output gradient of the
per-example loss, against Rademacher vectors through the loss Hessian's root by default), into
a zero-debiased running average (w <- ema w + 1, F <- F + (F_new - F) / w); every
`inverse_period` steps it inverts the pi-damped factors (A + pi sqrt(lam) I, G + sqrt(lam)/pi I,
pi = sqrt((tr A / dim A) / (tr G / dim G))); then delta = mu delta_prev - eta A^-1 g G^-1.
Its factors are jaxbp's `kfac_factors` exactly (scale 1, bias last; ggn_exact mode, tested).

The model is a plain JAX function over jaxbp's params tree (`serial`'s tuple: {"W": (in, out),
"b": (out,)} per Dense, () per activation), so both optimisers start from the same params.
kfac-jax finds the layers by matching `x @ W + b` in the traced function and reads the loss from
a registration call inside it. kfac-jax 0.0.8 predates jax 0.10's `get_bind_params` (which now
returns the params alone); `_patch_kfac_jax` adapts its one caller, at import.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import kfac_jax
import numpy as np
from kfac_jax._src import tag_graph_matcher

from jaxbp._types import Array, Params, PRNGKey
from jaxbp.layers import Dense, Relu, Sigmoid, Tanh, serial

__all__ = [
    "AUTOENCODER", "AUTOENCODER_ACTIVATIONS", "Net", "KfacPeer", "digits_batches",
]  # fmt: skip

# kfac-jax's classic benchmark (Hinton and Salakhutdinov 2006; Martens 2010), with digits' 64
# pixels: tanh after every hidden Dense but the 30-unit code, which is linear, as in kfac-jax's
# examples/autoencoder_mnist (the original used logistic units); sigmoid cross-entropy on logits.
AUTOENCODER = (64, 1000, 500, 250, 30, 250, 500, 1000, 64)
AUTOENCODER_ACTIVATIONS = ("tanh", "tanh", "tanh", None, "tanh", "tanh", "tanh", None)

_ACTIVATIONS = {"tanh": (Tanh, jnp.tanh), "sigmoid": (Sigmoid, jax.nn.sigmoid),
                "relu": (Relu, jax.nn.relu)}  # fmt: skip
_ALIASES = {"sigmoid_cross_entropy": "binary_cross_entropy"}


def _patch_kfac_jax() -> None:
    """Let kfac-jax's jaxpr interpreter bind equations under jax >= 0.10, whose
    `Primitive.get_bind_params` returns the params alone (call primitives keep their subfuns
    inside them) instead of (subfuns, params). Idempotent; a no-op on the old form."""
    if getattr(tag_graph_matcher.eval_jaxpr_eqn, "_jaxbp_patched", False):
        return
    user_context = jax.extend.source_info_util.user_context

    def eval_jaxpr_eqn(eqn, in_values):
        bind = eqn.primitive.get_bind_params(eqn.params)
        subfuns, params = bind if isinstance(bind, tuple) else ((), bind)
        with user_context(eqn.source_info.traceback):
            out = eqn.primitive.bind(*subfuns, *in_values, **params)
        return out if isinstance(out, list) else [out]

    eval_jaxpr_eqn._jaxbp_patched = True
    tag_graph_matcher.eval_jaxpr_eqn = eval_jaxpr_eqn


_patch_kfac_jax()


@dataclasses.dataclass(frozen=True)
class Net:
    """An MLP: Dense(widths[i + 1]) for each i, then activations[i] (a name, or None for none).

    widths: (in, hidden..., out); the model's output is logits (or the prediction, for mse).
    """

    widths: tuple[int, ...]
    activations: tuple[str | None, ...]

    def __post_init__(self):
        if len(self.widths) < 2 or len(self.activations) != len(self.widths) - 1:
            raise ValueError(
                f"Net: {len(self.widths)} widths need {len(self.widths) - 1} activations (one "
                f"per Dense), got {len(self.activations)}"
            )
        for name in self.activations:
            if name is not None and name not in _ACTIVATIONS:
                raise ValueError(f"Net: unknown activation {name!r}; one of {list(_ACTIVATIONS)}")

    def layers(self) -> tuple[str, ...]:
        """The serial's layers by name, in order: "dense" or an activation's name."""
        out: list[str] = []
        for name in self.activations:
            out += ["dense"] + ([name] if name else [])
        return tuple(out)

    def jaxbp_model(self):
        """The same net in jaxbp: serial(Dense, Tanh, ...); its params are apply's params."""
        return serial(*(
            Dense(f) if kind == "dense" else _ACTIVATIONS[kind][0]()
            for kind, f in zip(self.layers(), self._features())
        ))  # fmt: skip

    def _features(self) -> list[int | None]:
        widths = iter(self.widths[1:])
        return [next(widths) if kind == "dense" else None for kind in self.layers()]

    def dense_paths(self) -> tuple[tuple[int], ...]:
        """Each Dense's path in the serial, as `kfac_factors` keys them: ((0,), (2,), ...)."""
        return tuple((i,) for i, kind in enumerate(self.layers()) if kind == "dense")

    def init(self, key: PRNGKey, dtype=jnp.float32) -> Params:
        """jaxbp's own initial params (LeCun-normal W, zero b), cast to dtype."""
        _, params = self.jaxbp_model().init(key, (1, self.widths[0]))
        return jax.tree.map(lambda a: a.astype(dtype), params)

    def apply(self, params: Params, x: Array) -> Array:
        """The forward pass in plain JAX over jaxbp's params tree: x (m, in) -> (m, out)."""
        if len(params) != len(self.layers()):
            raise ValueError(f"Net.apply: {len(self.layers())} layers, {len(params)} params")
        for kind, p in zip(self.layers(), params):
            x = x @ p["W"] + p["b"] if kind == "dense" else _ACTIVATIONS[kind][1](x)
        return x


def _copy(tree):
    """Fresh buffers for every leaf (the step donates its params), without compiling a copy per
    leaf shape as jnp.copy would."""
    return jax.tree.map(lambda a: jax.device_put(a, may_alias=False), tree)


def _loss(name: str, z: Array, y: Array) -> Array:
    """jaxbp's loss `name` (the mean over the batch), registered with kfac-jax at the weight that
    makes its per-example Hessian jaxbp's: mse is 1/2 ||z - y||^2, kfac-jax's squared error
    ||z - y||^2, so weight 1/2."""
    name = _ALIASES.get(name, name)
    if name == "mse":
        kfac_jax.register_squared_error_loss(z, y, weight=0.5)
        return 0.5 * jnp.sum((z - y) ** 2) / z.shape[0]
    if name == "binary_cross_entropy":
        kfac_jax.register_sigmoid_cross_entropy_loss(z, y)
        return jnp.sum(jax.nn.softplus(z) - y * z) / z.shape[0]
    if name == "softmax_cross_entropy":
        kfac_jax.register_softmax_cross_entropy_loss(z, y)
        logp = jax.nn.log_softmax(z, axis=-1)
        return -jnp.sum(jnp.take_along_axis(logp, y[:, None], axis=-1)) / z.shape[0]
    raise ValueError(
        f"kfac_peer: unknown loss {name!r}; one of mse, binary_cross_entropy "
        "(alias sigmoid_cross_entropy), softmax_cross_entropy"
    )


class KfacPeer:
    """kfac_jax.Optimizer on `net` and `loss` with fixed learning rate, momentum and damping.

    Curvature updated every step (kfac-jax's default), inverses every `inverse_period` steps,
    no burn-in (kfac-jax's default is 10 steps of factor averaging before the first update),
    l2_reg=0 (kfac-jax adds it to the damping only). estimation_mode: "ggn_curvature_prop"
    (kfac-jax's default: one Rademacher draw through the Hessian's root per step) or
    "ggn_exact" (every column: jaxbp's exact `kfac_factors`), or any other kfac-jax mode.
    """

    def __init__(
        self, net: Net, loss: str, *, learning_rate: float, momentum: float, damping: float,
        curvature_ema: float = 0.95, inverse_period: int = 5,
        estimation_mode: str = "ggn_curvature_prop",
    ):  # fmt: skip
        self.net, self.loss = net, loss
        self.hyper = (learning_rate, momentum, damping)

        def value(params, batch):
            x, y = batch
            return _loss(loss, net.apply(params, x), y)

        self.value = value
        self.optimizer = kfac_jax.Optimizer(
            value_and_grad_func=jax.value_and_grad(value), l2_reg=0.0,
            estimation_mode=estimation_mode, curvature_ema=curvature_ema,
            inverse_update_period=inverse_period, num_burnin_steps=0, multi_device=False,
        )  # fmt: skip

    def init(self, params: Params, key: PRNGKey, batch: tuple[Array, Array]):
        """kfac-jax's state for params; batch: one of the size every step will get."""
        return self.optimizer.init(_copy(params), key, batch)

    def _step(self, params, state, key, batch):
        """One kfac-jax step as `Optimizer.step` runs it (past its host-side argument checks):
        the factors updated, the inverses refreshed when the counter is a multiple of the
        period, the update applied. Returns (params, state, loss before the update)."""
        lr, momentum, damping = (jnp.asarray(h, jnp.result_type(float)) for h in self.hyper)
        params, state, stats = self.optimizer._step(
            params, state, key, batch, None, lr, momentum, damping, True, False
        )
        return params, state, stats["loss"]

    def compile(self, params: Params, state, batch: tuple[Array, Array]):
        """The step compiled for these shapes, params and state donated as kfac-jax does, and
        its memory: (compiled, bytes), bytes = arguments + outputs + temporaries - aliased, XLA's
        planned peak of the step (-1 where the backend reports none)."""
        key = jax.random.PRNGKey(0)
        compiled = jax.jit(self._step, donate_argnums=(0, 1)).lower(
            params, state, key, batch
        ).compile()  # fmt: skip
        stats = compiled.memory_analysis()
        peak = -1 if stats is None else int(
            stats.argument_size_in_bytes + stats.output_size_in_bytes
            + stats.temp_size_in_bytes - stats.alias_size_in_bytes
        )  # fmt: skip
        return compiled, peak

    def run(
        self, params: Params, batches: Iterable[tuple[Array, Array]], steps: int, *,
        key: PRNGKey,
    ) -> dict[str, Any]:  # fmt: skip
        """`steps` kfac-jax steps from params (copied, never donated), one batch each.

        Returns {"loss": (steps,) the loss on each step's batch before its update, "seconds":
        (steps,) wall time of each step (compiled beforehand, so no compile time; each step
        waited for), "memory_bytes": the compiled step's planned peak, "compile_seconds",
        "params", "state"}. The key is split once per step (kfac-jax's Rademacher draws).
        """
        batches = iter(batches)
        first = next(batches)
        state = self.init(params, key, first)
        t0 = time.perf_counter()
        compiled, memory = self.compile(_copy(params), state, first)
        compile_seconds = time.perf_counter() - t0
        params = _copy(params)
        losses, seconds = np.zeros(steps), np.zeros(steps)
        batch = first
        for t in range(steps):
            key, sub = jax.random.split(key)
            t0 = time.perf_counter()
            params, state, value = compiled(params, state, sub, batch)
            jax.block_until_ready((params, state))
            seconds[t] = time.perf_counter() - t0
            losses[t] = float(value)
            batch = next(batches) if t + 1 < steps else batch
        return {"loss": losses, "seconds": seconds, "memory_bytes": memory,
                "compile_seconds": compile_seconds, "params": params, "state": state}  # fmt: skip

    def factors(self, state, path: int | tuple[int]) -> dict[str, Array]:
        """The running factors {"A": (in + 1, in + 1), "G": (out, out)} of the Dense at `path`
        (its index in the serial, or `kfac_factors`' key (i,)), in jaxbp's convention: kfac-jax's
        are the same matrices (A = mean of [x, 1][x, 1]^T, the bias last; G = mean over examples
        of the output-gradient outer products of the per-example loss), scale 1."""
        index = path[0] if isinstance(path, tuple) else path
        if index not in [p[0] for p in self.net.dense_paths()]:
            raise ValueError(
                f"KfacPeer.factors: layer {index} is not a Dense; Dense paths: "
                f"{self.net.dense_paths()}"
            )
        blocks = self.optimizer._estimator.params_block_index
        block = blocks[index]["W"]
        if blocks[index]["b"] != block:
            raise ValueError(f"KfacPeer.factors: W and b of layer {index} are in different blocks")
        a, g = state.estimator_state.blocks_states[block].factors
        return {"A": a.value, "G": g.value}


def digits_batches(
    batch: int, *, task: str = "autoencoder", seed: int = 0, data: Sequence | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """Endless minibatches of jaxbp's digits train split (1,437 images, 64 pixels in [0, 1]):
    each epoch a fresh permutation (numpy, seeded), the last partial batch dropped so every batch
    has one shape. task="autoencoder": (x, x); "classifier": (x, labels int32)."""
    if task not in ("autoencoder", "classifier"):
        raise ValueError(f"digits_batches: task must be autoencoder or classifier, got {task!r}")
    if data is None:
        from jaxbp import datasets

        data = datasets.load("digits")[0]
    x, labels = data
    if not 0 < batch <= len(x):
        raise ValueError(f"digits_batches: batch must be in [1, {len(x)}], got {batch}")
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(x))
        for start in range(0, len(x) - batch + 1, batch):
            i = order[start : start + batch]
            yield x[i], (x[i] if task == "autoencoder" else labels[i])
