"""Training: whole epochs compiled as one `lax.scan` inside `jit`, with any optax optimizer.

Policy for the last partial batch: every epoch shuffles the data and runs floor(n / batch_size)
full batches; the n mod batch_size examples left over sit out that epoch only (a different few each
epoch), so every step has the same shape and nothing recompiles. A batch_size larger than the data
is lowered to the data's size.

Data parallel: with several devices (all of them by default), each batch is split over a
one-axis mesh ("batch"), parameters are replicated, and XLA inserts the gradient all-reduce.
Multi-process (multi-host): call `jax.distributed.initialize()` first in every process, then `fit`
with the same arguments in each; the default devices are then every process's. Each process holds
the whole dataset and builds its shards of the global arrays from its own copy; fit checks that
data, parameters, key and resume epoch are the same everywhere, then runs one program. Process 0
alone writes checkpoints; resuming reads the checkpoint in every process, so its folder must be on
a filesystem they all see.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from jaxbp import _fit_setup as setup  # argument checks, eval scoring, device placement
from jaxbp import _multihost, checkpoint
from jaxbp._epoch import compile_eval, epoch_program, make_epoch, make_step
from jaxbp._progress import Progress
from jaxbp._state import refuse_dropped_state
from jaxbp._types import Array, Params, PRNGKey
from jaxbp.protocols import State

__all__ = [
    "fit",
    "make_step",
    "make_epoch",
    "TrainingDiverged",
    "CHECKPOINT_NAME",
    "ENGINES",
]

ENGINES = setup.ENGINES  # grad="backprop" or "autodiff"
"""The gradient engines `grad=` names: "backprop" (the hand-written rules) and "autodiff"
(`jax.value_and_grad`)."""
CHECKPOINT_NAME = "checkpoint.npz"
"""The checkpoint's file name inside `checkpoint_dir`."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or inf; `params` and `history` are the last good ones."""

    def __init__(self, message: str, params: Params, history: dict, state: State = None):
        super().__init__(message)
        self.params, self.history, self.state = params, history, state


def fit(
    model: Any,
    loss: Any,
    params: Params,
    train_data: tuple[Array, Array],
    *,
    optimizer: optax.GradientTransformation,
    epochs: int,
    batch_size: int,
    key: PRNGKey,
    grad: str | Callable = "backprop",
    eval_data: tuple[Array, Array] | None = None,
    devices: Sequence[jax.Device] | None = None,
    progress: bool | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    on_epoch: Callable[[int, dict], None] | None = None,
    state: State = None,
    accuracy: bool | None = None,
) -> tuple:
    """Train `params` for `epochs` epochs; returns (params, history).

    state: a model that keeps state (BatchNorm's running statistics) trains with
    state=init_state(model, params), and fit then returns (params, state, history); evaluation
    runs eval_mode(model) on that state. Stochastic layers (Dropout) get a key per step.

    train_data: (x: (n, ...), y: (n, ...)). grad: "backprop", "autodiff", or any function with
    backprop's signature (e.g. a feedback-alignment engine). optimizer: any optax transformation;
    one with a `gradients` method (jaxbp.kfac's K-FAC) makes each step's gradient itself, from
    backprop's sweep, with what its update needs besides (K-FAC's factors). `history["loss"][e]`
    is the mean training loss of epoch e; with eval_data, "eval_loss" and (for classification)
    "eval_accuracy" too.
    accuracy: None scores eval_data's predictions right or wrong where the loss and labels say
    how (class labels, one-hot rows, binary cross-entropy, or MSE on targets all 0 or 1); False
    never (a regression whose targets happen to be 0/1); True insists (ValueError if they do not).
    checkpoint_dir: save params, optimizer state and history every `checkpoint_every` epochs and at
    the end; with resume=True, continue from the checkpoint found there. The same key gives the same
    bits, resumed or not. progress: None shows a bar when stderr is a terminal. devices: default
    jax.devices(), every process's after jax.distributed.initialize(); when they span processes,
    only process 0 writes the checkpoint and every process returns the same params and history.
    """
    engine = setup.engine_for(grad)
    stateful = state is not None
    if not stateful:
        remedy = "pass state=jaxbp.layers.init_state(model, params); fit then returns "
        remedy += "(params, state, history)"
        refuse_dropped_state("fit", model, params, remedy)
    x, y = setup.validate_data("train_data", train_data, model, params)
    if eval_data is not None:
        setup.validate_data("eval_data", eval_data, model, params)
    setup.validate_counts(epochs=epochs, batch_size=batch_size, checkpoint_every=checkpoint_every)
    scoring = setup.accuracy_kind(loss, eval_data, accuracy)
    batch_size = min(batch_size, len(x))
    mesh = setup.mesh_for(devices, batch_size)
    opt_state = optimizer.init(params)
    history, start = _empty_history(eval_data, scoring), 0
    path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if resume and path is not None and path.exists():
        params, state, opt_state, history, start = _restore(path, params, state, opt_state, key)
    shared = _multihost.spans_processes(mesh)
    if shared:
        setup.check_processes_agree(start, (x, y), eval_data, (params, state), opt_state, key)
    steps = len(x) // batch_size
    run_epoch = epoch_program(
        model, loss, optimizer, engine, batch_size=batch_size, steps=steps, mesh=mesh,
        stateful=stateful,
    )  # fmt: skip
    run_eval = compile_eval(model, loss, scoring)
    (params, state), opt_state, x, y = setup.place(mesh, (params, state), opt_state, x, y)
    eval_arrays = setup.place_eval(mesh, eval_data)
    bar = Progress(epochs, enabled=progress)
    try:
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            new_params, new_state, new_opt_state, mean_loss = run_epoch(
                params, state, opt_state, x, y, jax.random.fold_in(key, epoch)
            )
            metrics = {"loss": float(mean_loss)}
            if not math.isfinite(metrics["loss"]):
                if path is not None and history["loss"]:  # the message names this file
                    save = functools.partial(
                        _save, path, params, opt_state, history, key, epoch, state
                    )
                    _multihost.run_once(save, shared=shared)
                raise _diverged(epoch, metrics["loss"], params, history, path, state)
            params, state, opt_state = new_params, new_state, new_opt_state
            if eval_data is not None:
                metrics |= _evaluate(run_eval, params, state, eval_arrays)
            if hasattr(engine, "epoch_metrics"):  # e.g. DP-SGD's epsilon after all steps so far
                done = {"steps": (epoch + 1) * steps, "n": len(x), "batch_size": batch_size}
                metrics |= engine.epoch_metrics(**done)
            metrics["epoch_time"] = time.perf_counter() - t0
            for name, value in metrics.items():
                history.setdefault(name, []).append(value)
            if path is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs):
                save = functools.partial(
                    _save, path, params, opt_state, history, key, epoch + 1, state
                )
                _multihost.run_once(save, shared=shared)
            if on_epoch is not None:
                on_epoch(epoch + 1, metrics)
            bar.update(
                epoch + 1,
                "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "epoch_time"),
            )
    finally:
        bar.close()
    return (params, state, history) if stateful else (params, history)


