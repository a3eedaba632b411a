"""Character language models on the bundled surnames: two baselines, and sampling from any model.

Why a module: `jaxbp train --model gpt` reports its validation loss next to these baselines, on
the same characters, and `jaxbp sample` generates with `sample`; experiments/char_models.py uses
both.

Data (see `jaxbp.datasets.load("names")`): windows x, y (n, T) int32 of a split's stream
"." + "name1." + ..., y the character after each x. A loss in nats per character is the mean,
over every y[i, t], of -log p(y[i, t] | what the model sees); "." is a character.

- Bigram: p(c | b) = (count(b c) + alpha) / (count(b) + alpha V), counted on the training stream;
  `bigram_loss` is exact (float64).
- makemore's MLP (Bengio et al. 2003, as in Karpathy's makemore): the `block` characters before
  each one, "." before a name's first letter (`block_contexts`), embedded, flattened, one tanh
  layer, logits: Embedding -> Flatten -> Dense -> Tanh -> Dense, trained with `jaxbp.fit`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp import losses
from jaxbp._names import Vocabulary, vocabulary
from jaxbp._types import Array, Params, PRNGKey
from jaxbp.layers import Dense, Embedding, Flatten, Tanh, serial
from jaxbp.train import fit

__all__ = [
    "MLP_DEFAULTS",
    "Vocabulary",
    "bigram",
    "bigram_loss",
    "block_contexts",
    "makemore_mlp",
    "sample",
    "train_mlp",
    "vocabulary",
]

# makemore's MLP: 3 characters of context, 10-d embeddings, 200 tanh units (Karpathy, "Building
# makemore Part 2"), trained with Adam long enough to level off on the validation split.
MLP_DEFAULTS = dict(block=3, embed=10, hidden=200, epochs=10, batch_size=128, lr=3e-3)
"""makemore's MLP settings: 3 characters of context, embedding 10, 200 tanh units."""
END_ID = 0  # "." in every Vocabulary of jaxbp._names


def bigram(x: Array, y: Array, vocab_size: int, *, alpha: float = 1.0) -> np.ndarray:
    """log p(c | b), float64 (V, V): counts of each pair (x[i, t], y[i, t]) plus alpha."""
    if alpha <= 0:
        raise ValueError(f"bigram: alpha must be positive (add-alpha smoothing), got {alpha}")
    counts = np.full((vocab_size, vocab_size), float(alpha))
    np.add.at(counts, (np.ravel(x), np.ravel(y)), 1.0)
    return np.log(counts) - np.log(counts.sum(axis=1, keepdims=True))


def bigram_loss(log_probs: np.ndarray, x: Array, y: Array) -> float:
    """Nats per character: mean of -log p(y[i, t] | x[i, t]), in float64."""
    return float(-np.mean(log_probs[np.ravel(x), np.ravel(y)]))


def block_contexts(x: Array, block: int) -> np.ndarray:
    """(n T, block) int32: for each character of y.ravel(), the `block` characters before it in
    its name, "." (id 0) before the first letter, as makemore's MLP sees them.

    x: (n, T) windows of one stream that starts with "."; x.ravel() is the stream up to the last
    predicted character, so each context is read from there, with every id at or before the
    latest "." replaced by "." (a name never sees the one before it).
    """
    ids = np.asarray(x).ravel()
    if ids.size == 0 or ids[0] != END_ID:
        raise ValueError("block_contexts: x must be windows of a stream that starts with '.'")
    position = np.arange(len(ids))
    last_end = np.maximum.accumulate(np.where(ids == END_ID, position, -1))
    source = position[:, None] - np.arange(block - 1, -1, -1)  # (N, block), oldest first
    inside = source > last_end[:, None]
    return np.where(inside, ids[np.clip(source, 0, None)], END_ID).astype(np.int32)


def makemore_mlp(vocab_size: int, *, embed: int = 10, hidden: int = 200):
    """Embedding(V, embed) -> Flatten -> Dense(hidden) -> Tanh -> Dense(V); input (batch, block)."""
    return serial(Embedding(vocab_size, embed), Flatten(), Dense(hidden), Tanh(), Dense(vocab_size))


