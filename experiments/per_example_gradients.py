"""Per-example gradients: `jax.vmap` of `jaxbp.backprop` against a Python loop of one-example calls.

backprop is a pure function, so vmap over a batch of one-example calls gives every example's own
gradient in one compiled program. This script trains a digits MLP briefly (`jaxbp.train.fit`),
then, on test batches of several sizes: checks that vmap and a loop of jitted one-example calls
give the same numbers to float32 rounding (and that both match vmap of jax.grad), times both
(interleaved, after warm-up, median of several repetitions), and compares the per-example
gradient norms of the correctly classified and the misclassified test digits.

vmap and the loop are different programs: vmap batches each matrix product over the examples,
and XLA may sum a batched product in another order than a single one (it does with AVX-512), so
the two agree to float32 rounding, not bit for bit. The difference is measured against the
gradient's scale, the largest per-example gradient norm in the batch (an example the net gets
wrong, whose p - onehot does not cancel): a confidently right example's gradient is p - onehot
with p ~ 1, known only to float32's absolute resolution, so its own tiny norm is not the scale.

Usage:
    python experiments/per_example_gradients.py \\
        --out experiments/results/per_example_gradients [--quick]

Writes results.json (agreement, timings and speed-ups per batch size, next to one ordinary
batch-gradient call, gradient-norm statistics),
norms.png (histogram of per-example gradient norms) and timing.png (time against batch size).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import parse_args, plt, save_figure, stopwatch, write_json

import jaxbp
from jaxbp import datasets, softmax_cross_entropy
from jaxbp.train import fit

HIDDEN = 128  # digits 64 -> 128 -> 10: a small net, where a loop's per-call overhead dominates
ACTIVATION = "relu"  # the usual hidden activation of a classifier
LEARNING_RATE = 1e-2  # Adam on digits: ~94% test accuracy after 3 epochs, ~96% after 10
EPOCHS, QUICK_EPOCHS = 10, 3  # "a short training": some digits right, some still wrong
TRAIN_BATCH = 64  # a common minibatch size: 22 Adam steps per epoch on 1,437 digits
BATCH_SIZES = (32, 128, 512)  # timed on the first rows of the training set
QUICK_BATCH_SIZES = (32, 128)  # two sizes: enough to see the trend
REPEATS, QUICK_REPEATS = 7, 3  # timed repetitions per method and size; the median is reported
SEED = 0  # params init and fit's shuffling
# float32 rounding (eps 1.2e-7) of sums of up to 128 products, in another order: ~1e-6 of the
# gradient's scale at most; 1e-5 leaves a factor 10. A wrong example or term is off by O(1).
AGREEMENT_BOUND = 1e-5


def engines(model):
    """Jitted: vmap of one-example backprop, one example, vmap of jax.grad, the batch's gradient."""

    def one(params, xi, yi):
        return jaxbp.backprop(model, softmax_cross_entropy, params, xi[None], yi[None])[1]

    def one_autodiff(params, xi, yi):
        return jaxbp.autodiff(model, softmax_cross_entropy, params, xi[None], yi[None])[1]

    def batch(params, x, y):
        return jaxbp.backprop(model, softmax_cross_entropy, params, x, y)[1]

    vmapped = jax.jit(jax.vmap(one, in_axes=(None, 0, 0)))
    referee = jax.jit(jax.vmap(one_autodiff, in_axes=(None, 0, 0)))
    return vmapped, jax.jit(one), referee, jax.jit(batch)


def loop(single, params, x, y) -> list:
    """The per-example gradients by one jitted call per example: a list of gradient pytrees."""
    x, y = np.asarray(x), np.asarray(y)  # a NumPy row costs nothing; x[i] on a JAX array dispatches
    return [single(params, x[i], y[i]) for i in range(len(x))]


def stacked(grads: list):
    """A list of per-example gradients stacked like vmap's output (NumPy: nothing to compile)."""
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(a) for a in leaves]), *grads)


def differences(grads, reference) -> dict:
    """Largest absolute difference; largest per-example difference ||g_i - r_i|| relative to the
    gradient's scale max_j ||r_j|| (the measure held to AGREEMENT_BOUND) and, for information,
    to the example's own norm ||r_i||, which float32 cannot resolve for tiny gradients."""
    pairs = list(zip(jax.tree.leaves(grads), jax.tree.leaves(reference)))
    abs_diff = max(float(np.max(np.abs(np.asarray(g) - np.asarray(r)))) for g, r in pairs)
    diff = per_example_norms([np.asarray(g) - np.asarray(r) for g, r in pairs])
    norms = per_example_norms(reference)
    over_scale = float(np.max(diff) / np.max(norms))
    return {
        "max_abs_diff": abs_diff,
        "max_diff_over_scale": over_scale,
        "within_bound": over_scale <= AGREEMENT_BOUND,
        "max_rel_diff_own_norm": float(np.max(diff / norms)),
    }


def per_example_norms(grads) -> np.ndarray:
    """||g_i|| over all parameters, for each example i: (batch,), in float64."""
    leaves = [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(grads)]
    return np.sqrt(sum(np.sum(leaf.reshape(len(leaf), -1) ** 2, axis=1) for leaf in leaves))