def _evaluate(run_eval: Callable, params: Params, state, data: tuple[Array, Array]) -> dict:
    """Eval loss (and accuracy when the task has one) of params on data, as plain floats."""
    value, accuracy = run_eval(params, state, *data)
    out = {"eval_loss": float(value)}
    if accuracy is not None:
        out["eval_accuracy"] = float(accuracy)
    return out


# ---------------------------------------------------------------------------------------------
# History and checkpoints


def _empty_history(eval_data, scoring: str | None) -> dict[str, list]:
    names = ["loss", "epoch_time"] + ([] if eval_data is None else ["eval_loss"])
    return {name: [] for name in names + ([] if scoring is None else ["eval_accuracy"])}


def _save(path: Path, params, opt_state, history, key, epoch: int, state=None) -> None:
    metadata = {
        "epoch": epoch,
        "history": history,
        "key": np.asarray(jax.random.key_data(key)).tolist(),
    }
    tree = {"params": params, "opt_state": opt_state}
    checkpoint.save(path, tree | ({} if state is None else {"state": state}), metadata=metadata)


def _restore(path: Path, params, state, opt_state, key):
    like = {"params": params, "opt_state": opt_state} | ({} if state is None else {"state": state})
    saved, metadata = checkpoint.load(path, like=like)
    if metadata.get("key") != np.asarray(jax.random.key_data(key)).tolist():
        raise ValueError(
            f"{path} was written by a run with a different key; resume with the same seed"
        )
    history = {name: list(values) for name, values in metadata["history"].items()}
    return (
        saved["params"], saved.get("state"), saved["opt_state"], history, int(metadata["epoch"])
    )  # fmt: skip


def _diverged(epoch, value, params, history, path, state=None) -> TrainingDiverged:
    """Epoch `epoch` (0-based) had a NaN/inf loss; fit has saved the last good one to `path`."""
    done = len(history["loss"])
    if not done:
        kept = "no epoch had finished, so there are no parameters to keep"
    elif path is None:
        kept = f"kept the parameters of epoch {done} (TrainingDiverged.params)"
    else:
        kept = f"kept the parameters of epoch {done} in {path}"
    message = (
        f"training loss became {value} in epoch {epoch + 1}; stopped: {kept} "
        "(try a lower learning rate)"
    )
    return TrainingDiverged(message, params, history, state)
