"""fit's set-up, before anything compiles: its arguments checked (with errors that name the
problem), how its eval data is scored, and where its arrays go on the devices."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxbp import _multihost
from jaxbp._state import init_state
from jaxbp._types import Array
from jaxbp.backprop import autodiff, backprop
from jaxbp.layers.mode import eval_mode
from jaxbp.protocols import forward_state
from jaxbp.walk import leaves

ENGINES: dict[str, Callable] = {"backprop": backprop, "autodiff": autodiff}


def engine_for(grad) -> Callable:
    if callable(grad):
        return grad
    if grad not in ENGINES:
        raise ValueError(
            f"unknown gradient engine {grad!r}; valid: {', '.join(ENGINES)}, "
            "or a function with backprop's signature"
        )
    return ENGINES[grad]


def step_gradients(grad, optimizer) -> Callable:
    """How a training step gets its gradient: a function (model, loss, params, x, y, opt_state,
    **options) -> (value, grads, new state or None, extra keyword arguments for
    optimizer.update). An optimizer with a `gradients` method (K-FAC, jaxbp.kfac, which needs
    its curvature from the same sweep) computes them itself, from backprop's sweep; any other
    gets them from the engine."""
    engine = engine_for(grad)
    own = getattr(optimizer, "gradients", None)
    if own is not None:
        if engine is not backprop:
            raise ValueError(
                f"{optimizer!r} computes the gradient with its curvature, in backprop's sweep: "
                f"train it with grad='backprop', not {getattr(engine, '__name__', engine)!r}"
            )

        def run(model, loss, params, x, y, opt_state, **options):
            return own(model, loss, params, x, y, opt_state=opt_state, **options)

        return run

    def run(model, loss, params, x, y, opt_state, **options):
        if "state" in options:
            value, grads, state = engine(model, loss, params, x, y, **options)
        else:
            (value, grads), state = engine(model, loss, params, x, y, **options), None
        return value, grads, state, {}

    return run


def validate_counts(**counts: int) -> None:
    for name, value in counts.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


def validate_data(name: str, data, model, params) -> tuple[Array, Array]:
    """data as fit needs it: check_arrays, then labels against the model's outputs."""
    x, y = check_arrays(name, data, model)
    check_labels(name, y, output_shape(model, params, x))
    return x, y


def check_arrays(name: str, data, model) -> tuple[Array, Array]:
    """A pair (x, y) of arrays, as many examples each, finite, and ids the model's first layer
    takes; nothing traced, so every error here is about the data."""
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
    first = next(leaves(model))[1]
    if np.issubdtype(np.asarray(x).dtype, np.integer) and hasattr(first, "check_ids"):
        try:  # the values are known here: out-of-range ids are an error, not NaN rows later
            first.check_ids(np.asarray(x))
        except ValueError as error:
            raise ValueError(f"{name}: x: {error}") from None
    return x, y


def output_shape(model, params, x) -> jax.ShapeDtypeStruct:
    """The model's output for x, traced in evaluation mode from its initial state (so Dropout
    needs no key and BatchNorm has its statistics)."""
    return jax.eval_shape(
        lambda p, x: forward_state(eval_mode(model), p, init_state(model, p), x)[0],
        params,
        jax.ShapeDtypeStruct(x.shape, x.dtype),
    )


def check_labels(name: str, y, out) -> None:
    """Integer class labels must name one of the model's outputs (out: its output's shape)."""
    if np.issubdtype(np.asarray(y).dtype, np.integer) and out.shape[:-1] == y.shape:
        low, high, k = int(np.min(y)), int(np.max(y)), out.shape[-1]
        if low < 0 or high >= k:
            raise ValueError(
                f"{name}: labels span [{low}, {high}] but the model has {k} outputs "
                f"(classes 0..{k - 1})"
            )


def mesh_for(devices, batch_size: int) -> Mesh | None:
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty")
    if len(devices) == 1:
        return None
    if batch_size % len(devices):
        raise ValueError(
            f"batch_size {batch_size} does not split evenly over {len(devices)} devices"
        )
    return Mesh(np.array(devices), ("batch",))


def place(mesh, params, opt_state, x, y):
    if mesh is None:
        return params, opt_state, jnp.asarray(x), jnp.asarray(y)
    replicated = NamedSharding(mesh, PartitionSpec())
    if _multihost.spans_processes(mesh):  # device_put would all-gather the data to compare it
        return _multihost.replicate((params, opt_state, x, y), replicated)
    return jax.device_put((params, opt_state, jnp.asarray(x), jnp.asarray(y)), replicated)


def place_eval(mesh, eval_data):
    """Placed once, not copied to the device again every epoch."""
    if eval_data is None:
        return None
    if _multihost.spans_processes(mesh):
        return _multihost.replicate(tuple(eval_data), NamedSharding(mesh, PartitionSpec()))
    return jax.device_put(tuple(map(jnp.asarray, eval_data)))


def check_processes_agree(start, train_data, eval_data, params, opt_state, key) -> None:
    """Every process must bring the same inputs, or the replicas would silently mix them."""
    data = "each process must hold the whole dataset, identical"
    _multihost.check_same(
        [
            (
                "the epoch to resume from",
                np.int32(start),
                "resuming needs the checkpoint folder on a filesystem every process reads",
            ),
            ("train_data", train_data, data),
            ("eval_data", eval_data, data),
            ("key", jax.random.key_data(key), "pass the same key in every process"),
            (
                "params or optimizer state",
                (params, opt_state),
                "start every process from the same values (same init key, same checkpoint)",
            ),
        ]
    )


# ---------------------------------------------------------------------------------------------
# Scoring the eval data


def accuracy_kind(loss, data, accuracy: bool | None = None) -> Callable | None:
    """How to score predictions as right or wrong, when the loss says its targets have one
    (loss.scorer): a function (y_pred, y) -> fraction right, or None; fit's accuracy= False
    turns it off, True requires one."""
    if accuracy is not None and not isinstance(accuracy, bool):
        raise TypeError(f"fit: accuracy must be True, False or None, got {accuracy!r}")
    if accuracy is True and data is None:
        raise ValueError("fit: accuracy=True scores eval_data; pass eval_data=(x, y)")
    if data is None or accuracy is False:
        return None
    scorer = getattr(loss, "scorer", None)
    kind = None if scorer is None else scorer(np.asarray(data[1]))
    if accuracy is True and kind is None:
        raise ValueError(
            f"fit: accuracy=True, but {loss!r} on these eval labels has no right or "
            "wrong: accuracy needs softmax cross-entropy, binary cross-entropy, or MSE on targets "
            "all 0 or 1 (or a loss with a scorer)"
        )
    return kind


def accuracy_of(kind: Callable | None, y_pred, y):
    """The fraction right by the loss's scorer, or None when the task has none."""
    return None if kind is None else kind(y_pred, y)
