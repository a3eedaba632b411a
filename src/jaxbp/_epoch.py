"""The compiled programs of training, public through `jaxbp.train`: one optimizer step
(`make_step`), one epoch as a `lax.scan` (`make_epoch`), and evaluation. Keys and state reach the
gradient engine as fit passes them; a model whose state a program would drop is refused."""

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
from jaxbp._state import refuse_dropped_state
from jaxbp.layers.mode import eval_mode
from jaxbp.protocols import forward_state

__all__ = ["make_step", "make_epoch", "epoch_program", "compile_eval"]


def make_step(
    model: Any,
    loss: Any,
    optimizer: optax.GradientTransformation,
    grad: str | Callable = "backprop",
) -> Callable:
    """One optimizer step on one batch, jitted, donating params, opt_state and state:

        step(params, opt_state, x, y, *, key=None, state=None) -> (params, opt_state, loss)
        with state=...                         -> (params, state, opt_state, loss)

    x: (batch, ...), y: (batch, ...). The engine gets key= and state= as fit's step passes them
    (each only when given). A model with Dropout in training needs key= (a fresh one each step,
    e.g. fold_in(key, step)); one that keeps state (BatchNorm) needs state=, first
    init_state(model, params), then the state the last step returned: without it the step
    raises ValueError naming the layers when it traces (before anything runs or is donated),
    rather than drop their running statistics.

    An optimizer with a `gradients` method (jaxbp.kfac) makes the gradient itself, from
    backprop's sweep, and passes its update what it needs besides (K-FAC's factors).

    An engine that asks for Poisson sampling (engine.sampling == "poisson", DP-SGD) is refused:
    that sampling draws each step's examples from the whole training set, which one step on a
    given batch does not have, and the accountant's epsilon holds only for it. fit and
    make_epoch sample for such an engine.
    """
    engine = setup.engine_for(grad)
    if getattr(engine, "sampling", None) == "poisson":
        raise ValueError(
            f"make_step: {engine!r} asks for Poisson sampling, which draws each step's batch "
            "from the whole training set; a step on a given batch is not that sampling and the "
            "accountant's epsilon would not hold for it: train with fit or make_epoch"
        )
    remedy = (
        "pass state=jaxbp.layers.init_state(model, params), then the state each step returns: "
        "step(params, opt_state, x, y, state=state) -> (params, state, opt_state, loss)"
    )

    gradients = setup.step_gradients(engine, optimizer)

    def step(params, opt_state, x, y, *, key=None, state=None):
        options = {} if key is None else {"key": key}
        if state is None:
            refuse_dropped_state("make_step", model, params, remedy)
        else:
            options["state"] = state
        value, grads, state, extra = gradients(model, loss, params, x, y, opt_state, **options)
        with jax.named_scope("optimizer"):
            updates, opt_state = optimizer.update(grads, opt_state, params, **extra)
            params = optax.apply_updates(params, updates)
        return (params, opt_state, value) if state is None else (params, state, opt_state, value)

    return jax.jit(step, donate_argnames=("params", "opt_state", "state"))


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

    It shuffles x: (n, ...) and y with key, then scans `steps` optimizer steps of `batch_size`,
    step i's engine getting key fold_in(k, i) (Dropout's masks) as in fit. A model that keeps
    state needs stateful=True: without it the epoch raises ValueError naming the layers.
    """
    epoch = epoch_program(
        model, loss, optimizer, grad, batch_size=batch_size, steps=steps, mesh=mesh,
        stateful=stateful,
    )  # fmt: skip
    if stateful:
        return epoch
    remedy = (
        "make_epoch(..., stateful=True) carries it: "
        "(params, state, opt_state, x, y, key) -> (params, state, opt_state, loss)"
    )

    def stateless(params, opt_state, x, y, key):
        refuse_dropped_state("make_epoch", model, params, remedy)
        params, _, opt_state, value = epoch(params, (), opt_state, x, y, key)
        return params, opt_state, value

    return jax.jit(stateless)  # so the check above runs once, when it traces


def epoch_program(model, loss, optimizer, grad, *, batch_size, steps, mesh, stateful) -> Callable:
    """make_epoch's program, state carried beside params (() for a stateless model)."""
    engine = setup.engine_for(grad)
    batch = None if mesh is None else NamedSharding(mesh, PartitionSpec("batch"))

    def epoch(params, state, opt_state, x, y, key):
        shuffle_key, step_key = jax.random.split(key)
        order = permutation(shuffle_key, len(x))[: steps * batch_size]
        # The engine itself, or for one that asks for Poisson sampling (DP-SGD) its own batches.
        grad_fn = _sampling.for_epoch(engine, x, y, batch_size=batch_size, shard=batch)
        gradients = setup.step_gradients(grad_fn, optimizer)

        def step(carry, inputs):
            params, state, opt_state = carry
            i, idx = inputs
            xb, yb = x[idx], y[idx]
            if batch is not None:  # split the batch over devices; XLA all-reduces the gradient
                xb, yb = jax.lax.with_sharding_constraint((xb, yb), batch)
            k = jax.random.fold_in(step_key, i)
            options = {"key": k} | ({"state": state} if stateful else {})
            value, grads, new_state, extra = gradients(
                model, loss, params, xb, yb, opt_state, **options
            )
            state = new_state if stateful else state
            updates, opt_state = optimizer.update(grads, opt_state, params, **extra)
            return (optax.apply_updates(params, updates), state, opt_state), value

        indices = (jnp.arange(steps), order.reshape(steps, batch_size))
        carry, values = jax.lax.scan(step, (params, state, opt_state), indices)
        return (*carry, values.mean())

    return jax.jit(epoch)


def compile_eval(model, loss, scoring: Callable | None) -> Callable:
    """Evaluation runs the model in evaluation mode (Dropout off, BatchNorm's running stats)."""
    model = eval_mode(model)

    def run(params, state, x, y):
        if state is None:
            y_pred = model.apply(params, x)
        else:
            y_pred = forward_state(model, params, state, x)[0]
        return loss.apply(y_pred, y), setup.accuracy_of(scoring, y_pred, y)

    return jax.jit(run)
