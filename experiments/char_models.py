"""Character models on the bundled surnames: bigram, makemore's MLP, an LSTM and a small GPT.

Every model predicts the next character of the same windows of `datasets.load("names")` (32,000
US surnames of the 1990 Census, split 25,600 / 3,200 / 3,200 by name), and every loss is in nats
per character with the "." ending each name counted (makemore's convention), on exactly the same
characters for all four:

    bigram   counts of character pairs + 1 (add-one), exact (`jaxbp.charlm.bigram`)
    mlp      makemore's MLP: 3 characters of context, 10-d embeddings, 200 tanh units
             (`jaxbp.charlm.train_mlp`, its defaults)
    lstm     Embedding(27, 64) -> LSTM(128) -> Dense(27) over 32-character windows
    gpt      2 pre-norm transformer blocks of width 64, 4 heads, over 32-character windows

The LSTM and the GPT train with the settings `jaxbp train --model lstm|gpt` uses by default, by
`jaxbp.train.fit` with backprop (hand-written rules), AdamW with warm-up and cosine decay. The
table reports validation (model selection) and test (held out, computed once at the end).

Usage:
    python experiments/char_models.py --out experiments/results/char_models [--quick]

Writes results.json (corpus sizes; per model: validation and test nats/char, parameters, training
seconds, the validation loss per epoch, and 10 sampled names) and curves.png (validation loss per
epoch, the bigram as a line). --quick trains tiny models on a slice of the data, for the tests.
"""

from __future__ import annotations

import time

import jax
import numpy as np
import optax
from _common import parse_args, plt, save_figure, write_json

from jaxbp import charlm, datasets, losses
from jaxbp.layers import char_rnn, gpt
from jaxbp.train import fit

CONTEXT = 32  # the CLI's default window: ~4 names
EPOCHS = 12  # where the GPT's validation loss levels off before it overfits (jaxbp train's)
LR, WEIGHT_DECAY = 6e-3, 0.1  # jaxbp train --model gpt|lstm's defaults
BATCH_SIZE = 32  # windows per step: 1,024 characters
SAMPLES = 10
QUICK = dict(context=16, train_windows=400, eval_windows=80, epochs=1, width=16, max_length=12)


def sequence_models(vocab: int, context: int, quick: bool) -> dict:
    if quick:
        return {
            "lstm": char_rnn(vocab, embed=8, hidden=QUICK["width"]),
            "gpt": gpt(vocab, context, num_layers=1, features=QUICK["width"], num_heads=2),
        }
    return {
        "lstm": char_rnn(vocab, hidden=128),
        "gpt": gpt(vocab, context, num_layers=2, features=64, num_heads=4),
    }


