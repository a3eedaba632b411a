"""Sequence benchmark configs: a small GPT and a character LSTM on next-token prediction, with
PyTorch eager, torch.compile and (for the LSTM) nn.LSTM as peers on the same network.

The data are random token ids (timing does not depend on them): x (batch, T) and the targets
y (batch, T), softmax cross-entropy averaged over batch and time, as a language model's.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp.bench._report import _r, _t, peer_cells
from jaxbp.bench._timing import interleaved, ratio
from jaxbp.bench.mlp import _stepper
from jaxbp.layers import char_rnn, gpt
from jaxbp.losses import get as get_loss
from jaxbp.train import make_step

LR = 1e-2  # plain SGD in every framework: the update is the same few elementwise ops
# Peers, in table order: each is (framework, compiled, nn.LSTM instead of a loop of cells).
TORCH_PEERS = {
    "torch": (False, False),
    "torch_compile": (True, False),
    "nn_lstm": (False, True),
}


@dataclasses.dataclass(frozen=True)
class SequenceConfig:
    """A sequence benchmark: gpt(vocab, context, **options) or char_rnn(vocab, **options) on
    random ids (batch, context)."""

    name: str
    builder: str
    options: tuple[tuple[str, Any], ...]
    context: int
    batch: int
    vocab: int = 28  # a character vocabulary: 26 letters, a boundary and a pad
    loss: str = "softmax_cross_entropy"

    def model(self):
        if self.builder == "gpt":
            return gpt(self.vocab, self.context, **dict(self.options))
        return char_rnn(self.vocab, **dict(self.options))

    def describe(self) -> str:
        options = ", ".join(f"{k}={v}" for k, v in self.options)
        return (
            f"{self.builder}(vocab {self.vocab}, {options}) on random ids, context "
            f"{self.context}, {self.loss} over every position, batch {self.batch}"
        )

    def problem(self):
        """(model, loss, params, state, x, y); state is None (no BatchNorm here)."""
        model, loss = self.model(), get_loss(self.loss)
        kp, kx, ky = jax.random.split(jax.random.PRNGKey(0), 3)
        _, params = model.init(kp, (self.context,))
        x = jax.random.randint(kx, (self.batch, self.context), 0, self.vocab)
        y = jax.random.randint(ky, (self.batch, self.context), 0, self.vocab)
        return model, loss, params, None, x, y

    @property
    def recurrent(self) -> bool:
        return self.builder == "char_rnn"


CONFIGS = {
    "gpt": SequenceConfig(
        "gpt", "gpt", (("num_layers", 4), ("features", 128), ("num_heads", 4)), 32, 64
    ),
    "lstm": SequenceConfig(
        "lstm", "char_rnn", (("cell", "lstm"), ("embed", 64), ("hidden", 256)), 32, 64
    ),
}


@functools.cache
def _make_step(config: SequenceConfig, grad: str) -> Callable:
    """The jitted step, one per config and engine: the step and peers phases share its compile."""
    model, loss = config.model(), get_loss(config.loss)
    return make_step(model, loss, optax.sgd(LR), grad)


def _jax_steps(config: SequenceConfig) -> dict[str, Callable]:
    """An optax SGD step with each gradient engine, buffers donated, ready to time."""
    _, _, params, _, x, y = config.problem()
    opt_state = optax.sgd(LR).init(params)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731 - donation consumes buffers
    return {
        name: _stepper(_make_step(config, name), copy(params), copy(opt_state), x, y)
        for name in ("backprop", "autodiff")
    }


def step_candidates(config: SequenceConfig) -> dict[str, Callable]:
    return _jax_steps(config)


def peer_times(config: SequenceConfig, reps: int, *, settle: float, compiled: bool = True) -> dict:
    """Per-step time of the jitted jaxbp step (backprop; "jax_grad": the same step with
    jax.grad) next to PyTorch eager, torch.compile and, for the LSTM, nn.LSTM: same network,
    same starting params, plain SGD at the same learning rate, interleaved."""
    steps = _jax_steps(config)
    fns = {"jaxbp": steps["backprop"], "jax_grad": steps["autodiff"]}
    missing: dict[str, str] = {}
    for name, (compile_it, fused) in TORCH_PEERS.items():
        if fused and not config.recurrent:
            continue
        why = _add_torch_peer(fns, name, config, compile_it, fused, quick=not compiled)
        if why:
            missing[name] = why
    t = interleaved(fns, reps=reps, settle=settle)
    return (
        {f"{name}_s": float(np.median(v)) for name, v in t.items()}
        | {f"{name}_over_jaxbp": ratio(v, t["jaxbp"]) for name, v in t.items() if name != "jaxbp"}
        | ({"missing": missing} if missing else {})
    )


def _add_torch_peer(fns, name, config, compile_it, fused, *, quick) -> str | None:
    """Add one PyTorch peer (plain SGD) to fns, or say why not."""

    def build(torch_seq, model, params):
        return torch_seq.sgd_step(model, params, lr=LR, compiled=compile_it, fused_lstm=fused)

    return torch_peer(fns, name, config, build, compiled=compile_it, quick=quick)


def torch_peer(fns, name, config, build, *, compiled: bool, quick: bool) -> str | None:
    """Add fns[name], the step build(torch_seq, model, params) makes for config's problem, or
    say why not: a torch.compile peer is skipped in a quick run, a missing torch or a failing
    first call (which compiles) is reported, not fatal."""
    if compiled and quick:
        return "skipped (quick run)"
    try:
        import torch  # noqa: F401 - first: torch_seq may already be imported

        from jaxbp.bench import torch_seq
    except ImportError:
        return "torch not installed"
    model, _, params, _, x, y = config.problem()
    step = build(torch_seq, model, params)
    xt, yt = step.convert(np.asarray(x), np.asarray(y))
    try:  # the first call compiles; a peer that cannot is reported, not fatal
        step(xt, yt)
    except Exception as error:  # noqa: BLE001 - inductor raises many kinds (no compiler, ...)
        return f"failed: {type(error).__name__}"
    fns[name] = lambda: step(xt, yt)
    return None


PEER_NAMES = {
    "jax_grad": "jaxbp step with jax.grad",
    "torch": "PyTorch eager",
    "torch_compile": "torch.compile",
    "nn_lstm": "nn.LSTM (eager)",
}


def to_markdown(configs: dict) -> str:
    """Each sequence config's jaxbp step (backprop) against every peer timed beside it: the
    peer's time and its paired ratio to the backprop step (> 1: backprop is faster)."""
    header = ["config", "backprop / jax.grad (gradient)", "jaxbp step (backprop)"]
    for peer in PEER_NAMES.values():
        header += [peer, f"{peer} / jaxbp"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, r in configs.items():
        p = r["peers"]
        cells = [name, _r(r["gradient"]["ratio"]), _t(p["jaxbp_s"]), *peer_cells(p, PEER_NAMES)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
