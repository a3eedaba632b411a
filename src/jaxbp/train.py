"""Training: whole epochs compiled as one `lax.scan` inside `jit`, with any optax optimizer.

Policy for the last partial batch: every epoch shuffles the data and runs floor(n / batch_size)
full batches; the n mod batch_size examples left over sit out that epoch only (a different few each
epoch), so every step has the same shape and nothing recompiles. A batch_size larger than the data
is lowered to the data's size.

Data parallel: with several devices (all local devices by default), each batch is split over a
one-axis mesh ("batch"), parameters are replicated, and XLA inserts the gradient all-reduce. For
multi-host runs call `jax.distributed.initialize()` first on every host and pass
`devices=jax.devices()`; each host must hold the whole dataset.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxbp import checkpoint
from jaxbp._progress import Progress
from jaxbp._shuffle import permutation
from jaxbp._types import Array, Params, PRNGKey
from jaxbp.backprop import autodiff, backprop
from jaxbp.losses import MSE, BinaryCrossEntropy, SoftmaxCrossEntropy

__all__ = [
    "fit",
    "make_step",
    "make_epoch",
    "TrainingDiverged",
    "CHECKPOINT_NAME",
    "ENGINES",
]

ENGINES: dict[str, Callable] = {"backprop": backprop, "autodiff": autodiff}
CHECKPOINT_NAME = "checkpoint.npz"


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or inf; `params` and `history` are the last good ones."""

    def __init__(self, message: str, params: Params, history: dict):
        super().__init__(message)
        self.params, self.history = params, history


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
) -> tuple[Params, dict]:
    """Train `params` for `epochs` epochs; returns (params, history).

    train_data: (x: (n, ...), y: (n, ...)). grad: "backprop", "autodiff", or any function with
    backprop's signature (e.g. a feedback-alignment engine). history["loss"][e] is the mean training
    loss of epoch e; with eval_data, "eval_loss" and (for classification) "eval_accuracy" too.
    checkpoint_dir: save params, optimizer state and history every `checkpoint_every` epochs and at
    the end; with resume=True, continue from the checkpoint found there. The same key gives the same
    bits, resumed or not. progress: None shows a bar when stderr is a terminal.
    """
    engine = _engine(grad)
    x, y = _validate_data("train_data", train_data, model, params)
    if eval_data is not None:
        _validate_data("eval_data", eval_data, model, params)
    _validate_counts(epochs=epochs, batch_size=batch_size, checkpoint_every=checkpoint_every)
    batch_size = min(batch_size, len(x))
    mesh = _mesh(devices, batch_size)
    opt_state = optimizer.init(params)
    history, start = _empty_history(eval_data), 0
    path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if resume and path is not None and path.exists():
        params, opt_state, history, start = _restore(path, params, opt_state, key)
    steps = len(x) // batch_size
    run_epoch = make_epoch(
        model, loss, optimizer, engine, batch_size=batch_size, steps=steps, mesh=mesh
    )
    run_eval = _compile_eval(model, loss, _accuracy_kind(loss, eval_data))
    params, opt_state, x, y = _place(mesh, params, opt_state, x, y)
    # Placed once, not copied to the device again every epoch.
    eval_arrays = None if eval_data is None else jax.device_put(tuple(map(jnp.asarray, eval_data)))
    bar = Progress(epochs, enabled=progress)
    try:
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            new_params, new_opt_state, mean_loss = run_epoch(
                params, opt_state, x, y, jax.random.fold_in(key, epoch)
            )
            metrics = {"loss": float(mean_loss)}
            if not math.isfinite(metrics["loss"]):
                raise _diverged(epoch, metrics["loss"], params, history, path)
            params, opt_state = new_params, new_opt_state
            if eval_data is not None:
                metrics |= _evaluate(run_eval, params, eval_arrays)
            metrics["epoch_time"] = time.perf_counter() - t0
            for name, value in metrics.items():
                history[name].append(value)
            if path is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs):
                _save(path, params, opt_state, history, key, epoch + 1)
            if on_epoch is not None:
                on_epoch(epoch + 1, metrics)
            bar.update(
                epoch + 1,
                "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "epoch_time"),
            )
    finally:
        bar.close()
    return params, history