def train_mlp(
    train: tuple[Array, Array],
    evaluate: tuple[Array, Array],
    *,
    key: PRNGKey,
    vocab_size: int,
    **settings,
) -> tuple[Any, Params, dict]:
    """makemore's MLP fitted on `train` windows; history["eval_loss"] is nats per character on
    `evaluate`. settings override MLP_DEFAULTS. Returns (model, params, history)."""
    unknown = set(settings) - set(MLP_DEFAULTS)
    if unknown:
        raise TypeError(f"train_mlp: unknown settings {sorted(unknown)}; valid: {MLP_DEFAULTS}")
    s = MLP_DEFAULTS | settings
    model = makemore_mlp(vocab_size, embed=s["embed"], hidden=s["hidden"])
    data = [(block_contexts(x, s["block"]), np.asarray(y).ravel()) for x, y in (train, evaluate)]
    _, params = model.init(jax.random.fold_in(key, 0), (s["block"],))
    steps = s["epochs"] * (len(data[0][0]) // s["batch_size"])
    params, history = fit(
        model, losses.softmax_cross_entropy, params, data[0],
        optimizer=optax.adam(optax.cosine_decay_schedule(s["lr"], steps, alpha=0.05)),
        epochs=s["epochs"], batch_size=s["batch_size"], key=jax.random.fold_in(key, 1),
        eval_data=data[1], progress=False,
    )  # fmt: skip
    return model, params, history


def sample(
    model: Any,
    params: Params,
    key: PRNGKey,
    *,
    context: int,
    count: int = 10,
    temperature: float = 1.0,
    max_length: int = 32,
    vocab: Vocabulary | None = None,
) -> list[str]:
    """`count` names drawn character by character from softmax(logits / temperature), each
    until its first "." (or `max_length` characters).

    A sequence model (batch, T <= context) -> (batch, T, V) sees the last `context` characters,
    "." first, and is read at the last one; a window model (batch, context) -> (batch, V), like
    makemore's MLP, sees the last `context` characters with "." before the name. The same key
    gives the same names.
    """
    _check_sampling(context, count, temperature, max_length)
    vocab = vocab or vocabulary()
    draw = _sampler(model, context, count, max_length)
    ids = np.asarray(draw(params, key, jnp.float32(temperature)))
    names = []
    for row in ids:
        ends = np.flatnonzero(row == END_ID)
        names.append(vocab.decode(row[: ends[0]] if ends.size else row))
    return names


@functools.lru_cache(maxsize=8)  # layers are frozen dataclasses: a model is its own cache key
def _sampler(model, context: int, count: int, max_length: int):
    """(params, key, temperature) -> (count, max_length) ids, drawn one position at a time.

    tokens holds context - 1 "." ids, then the name's "." start, then the draws. A window model
    reads the `context` ids ending at the newest one; a sequence model the `context` ids from the
    name's "." (later, the last `context`), at the newest one's position (the ids after it are
    still "." and, behind the causal mask, unseen).
    """
    pad = context - 1

    def draw(params, key, temperature):
        probe = jax.ShapeDtypeStruct((count, context), jnp.int32)
        sequence = jax.eval_shape(model.apply, params, probe).ndim == 3

        def step(carry, i):
            tokens, key = carry
            newest = pad + i  # index of the last id so far ("." at i = 0)
            first = newest - context + 1
            start = jnp.maximum(first, pad) if sequence else first
            window = jax.lax.dynamic_slice_in_dim(tokens, start, context, axis=1)
            logits = model.apply(params, window)
            if sequence:  # its prediction after the newest id
                logits = jnp.take(logits, newest - start, axis=1)
            key, sub = jax.random.split(key)
            drawn = jax.random.categorical(sub, logits / temperature, axis=-1)
            return (tokens.at[:, newest + 1].set(drawn.astype(jnp.int32)), key), None

        # Room for a whole window from the name's "." even when max_length < context.
        tokens = jnp.full((count, pad + max(context, max_length + 1)), END_ID, jnp.int32)
        (tokens, _), _ = jax.lax.scan(step, (tokens, key), jnp.arange(max_length))
        return tokens[:, pad + 1 : pad + 1 + max_length]

    return jax.jit(draw)


def _check_sampling(context, count, temperature, max_length) -> None:
    for name, value in (("context", context), ("count", count), ("max_length", max_length)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"sample: {name} must be a positive int, got {value!r}")
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(
            f"sample: temperature must be a positive number, got {temperature} "
            "(0 would be greedy decoding, which this sampler does not do)"
        )
