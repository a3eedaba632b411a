"""jax-privacy (Google's DP library for JAX) as a peer of jaxbp's DP-SGD in `bench --quantities`.

jax-privacy's `clipped_grad` is vmap of jax.grad over examples, each example's gradient clipped
by `clip_pytree` and the clipped gradients summed; `microbatch_size` runs the vmap over
microbatches of that many examples in sequence (optax's micro_vmap), summing as it goes.

Its settings, chosen per config by timing the clipped sum alone at each microbatch size (2 cores,
XLA:CPU, jax 0.10.2, jitted; `MICROBATCH_SIZES`). On the MLPs one example per microbatch wins by
far: with more, each Dense layer's per-example gradient x_i^T dy_i is a batched dot_general with a
contraction of size 1, which XLA:CPU runs slowly. On `wide` (batch 512, 1.86M params) the clipped
sum took 36 s (the issue's timing; 75 s here on a loaded machine) at the default, no microbatching,
its program holding 5.2 GB (512 per-example gradients of 7.4 MB and their clipped copies); ~5 s at
microbatches of 2 to 64; 0.3-0.7 s and 13 MB at 1. On `digits` 17 ms at the default, 2-3 ms at 2 to
32 and 1.6-2 ms at 1. With one example the vmap is a plain forward and backward per example in a
loop, at most one per-example gradient alive. On `gpt` too (each example has 32 positions, so no
contraction of 1, yet): 0.44 s at 1, 0.70 s at 4, 0.74 s at 16, 0.79 s at the default. On `cnn` the
default wins: vmap turns each convolution into one grouped convolution over the batch, 19 ms
against 60 ms at 8 and 67 ms at 1. nan_safe=False: jaxbp's clipping does not sanitise NaNs either,
so both do the same arithmetic (the default, True, adds a pass over every gradient).

The DP-SGD step follows jax-privacy's own recipe (its keras_api): batches by
`CyclicPoissonSampling` (Poisson sampling, truncated to the batch's capacity) padded to a fixed
size by `split_and_pad_global_batch`, so one compiled step serves every draw; the padding rows
flagged `is_padding_example` (their gradients zeroed, and trailing padded microbatches skipped);
`clipped_grad(..., normalize_by=expected batch size)`; Gaussian noise from `gaussian_privatizer`
with stddev noise_multiplier x the callable's l2_norm_bound; then optax SGD.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

# The fastest microbatch size per config (module docstring); None: one vmap over the batch.
MICROBATCH_SIZES = {"digits": 1, "wide": 1, "cnn": None, "gpt": 1}
MICROBATCH_SIZE = 1  # a config not timed: an MLP, most likely (--model)
NAN_SAFE = False  # the same arithmetic as jaxbp's clipping, which does not sanitise NaNs
POOL = 8  # the sampled dataset: POOL x batch examples, example i being row i % batch
DRAWS = 16  # Poisson draws made before timing and cycled through, like jaxbp's unsampled step
NAMES = ("jax-privacy clipped_grad", "jax-privacy clip", "jax-privacy")


def missing() -> str | None:
    """Why jax-privacy cannot run here, or None."""
    try:
        import jax_privacy  # noqa: F401
    except ImportError:
        return "jax-privacy not installed"
    return None


def clipped_grad(
    model, loss, *, clip_norm: float, normalize_by: float = 1.0,
    microbatch_size: int | None = MICROBATCH_SIZE, **options,
):  # fmt: skip
    """jax-privacy's sum of clipped per-example gradients of loss(model(params, x_i), y_i),
    divided by normalize_by: f(params, x, y, *, is_padding_example=None) -> params-shaped
    (with return_values=True in options, (grads, Aux) whose .values are the L_i)."""
    from jax_privacy import clipping

    def one(params, x, y):  # x, y: one example with its batch axis of 1 (keep_batch_dim)
        return loss.apply(model.apply(params, x), y)

    settings = {"microbatch_size": microbatch_size, "nan_safe": NAN_SAFE} | options
    return clipping.clipped_grad(
        one, l2_clip_norm=clip_norm, normalize_by=normalize_by, batch_argnums=(1, 2), **settings
    )


def poisson_draws(batch: int, microbatch_size: int | None, *, seed: int = 0) -> np.ndarray:
    """(DRAWS, batch) example indices, -1 for padding: jax-privacy's Poisson sampling of expected
    size batch from POOL x batch examples, truncated and padded to batch rows."""
    from jax_privacy import batch_selection

    strategy = batch_selection.CyclicPoissonSampling(
        sampling_prob=1 / POOL, iterations=DRAWS, truncated_batch_size=batch
    )
    draws = strategy.batch_iterator(POOL * batch, rng=seed)
    # ordered so that trailing padded microbatches can be skipped
    padded = [
        batch_selection.split_and_pad_global_batch(d, batch, microbatch_size)[0] for d in draws
    ]
    return np.stack(padded).astype(np.int32)


def candidates(
    model, loss, params, x, y, *, clip_norm: float, noise_multiplier: float, lr: float,
    microbatch_size: int | None = MICROBATCH_SIZE,
) -> dict[str, tuple[Callable, int]]:  # fmt: skip
    """{name: (call, compiled temp + output bytes)}: the clipped sum alone, an SGD step on the
    clipped mean without noise (jaxbp's "dp clip step"), and the DP-SGD step with Poisson
    sampling and noise (jaxbp's "dp_sgd step")."""
    b, mb = len(x), microbatch_size
    options = {"clip_norm": clip_norm, "microbatch_size": mb}
    total = jax.jit(clipped_grad(model, loss, **options)).lower(params, x, y).compile()
    clip = clipped_grad(model, loss, normalize_by=b, return_values=True, **options)

    def clip_step(params, opt_state, noise_state, idx):
        grads, aux = clip(params, x, y)
        return grads, jnp.mean(aux.values), noise_state

    return {
        NAMES[0]: ((lambda: jax.block_until_ready(total(params, x, y))), _memory(total)),
        NAMES[1]: _stepped(clip_step, params, lr, None, np.zeros((1, b), np.int32)),
        NAMES[2]: _dp_step(model, loss, params, x, y, clip_norm, noise_multiplier, lr, mb),
    }


def _dp_step(model, loss, params, x, y, clip_norm, noise_multiplier, lr, mb):
    from jax_privacy import noise_addition

    b, options = len(x), {"clip_norm": clip_norm, "microbatch_size": mb}
    clip = clipped_grad(model, loss, normalize_by=b, return_values=True, **options)
    stddev = noise_multiplier * clip.l2_norm_bound  # noise_multiplier x C / b
    privatizer = noise_addition.gaussian_privatizer(stddev=stddev, prng_key=jax.random.key(1))

    def dp_step(params, opt_state, noise_state, idx):
        padding = idx < 0
        rows = jnp.where(padding, 0, idx) % b  # padding reads row 0; its gradient is zeroed
        grads, aux = clip(params, x[rows], y[rows], is_padding_example=padding)
        grads, noise_state = privatizer.update(grads, noise_state)
        value = jnp.sum(jnp.where(padding, 0, aux.values)) / jnp.maximum(jnp.sum(~padding), 1)
        return grads, value, noise_state

    return _stepped(dp_step, params, lr, privatizer.init(params), poisson_draws(b, mb))


def _stepped(grad_step, params, lr, noise_state, draws):
    """An optax SGD step around grad_step(params, opt_state, noise_state, idx) -> (grads, value,
    noise_state), carried from call to call with its buffers donated, cycling through draws."""
    opt = optax.sgd(lr)

    def step(params, opt_state, noise_state, idx):
        grads, value, noise_state = grad_step(params, opt_state, noise_state, idx)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, noise_state, value

    carry = [jax.tree.map(jnp.copy, params), opt.init(params), noise_state]
    draws = [jnp.asarray(d) for d in draws]
    compiled = jax.jit(step, donate_argnums=(0, 1, 2)).lower(*carry, draws[0]).compile()
    count = [0]

    def call():
        idx = draws[count[0] % len(draws)]
        count[0] += 1
        carry[0], carry[1], carry[2], value = compiled(*carry, idx)
        jax.block_until_ready(value)

    return call, _memory(compiled)


def _memory(compiled) -> int:
    stats = compiled.memory_analysis()
    return -1 if stats is None else int(stats.temp_size_in_bytes + stats.output_size_in_bytes)