def make_step(
    model: Any,
    loss: Any,
    optimizer: optax.GradientTransformation,
    grad: str | Callable = "backprop",
) -> Callable:
    """A jitted step (params, opt_state, x, y) -> (params, opt_state, loss); donates its buffers."""
    engine = _engine(grad)

    def step(params, opt_state, x, y):
        value, grads = engine(model, loss, params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return jax.jit(step, donate_argnums=(0, 1))


def _evaluate(run_eval: Callable, params: Params, data: tuple[Array, Array]) -> dict[str, float]:
    """Eval loss (and accuracy when the task has one) of params on data, as plain floats."""
    value, accuracy = run_eval(params, *data)
    out = {"eval_loss": float(value)}
    if accuracy is not None:
        out["eval_accuracy"] = float(accuracy)
    return out


# ---------------------------------------------------------------------------------------------
# Compiled pieces


def make_epoch(
    model: Any,
    loss: Any,
    optimizer: optax.GradientTransformation,
    grad: str | Callable = "backprop",
    *,
    batch_size: int,
    steps: int,
    mesh: Mesh | None = None,
) -> Callable:
    """A whole epoch, jitted: (params, opt_state, x, y, key) -> (params, opt_state, mean loss).

    It shuffles x: (n, ...) and y with key, then scans `steps` optimizer steps of `batch_size`.
    """
    engine = _engine(grad)
    batch = None if mesh is None else NamedSharding(mesh, PartitionSpec("batch"))

    def epoch(params, opt_state, x, y, key):
        shuffle_key, step_key = jax.random.split(key)
        order = permutation(shuffle_key, len(x))[: steps * batch_size]

        def step(carry, inputs):
            params, opt_state = carry
            i, idx = inputs
            xb, yb = x[idx], y[idx]
            if batch is not None:  # split the batch over devices; XLA all-reduces the gradient
                xb, yb = jax.lax.with_sharding_constraint((xb, yb), batch)
            value, grads = engine(model, loss, params, xb, yb, key=jax.random.fold_in(step_key, i))
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        indices = (jnp.arange(steps), order.reshape(steps, batch_size))
        (params, opt_state), values = jax.lax.scan(step, (params, opt_state), indices)
        return params, opt_state, values.mean()

    return jax.jit(epoch)


def _compile_eval(model, loss, accuracy_kind: str | None) -> Callable:
    def run(params, x, y):
        y_pred = model.apply(params, x)
        return loss.apply(y_pred, y), _accuracy(accuracy_kind, y_pred, y)

    return jax.jit(run)


def _accuracy_kind(loss, data) -> str | None:
    """How to score predictions as right or wrong, when the task is a classification."""
    if data is None:
        return None
    y = np.asarray(data[1])
    if isinstance(loss, SoftmaxCrossEntropy):
        return "argmax" if np.issubdtype(y.dtype, np.integer) else "argmax_rows"
    if isinstance(loss, BinaryCrossEntropy):
        return "logit"
    if isinstance(loss, MSE) and np.isin(y, (0, 1)).all():
        return "half"  # 0/1 targets fitted with MSE, like the seed's XOR
    return None


def _accuracy(kind, y_pred, y):
    if kind == "argmax":
        return jnp.mean(jnp.argmax(y_pred, -1) == y)
    if kind == "argmax_rows":
        return jnp.mean(jnp.argmax(y_pred, -1) == jnp.argmax(y, -1))
    if kind == "logit":
        return jnp.mean((y_pred > 0) == (y > 0.5))
    if kind == "half":
        return jnp.mean((y_pred > 0.5) == (y > 0.5))
    return None


# ---------------------------------------------------------------------------------------------
# Validation, before anything compiles


def _engine(grad) -> Callable:
    if callable(grad):
        return grad
    if grad not in ENGINES:
        raise ValueError(
            f"unknown gradient engine {grad!r}; valid: {', '.join(ENGINES)}, "
            "or a function with backprop's signature"
        )
    return ENGINES[grad]


def _validate_counts(**counts: int) -> None:
    for name, value in counts.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


def _validate_data(name: str, data, model, params) -> tuple[Array, Array]:
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{name} must be a pair (x, y), got {type(data).__name__}")
    x, y = data
    if not hasattr(x, "shape") or not hasattr(y, "shape"):
        raise TypeError(
            f"{name}: x and y must be arrays, got {type(x).__name__} and {type(y).__name__}"
        )
    if len(x) == 0:
        raise ValueError(f"{name} is empty: x has shape {tuple(x.shape)}")
    if len(x) != len(y):
        raise ValueError(f"{name}: x has {len(x)} examples but y has {len(y)}")
    for part, array in (("x", x), ("y", y)):
        values = np.asarray(array)
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            raise ValueError(f"{name}: {part} has {bad} NaN or inf value(s)")
    out = jax.eval_shape(
        lambda p, x: model.apply(p, x), params, jax.ShapeDtypeStruct(x.shape, x.dtype)
    )
    if np.issubdtype(np.asarray(y).dtype, np.integer) and len(out.shape) == 2:
        low, high, k = int(np.min(y)), int(np.max(y)), out.shape[1]
        if low < 0 or high >= k:
            raise ValueError(
                f"{name}: labels span [{low}, {high}] but the model has {k} outputs "
                f"(classes 0..{k - 1})"
            )
    return x, y


def _mesh(devices, batch_size: int) -> Mesh | None:
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty")
    if len(devices) == 1:
        return None
    if batch_size % len(devices):
        raise ValueError(
            f"batch_size {batch_size} does not split evenly over {len(devices)} devices"
        )
    return Mesh(np.array(devices), ("batch",))


def _place(mesh, params, opt_state, x, y):
    if mesh is None:
        return params, opt_state, jnp.asarray(x), jnp.asarray(y)
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.device_put((params, opt_state, jnp.asarray(x), jnp.asarray(y)), replicated)


# ---------------------------------------------------------------------------------------------
# History and checkpoints


def _empty_history(eval_data) -> dict[str, list]:
    names = ["loss", "epoch_time"] + ([] if eval_data is None else ["eval_loss", "eval_accuracy"])
    return {name: [] for name in names}


def _save(path: Path, params, opt_state, history, key, epoch: int) -> None:
    metadata = {
        "epoch": epoch,
        "history": history,
        "key": np.asarray(jax.random.key_data(key)).tolist(),
    }
    checkpoint.save(path, {"params": params, "opt_state": opt_state}, metadata=metadata)


def _restore(path: Path, params, opt_state, key):
    state, metadata = checkpoint.load(path, like={"params": params, "opt_state": opt_state})
    if metadata.get("key") != np.asarray(jax.random.key_data(key)).tolist():
        raise ValueError(
            f"{path} was written by a run with a different key; resume with the same seed"
        )
    history = {name: list(values) for name, values in metadata["history"].items()}
    return state["params"], state["opt_state"], history, int(metadata["epoch"])


def _diverged(epoch, value, params, history, path) -> TrainingDiverged:
    done = len(history["loss"])
    where = f"; the last checkpoint is {path}" if path is not None and path.exists() else ""
    message = (
        f"training loss became {value} in epoch {epoch + 1}; stopped and kept the parameters "
        f"of epoch {done}{where} (try a lower learning rate)"
    )
    return TrainingDiverged(message, params, history)
