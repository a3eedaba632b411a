"""Differentially private training on digits: test accuracy against the privacy budget epsilon.

DP-SGD (Abadi et al. 2016) clips every example's gradient to norm C, adds Gaussian noise of
standard deviation sigma * C to the sum, and samples each step's examples by Poisson sampling;
`jaxbp.dp_sgd` does it in one backward pass and `fit` reports the epsilon spent, by
dp-accounting's RDP accountant. For each target epsilon (at delta 1e-5, for the whole run), this
script calibrates sigma with dp-accounting's `calibrate_dp_mechanism` on jaxbp's DP event, trains
the same MLP as the no-privacy baseline (plain backprop, the same batches' expected size), and
records the test accuracy and the fraction of training examples whose gradient norm exceeds C
(at init and at the end: how much the clipping bites).

Usage:
    python experiments/dp_sgd.py --out experiments/results/dp_sgd [--quick]

Writes results.json (per target epsilon: sigma, the epsilon fit reports after the last epoch,
test accuracy over seeds, clipping fractions; the baseline's accuracy) and accuracy.png
(accuracy against epsilon, the baseline as a line; clipping fraction against epsilon).
"""

from __future__ import annotations

import logging

import dp_accounting
import jax
import numpy as np
import optax
from _common import parse_args, plt, save_figure, write_json

from jaxbp import datasets, dp_sgd, privacy, softmax_cross_entropy
from jaxbp.layers import mlp
from jaxbp.train import fit

EPSILONS, QUICK_EPSILONS = (1.0, 2.0, 4.0, 8.0), (2.0, 8.0)  # the usual range of budgets
DELTA = 1e-5  # below 1/n = 7e-4 for digits' 1,437 training images, as delta must be
HIDDEN = 128  # 64 -> 128 -> 10 relu: small nets suffer least from noise in every coordinate
CLIP_NORM = 1.0  # per-example gradients at init have norms ~1-3 here: clipping bites early
BATCH = 128  # expected Poisson batch: larger batches average the noise down (q = 0.089)
EPOCHS, QUICK_EPOCHS = 30, 4  # the budget covers all of them: more epochs, more noise each
LEARNING_RATE = 3e-3  # Adam; DP's noisy gradients want a smaller step than plain training's
SEEDS, QUICK_SEEDS = (0, 1), (0,)  # init and sampling seeds; the spread shows the noise's effect


def sigma_for(epsilon: float, steps: int, rate: float) -> float:
    """The smallest noise multiplier whose `steps` Poisson-sampled steps spend epsilon at DELTA.
    (The RDP accountant warns of each order it drops while searching; its bound stays valid.)"""
    logging.getLogger("absl").setLevel(logging.ERROR)
    return float(
        dp_accounting.calibrate_dp_mechanism(
            dp_accounting.rdp.RdpAccountant,
            lambda sigma: privacy.dp_event(steps, rate, sigma),
            epsilon,
            DELTA,
            bracket_interval=dp_accounting.ExplicitBracketInterval(0.1, 100.0),
        )
    )


def clipped_fraction(model, params, data) -> float:
    """The fraction of examples whose gradient norm exceeds CLIP_NORM (noise off, all at once)."""
    engine = dp_sgd(CLIP_NORM, 0.0, delta=None)
    stats = jax.jit(lambda p: engine.with_stats(model, softmax_cross_entropy, p, *data)[2])(params)
    return float(stats["clipped"])


def train(grad, seed: int, epochs: int, train_data, test_data) -> dict:
    model = mlp([HIDDEN, 10], "relu")
    _, params = model.init(jax.random.PRNGKey(seed), (train_data[0].shape[1],))
    start = clipped_fraction(model, params, train_data)
    params, history = fit(
        model, softmax_cross_entropy, params, train_data, optimizer=optax.adam(LEARNING_RATE),
        epochs=epochs, batch_size=BATCH, key=jax.random.PRNGKey(100 + seed), grad=grad,
        eval_data=test_data, progress=False,
    )  # fmt: skip
    return {
        "test_accuracy": history["eval_accuracy"][-1],
        "train_loss": history["loss"][-1],
        "epsilon": history.get("epsilon", [None])[-1],
        "clipped_at_init": start,
        "clipped_at_end": clipped_fraction(model, params, train_data),
    }