def train_sequence(model, train_data, eval_data, epochs: int, key) -> tuple:
    """fit with warm-up and cosine decay; returns (params, history, seconds)."""
    _, params = model.init(jax.random.fold_in(key, 0), train_data[0].shape[1:])
    steps = epochs * (len(train_data[0]) // BATCH_SIZE)
    schedule = optax.warmup_cosine_decay_schedule(0.0, LR, max(steps // 20, 1), steps)
    t0 = time.perf_counter()
    params, history = fit(
        model, losses.softmax_cross_entropy, params, train_data,
        optimizer=optax.adamw(schedule, weight_decay=WEIGHT_DECAY), epochs=epochs,
        batch_size=BATCH_SIZE, key=jax.random.fold_in(key, 1), eval_data=eval_data,
        progress=False,
    )  # fmt: skip
    return params, history, time.perf_counter() - t0


def nats(model, params, data) -> float:
    return float(losses.softmax_cross_entropy.apply(model.apply(params, data[0]), data[1]))


def bigram_samples(log_probs: np.ndarray, vocab, count: int, seed: int) -> list[str]:
    """Names drawn from the bigram table, a character at a time until "."."""
    rng, probs, names = np.random.default_rng(seed), np.exp(log_probs), []
    for _ in range(count):
        ids = [0]
        while len(ids) < 33 and (len(ids) == 1 or ids[-1] != 0):
            ids.append(int(rng.choice(len(probs), p=probs[ids[-1]])))
        names.append(vocab.decode([i for i in ids[1:] if i != 0]))
    return names


def load(quick: bool) -> tuple:
    context = QUICK["context"] if quick else CONTEXT
    train, val = datasets.load("names", context=context)
    test = datasets.load("names", context=context, split="test")[1]
    if quick:
        n, m = QUICK["train_windows"], QUICK["eval_windows"]
        train, val, test = (train[0][:n], train[1][:n]), (val[0][:m], val[1][:m]), test
        test = (test[0][:m], test[1][:m])
    return context, train, val, test


def main() -> None:
    args = parse_args(__doc__)
    key = jax.random.PRNGKey(0)
    vocab = datasets.vocabulary()
    context, train, val, test = load(args.quick)
    epochs = QUICK["epochs"] if args.quick else EPOCHS
    table, curves, samples = {}, {}, {}

    log_probs = charlm.bigram(*train, vocab.size)
    table["bigram"] = {
        "validation": charlm.bigram_loss(log_probs, *val),
        "test": charlm.bigram_loss(log_probs, *test),
        "parameters": vocab.size**2,
        "train_seconds": 0.0,
    }
    samples["bigram"] = bigram_samples(log_probs, vocab, SAMPLES, seed=0)

    mlp_settings = dict(epochs=1, hidden=16) if args.quick else {}
    t0 = time.perf_counter()
    mlp, mlp_params, history = charlm.train_mlp(
        train, val, key=key, vocab_size=vocab.size, **mlp_settings
    )
    block = charlm.MLP_DEFAULTS["block"]
    mlp_test = (charlm.block_contexts(test[0], block), np.ravel(test[1]))
    table["mlp"] = {
        "validation": history["eval_loss"][-1],
        "test": nats(mlp, mlp_params, mlp_test),
        "parameters": sum(p.size for p in jax.tree.leaves(mlp_params)),
        "train_seconds": time.perf_counter() - t0,
    }
    curves["mlp"] = history["eval_loss"]
    draw = dict(count=SAMPLES, max_length=QUICK["max_length"] if args.quick else 32)
    samples["mlp"] = charlm.sample(mlp, mlp_params, key, context=block, **draw)

    for name, model in sequence_models(vocab.size, context, args.quick).items():
        params, history, seconds = train_sequence(model, train, val, epochs, key)
        table[name] = {
            "validation": history["eval_loss"][-1],
            "test": nats(model, params, test),
            "parameters": sum(p.size for p in jax.tree.leaves(params)),
            "train_seconds": seconds,
        }
        curves[name] = history["eval_loss"]
        samples[name] = charlm.sample(model, params, key, context=context, **draw)
        print(f"{name}: validation {table[name]['validation']:.4f} nats/char ({seconds:.0f} s)")

    results = {
        "config": dict(
            context=context,
            epochs=epochs,
            lr=LR,
            weight_decay=WEIGHT_DECAY,
            batch_size=BATCH_SIZE,
            quick=args.quick,
        ),  # fmt: skip
        "characters": {
            "train": int(train[1].size),
            "validation": int(val[1].size),
            "test": int(test[1].size),
        },  # fmt: skip
        "table": table,
        "validation_curves": curves,
        "samples": samples,
    }
    write_json(args.out, "results.json", results)
    plot(args.out, curves, table["bigram"]["validation"])
    for name, row in table.items():
        print(f"{name:7s} validation {row['validation']:.4f}  test {row['test']:.4f} nats/char")


def plot(out, curves: dict, bigram: float) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", ms=3, label=name)
    ax.axhline(bigram, color="grey", ls="--", label="bigram")
    ax.set(xlabel="epoch", ylabel="validation loss (nats/char)", title="surnames: next character")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, out, "curves.png")


if __name__ == "__main__":
    main()
