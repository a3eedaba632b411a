"""The compiled programs of training, public through `jaxbp.train`: one optimizer step
(`make_step`), one epoch as a `lax.scan` (`make_epoch`), and evaluation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxbp import _fit_setup as setup  # the engine for grad=, accuracy scoring
from jaxbp import _sampling
from jaxbp._shuffle import permutation
from jaxbp.layers.protocol import eval_mode, forward_state

__all__ = ["make_step", "make_epoch", "epoch_program", "compile_eval"]


def make_step(
    model: Any,
    loss: Any,
    optimizer: optax.GradientTransformation,
    grad: str | Callable = "backprop",
) -> Callable:
    """A jitted step (params, opt_state, x, y) -> (params, opt_state, loss); donates its buffers."""
    engine = setup.engine_for(grad)

    def step(params, opt_state, x, y):
        value, grads = engine(model, loss, params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return jax.jit(step, donate_argnums=(0, 1))


def make_epoch(
    model: Any,
    loss: Any,
    optimizer: optax.GradientTransformation,
    grad: str | Callable = "backprop",
    *,
    batch_size: int,
    steps: int,
    mesh: Mesh | None = None,
    stateful: bool = False,
) -> Callable:
    """A whole epoch, jitted: (params, opt_state, x, y, key) -> (params, opt_state, mean loss);
    with stateful=True, (params, state, opt_state, x, y, key) -> (params, state, opt_state, loss).

    It shuffles x: (n, ...) and y with key, then scans `steps` optimizer steps of `batch_size`.
    """
    epoch = epoch_program(
        model, loss, optimizer, grad, batch_size=batch_size, steps=steps, mesh=mesh,
        stateful=stateful,
    )  # fmt: skip
    if stateful:
        return epoch

    def stateless(params, opt_state, x, y, key):
        params, _, opt_state, value = epoch(params, (), opt_state, x, y, key)
        return params, opt_state, value

    return stateless


def epoch_program(model, loss, optimizer, grad, *, batch_size, steps, mesh, stateful) -> Callable:
    """make_epoch's program, state carried beside params (() for a stateless model)."""
    engine = setup.engine_for(grad)
    batch = None if mesh is None else NamedSharding(mesh, PartitionSpec("batch"))

    def epoch(params, state, opt_state, x, y, key):
        shuffle_key, step_key = jax.random.split(key)
        order = permutation(shuffle_key, len(x))[: steps * batch_size]
        # The engine itself, or for one that asks for Poisson sampling (DP-SGD) its own batches.
        grad_fn = _sampling.for_epoch(engine, x, y, batch_size=batch_size, shard=batch)

        def step(carry, inputs):
            params, state, opt_state = carry
            i, idx = inputs
            xb, yb = x[idx], y[idx]
            if batch is not None:  # split the batch over devices; XLA all-reduces the gradient
                xb, yb = jax.lax.with_sharding_constraint((xb, yb), batch)
            k = jax.random.fold_in(step_key, i)
            if stateful:
                value, grads, state = grad_fn(model, loss, params, xb, yb, key=k, state=state)
            else:
                value, grads = grad_fn(model, loss, params, xb, yb, key=k)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), state, opt_state), value

        indices = (jnp.arange(steps), order.reshape(steps, batch_size))
        carry, values = jax.lax.scan(step, (params, state, opt_state), indices)
        return (*carry, values.mean())

    return jax.jit(epoch)


def compile_eval(model, loss, scoring: str | None) -> Callable:
    """Evaluation runs the model in evaluation mode (Dropout off, BatchNorm's running stats)."""
    model = eval_mode(model)

    def run(params, state, x, y):
        if state is None:
            y_pred = model.apply(params, x)
        else:
            y_pred = forward_state(model, params, state, x)[0]
        return loss.apply(y_pred, y), setup.accuracy_of(scoring, y_pred, y)

    return jax.jit(run)
