"""Depth: plain vs residual networks, with and without BatchNorm, at 8 to 56 weighted layers.

He et al. (2016, "Deep residual learning") found that a deeper plain network trains *worse* than
a shallower one (higher training error, not only test error), and that residual connections
remove this degradation. This script repeats the comparison at toy scale on the bundled digits:
for each family and depth it measures, at init, the norm of the delta dC/d(output) at every Dense
layer (`jaxbp.backprop_with_signals` and `jaxbp.signal_stats`, on one fixed batch), and after a
fixed training budget (the same optimizer, epochs and batch size for every net) the test accuracy
and the final training loss.

Design. MLPs of width 64 on the flat 8x8 digits (x: (n, 64)), not convnets: a 56-layer MLP trains
for 30 epochs in 5-12 s on 2 cores, so four families x four depths x three seeds fit in a few
minutes, and the question (does depth alone hurt, and does a skip connection fix it) needs no
convolutions. A "layer" is one Dense layer; every net has `depth` of them, the last being the
10-way head. The families:

    plain         (Dense -> Relu) x (depth - 1), Dense(10)
    plain_bn      (Dense -> BatchNorm -> Relu) x (depth - 1), Dense(10)   (He et al.'s plain nets)
    residual      Dense, (depth - 2) / 2 blocks x + Dense(Relu(Dense(Relu(x)))), Relu, Dense(10)
    residual_bn   the same blocks pre-activated with BatchNorm (He et al. 2016b):
                  x + Dense(Relu(BN(Dense(Relu(BN(x)))))), then BN, Relu, Dense(10)

so a residual block counts as 2 layers. Every Dense keeps the library's default LeCun-normal
init (variance 1/fan_in), for every family, untuned: with relu it shrinks the plain net's forward
and backward signal by about sqrt(1/2) per layer (see experiments/vanishing_gradients.py), which
BatchNorm undoes in plain_bn; so plain_bn is the fair test of He et al.'s claim that the
degradation is not a vanishing signal. (He init would instead make the un-normalised residual
stream's variance double at every block.)

Usage:
    python experiments/depth.py --out experiments/results/depth [--quick]

Writes results.json (per family and depth: test accuracy and final training loss per seed, with
mean, min and max; log10 delta norm per Dense layer at init, averaged over seeds; the log10 ratio
of the first layer's delta norm to the last's) and depth.png (delta norm per layer at the deepest
depth; test accuracy and final training loss against depth).
"""

from __future__ import annotations

import time

import jax
import numpy as np
import optax
from _common import parse_args, plt, save_figure, write_json

import jaxbp
from jaxbp import datasets, train
from jaxbp.layers import (
    BatchNorm,
    Dense,
    Relu,
    Residual,
    eval_mode,
    forward_state,
    init_state,
    serial,
)

FAMILIES = ("plain", "plain_bn", "residual", "residual_bn")  # He et al.'s two, each +/- BN
DEPTHS = (8, 20, 32, 56)  # He et al.'s 20 and 56, a shallow reference and one in between
QUICK_DEPTHS = (2, 4)  # the pipeline on small nets (compiling dominates); 4 has a residual block
WIDTH = 64  # the digits' own input width: every hidden Dense is square
CLASSES = 10  # digits 0-9
LEARNING_RATE = 1e-3  # Adam's usual default; the same for every family, not tuned per family
EPOCHS = 30  # enough for every 8-layer net to reach a training loss under 0.02
QUICK_EPOCHS = 1  # enough to exercise training and evaluation
BATCH_SIZE = 64  # ~22 steps per epoch on the 1,437 training digits
SEEDS = 3  # init and data order per seed; mean and range reported
QUICK_SEEDS = 1  # the quick run checks the pipeline, not the spread
SIGNAL_BATCH = 256  # training examples in the one batch whose deltas are measured at init