def summary(runs: list[dict]) -> dict:
    out = {k: float(np.mean([r[k] for r in runs])) for k in runs[0] if runs[0][k] is not None}
    acc = [r["test_accuracy"] for r in runs]
    return out | {"test_accuracy_min": min(acc), "test_accuracy_max": max(acc)}


def plot(results: dict, out) -> None:
    eps = [float(e) for e in results["private"]]
    rows = list(results["private"].values())
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    acc = [r["test_accuracy"] for r in rows]
    low = [r["test_accuracy"] - r["test_accuracy_min"] for r in rows]
    high = [r["test_accuracy_max"] - r["test_accuracy"] for r in rows]
    left.errorbar(eps, acc, yerr=[low, high], marker="o", capsize=3, label="DP-SGD (min-max)")
    base = results["no_privacy"]["test_accuracy"]
    left.axhline(base, color="C2", ls="--", label=f"no privacy ({base:.1%})")
    left.set(xscale="log", xlabel=f"epsilon (delta {DELTA:g})", ylabel="test accuracy")
    left.set(title="digits: accuracy against privacy budget")
    left.set_xticks(eps, [f"{e:g}" for e in eps])
    left.set_xticks([], minor=True)
    left.legend()
    right.plot(eps, [r["clipped_at_init"] for r in rows], marker="o", label="at init")
    right.plot(eps, [r["clipped_at_end"] for r in rows], marker="s", label="after training")
    right.set(xscale="log", xlabel="epsilon", ylabel=f"fraction with ||g_i|| > C = {CLIP_NORM:g}")
    right.set(title="clipping fraction (training set)", ylim=(0, 1.05))
    right.set_xticks(eps, [f"{e:g}" for e in eps])
    right.set_xticks([], minor=True)
    right.legend()
    save_figure(fig, out, "accuracy.png")


def main() -> None:
    args = parse_args(__doc__)
    epsilons = QUICK_EPSILONS if args.quick else EPSILONS
    epochs = QUICK_EPOCHS if args.quick else EPOCHS
    seeds = QUICK_SEEDS if args.quick else SEEDS
    train_data, test_data = datasets.load("digits")
    n = len(train_data[0])
    steps, rate = epochs * (n // BATCH), BATCH / n
    results = {
        "config": {
            "hidden": HIDDEN,
            "clip_norm": CLIP_NORM,
            "expected_batch": BATCH,
            "epochs": epochs,
            "steps": steps,
            "sampling_rate": rate,
            "delta": DELTA,
            "learning_rate": LEARNING_RATE,
            "seeds": list(seeds),
            "accountant": "rdp",
            "train_size": n,
        },  # fmt: skip
        "private": {},
    }
    for target in epsilons:
        sigma = sigma_for(target, steps, rate)
        runs = [
            train(dp_sgd(CLIP_NORM, sigma, delta=DELTA), s, epochs, train_data, test_data)
            for s in seeds
        ]
        results["private"][f"{target:g}"] = {"target_epsilon": target, "sigma": sigma} | summary(
            runs
        )
        row = results["private"][f"{target:g}"]
        print(
            f"epsilon {target:g}: sigma {sigma:.3f}, reported epsilon {row['epsilon']:.3f}, "
            f"test accuracy {row['test_accuracy']:.1%}, clipped {row['clipped_at_end']:.0%}"
        )
    base = [train("backprop", s, epochs, train_data, test_data) for s in seeds]
    results["no_privacy"] = summary(base)
    print(f"no privacy: test accuracy {results['no_privacy']['test_accuracy']:.1%}")
    write_json(args.out, "results.json", results)
    plot(results, args.out)


if __name__ == "__main__":
    main()