def time_all(engines_: tuple, params, x, y, repeats: int) -> dict:
    """Median seconds of each method, after warm-up, interleaved so all see the same load.

    "batch" is one ordinary backprop of the batch's mean cost: what per-example gradients cost
    on top of the gradient that training uses anyway.
    """
    vmapped, single, _, batch = engines_
    methods = {
        "vmap": lambda: vmapped(params, x, y),
        "loop": lambda: loop(single, params, x, y),
        "batch": lambda: batch(params, x, y),
    }
    for run in methods.values():  # warm-up: compile for this batch size
        jax.block_until_ready(run())
    times = {name: [] for name in methods}
    for _ in range(repeats):
        for name, run in methods.items():
            times[name].append(stopwatch(run))
    medians = {f"{k}_median_s": float(np.median(v)) for k, v in times.items()}
    return medians | {"speedup": medians["loop_median_s"] / medians["vmap_median_s"]}


def train(model, data, epochs: int):
    """A short Adam run; returns the params and the last epoch's mean training loss."""
    _, params = model.init(jax.random.PRNGKey(SEED), data[0].shape[1:])
    params, history = fit(
        model, softmax_cross_entropy, params, data, optimizer=optax.adam(LEARNING_RATE),
        epochs=epochs, batch_size=TRAIN_BATCH, key=jax.random.PRNGKey(SEED), progress=False,
    )  # fmt: skip
    return params, history["loss"][-1]


def norm_stats(norms: np.ndarray, correct: np.ndarray) -> dict:
    """Count, median and largest gradient norm of the correct and the misclassified examples."""
    groups = {"correct": norms[correct], "misclassified": norms[~correct]}
    return {
        f"{name}_{stat}": (fn(v) if len(v) else None)
        for name, v in groups.items()
        for stat, fn in (("median", np.median), ("max", np.max))
    } | {f"{name}_count": len(v) for name, v in groups.items()}


def plot_norms(norms: np.ndarray, correct: np.ndarray, out) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(np.log10(norms.min()), np.log10(norms.max()), 40)
    for mask, label in ((correct, "correct"), (~correct, "misclassified")):
        ax.hist(np.log10(norms[mask]), bins=bins, alpha=0.7, label=f"{label} ({mask.sum()})")
    ax.set(xlabel="log10 ||dL_i/dparams||", ylabel="test examples", yscale="log")
    ax.set_title("Per-example gradient norms, digits test set", fontsize=10)
    ax.legend()
    save_figure(fig, out, "norms.png")


def plot_timing(timing: dict, out) -> None:
    sizes = [int(b) for b in timing]
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, label in (
        ("vmap", "per example: jax.vmap(backprop)"),
        ("loop", "per example: loop of jitted calls"),
        ("batch", "batch-mean gradient: backprop"),
    ):
        ax.plot(sizes, [timing[b][f"{method}_median_s"] for b in timing], "o-", label=label)
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="seconds (median)")
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_title("Per-example gradients of a batch", fontsize=10)
    ax.legend()
    save_figure(fig, out, "timing.png")


def examine(model, engines_: tuple, params, test_set: tuple, out) -> dict:
    """On the test set: do the three methods agree, and whose gradients are large?"""
    vmapped, single, referee, _ = engines_
    x, y = test_set
    grads = vmapped(params, x, y)
    norms = per_example_norms(grads)
    correct = np.asarray(jnp.argmax(model.apply(params, x), -1) == y)
    plot_norms(norms, correct, out)
    return {
        "test_accuracy": correct.mean(),
        "vmap_vs_loop": differences(grads, stacked(loop(single, params, x, y))),
        "vmap_vs_vmap_jax_grad": differences(grads, referee(params, x, y)),
        "norms": norm_stats(norms, correct),
    }


def main() -> None:
    args = parse_args(__doc__)
    quick = (QUICK_EPOCHS, QUICK_BATCH_SIZES, QUICK_REPEATS)
    epochs, sizes, repeats = quick if args.quick else (EPOCHS, BATCH_SIZES, REPEATS)
    train_set, test_set = (tuple(map(jnp.asarray, part)) for part in datasets.load("digits"))
    model = jaxbp.mlp([HIDDEN, 10], ACTIVATION)
    params, train_loss = train(model, train_set, epochs)
    engines_ = engines(model)
    config = {"hidden": HIDDEN, "activation": ACTIVATION, "epochs": epochs, "repeats": repeats,
              "agreement_bound": AGREEMENT_BOUND}  # fmt: skip
    results = {"config": config, "train_loss": train_loss}
    results |= examine(model, engines_, params, test_set, args.out)
    x, y = train_set
    results["timing"] = {str(b): time_all(engines_, params, x[:b], y[:b], repeats) for b in sizes}
    write_json(args.out, "results.json", results)
    plot_timing(results["timing"], args.out)
    agree = results["vmap_vs_loop"]
    print(
        f"test accuracy {results['test_accuracy']:.3f}; vmap vs loop: largest difference "
        f"{agree['max_diff_over_scale']:.1e} of the gradient's scale (bound {AGREEMENT_BOUND:.0e})"
    )
    for b, t in results["timing"].items():
        vmap_ms, loop_ms = t["vmap_median_s"] * 1e3, t["loop_median_s"] * 1e3
        print(
            f"batch {b:>4}: vmap {vmap_ms:.2f} ms, loop {loop_ms:.1f} ms ({t['speedup']:.0f}x), "
            f"batch gradient {t['batch_median_s'] * 1e3:.2f} ms"
        )


if __name__ == "__main__":
    main()