def family(name: str, depth: int):
    """The `name` network with `depth` Dense layers (see the module docstring)."""
    bn = name.endswith("_bn")
    norm = [BatchNorm()] if bn else []
    if name.startswith("plain"):
        hidden = [layer for _ in range(depth - 1) for layer in (Dense(WIDTH), *norm, Relu())]
        return serial(*hidden, Dense(CLASSES))
    body = serial(*norm, Relu(), Dense(WIDTH), *norm, Relu(), Dense(WIDTH))
    blocks = [Residual(body)] * ((depth - 2) // 2)  # layers are immutable: one body serves all
    return serial(Dense(WIDTH), *blocks, *norm, Relu(), Dense(CLASSES))


def is_dense(params, path) -> bool:
    """Whether the layer at `path` (a tuple of indices into the params tree) is a Dense layer."""
    for step in path:
        params = params[step]
    return isinstance(params, dict) and "W" in params


def delta_norms(model, params, state, x, y) -> np.ndarray:
    """||dC/d(output)|| at every Dense layer at init, input side first (BatchNorm in training
    mode, on the batch's own statistics, as in the first training step)."""
    signals_out = jaxbp.backprop_with_signals(
        model, jaxbp.softmax_cross_entropy, params, x, y, state=state
    )
    _, grads, signals = signals_out[:3]
    stats = jaxbp.signal_stats(signals, grads)
    dense = [p for p in stats if is_dense(params, p)]
    return np.array([float(stats[p]["delta_norm"]) for p in dense])


def run(name: str, depth: int, seed: int, data, epochs: int) -> dict:
    """Init, measure the deltas, train; one net of one family, depth and seed."""
    (x_train, y_train), (x_test, y_test) = data
    model = family(name, depth)
    _, params = model.init(jax.random.PRNGKey(seed), (WIDTH,))
    state = init_state(model, params)
    stateful = bool(jax.tree.leaves(state))
    batch = (x_train[:SIGNAL_BATCH], y_train[:SIGNAL_BATCH])
    deltas = delta_norms(model, params, state if stateful else None, *batch)
    t0 = time.perf_counter()
    out = train.fit(
        model, jaxbp.softmax_cross_entropy, params, (x_train, y_train),
        optimizer=optax.adam(LEARNING_RATE), epochs=epochs, batch_size=BATCH_SIZE,
        key=jax.random.PRNGKey(1000 + seed), progress=False, state=state if stateful else None,
    )  # fmt: skip
    params, history = out[0], out[-1]
    state = out[1] if stateful else state
    # Once, eagerly, at the end: a per-epoch evaluation would cost a compile per net and a pass
    # per epoch, and only the final accuracy is reported.
    logits = forward_state(eval_mode(model), params, state, x_test)[0]
    return {
        "test_accuracy": float(np.mean(np.argmax(logits, -1) == np.asarray(y_test))),
        "train_loss": history["loss"][-1],
        "loss_per_epoch": history["loss"],
        "log10_delta_norm": np.log10(deltas),
        "fit_seconds": time.perf_counter() - t0,
    }


def summarise(runs: list[dict]) -> dict:
    """Mean and range over seeds; the delta profile averaged in log10 (a geometric mean)."""
    acc = np.array([r["test_accuracy"] for r in runs])
    loss = np.array([r["train_loss"] for r in runs])
    log_delta = np.mean([r["log10_delta_norm"] for r in runs], axis=0)
    return {
        "test_accuracy": {"mean": acc.mean(), "min": acc.min(), "max": acc.max(), "seeds": acc},
        "train_loss": {"mean": loss.mean(), "min": loss.min(), "max": loss.max(), "seeds": loss},
        "log10_delta_norm_per_layer": log_delta,
        # > 0: the delta grows towards the input; < 0: it vanishes.
        "log10_delta_ratio_first_over_last": log_delta[0] - log_delta[-1],
        "loss_per_epoch_per_seed": [r["loss_per_epoch"] for r in runs],
        "fit_seconds_mean": float(np.mean([r["fit_seconds"] for r in runs])),
    }


def plot(results: dict, depths, out) -> None:
    fig, (ax_d, ax_a, ax_l) = plt.subplots(1, 3, figsize=(15, 4.2))
    for i, (name, by_depth) in enumerate(results.items()):
        deepest = by_depth[str(depths[-1])]["log10_delta_norm_per_layer"]
        layers = np.arange(1, len(deepest) + 1)
        ax_d.plot(layers, 10.0 ** np.asarray(deepest), "o-", ms=2.5, color=f"C{i}", label=name)
        for ax, key in ((ax_a, "test_accuracy"), (ax_l, "train_loss")):
            s = [by_depth[str(d)][key] for d in depths]
            mean = np.array([v["mean"] for v in s])
            spread = [mean - [v["min"] for v in s], [v["max"] for v in s] - mean]
            ax.errorbar(depths, mean, yerr=spread, fmt="o-", ms=4, capsize=3, label=name)
    ax_d.set(yscale="log", xlabel="Dense layer (input side first)", ylabel="||dC/d(output)||")
    ax_d.set_title(f"delta norm at init, {depths[-1]} layers")
    ax_a.set(xlabel="depth (Dense layers)", ylabel="test accuracy", title="after the same budget")
    ax_l.set(xlabel="depth (Dense layers)", ylabel="training loss, last epoch", yscale="log")
    ax_l.set_title("training loss (mean over seeds; bars: range)")
    for ax in (ax_d, ax_a, ax_l):
        ax.legend(fontsize=8)
    save_figure(fig, out, "depth.png")


def main() -> None:
    args = parse_args(__doc__)
    depths, epochs, seeds = (
        (QUICK_DEPTHS, QUICK_EPOCHS, QUICK_SEEDS) if args.quick else (DEPTHS, EPOCHS, SEEDS)
    )
    data = datasets.load("digits")
    t0 = time.perf_counter()
    results = {}
    for name in FAMILIES:
        results[name] = {}
        for depth in depths:
            runs = [run(name, depth, seed, data, epochs) for seed in range(seeds)]
            s = results[name][str(depth)] = summarise(runs)
            print(
                f"{name:12s} depth {depth:3d}  test acc {s['test_accuracy']['mean']:.4f} "
                f"[{s['test_accuracy']['min']:.4f}, {s['test_accuracy']['max']:.4f}]  "
                f"train loss {s['train_loss']['mean']:.2e}  "
                f"log10 delta first/last {s['log10_delta_ratio_first_over_last']:+.2f}",
                flush=True,
            )
    config = {
        "width": WIDTH, "classes": CLASSES, "optimizer": f"adam({LEARNING_RATE})",
        "epochs": epochs, "batch_size": BATCH_SIZE, "seeds": seeds, "init": "LeCun normal",
        "signal_batch": SIGNAL_BATCH, "wall_seconds": time.perf_counter() - t0,
    }  # fmt: skip
    write_json(args.out, "results.json", {"config": config, "depths": depths} | results)
    plot(results, depths, args.out)
    print(f"wall time {config['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
