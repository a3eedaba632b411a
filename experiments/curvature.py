"""Curvature by the hand-written rules: the diagonal of the Gauss-Newton matrix against the exact
Hessian's, and a diagonal-GGN-preconditioned optimiser against Adam on digits.

Part 1, float64, a 64-16-10 tanh MLP on 256 training digits, at init and after a short Adam run:
the exact Hessian diagonal of C (jax.hessian, the referee; jaxbp.hvp along basis vectors gives
the same numbers), against jaxbp.diag_ggn (G = J^T H_loss J, the loss's curvature only:
positive semi-definite, the model's second derivatives dropped) and the Monte Carlo
jaxbp.diag_ggn_mc at 1 to 256 samples, whose error should fall as 1/sqrt(samples).

Part 2, float32, a 64-64-10 tanh MLP on the 1,437 training digits, minibatches of 128, 30
epochs: Adam and plain SGD against a diagonal Gauss-Newton step, update = -lr g / (d + damping),
d a running average of diag_ggn on the current minibatch refreshed every 10 steps (exact: k = 10
backward sweeps; or diag_ggn_mc, one sweep), written as an optax GradientTransformation that
takes the batch as extra arguments. Each method's hyperparameters are picked from a small grid
by the final training loss (the test set plays no part in the choice); then its test curves are
reported. Where d << damping the step is SGD's with rate lr/damping; where d >> damping it is
lr times the Newton step g/d: SGD is the baseline that says what the curvature adds.

Usage:
    python experiments/curvature.py --out experiments/results/curvature [--quick]

Writes results.json (part 1: agreement of hvp with jax.hessian, relative difference and
correlation of diag GGN and diag H, negative Hessian entries, Monte Carlo errors per sample
count; part 2: per method and learning rate, training loss, test loss and test accuracy per
epoch, seconds), diagonal.png (diag H against diag GGN; Monte Carlo error against samples) and
training.png (training loss and test accuracy per epoch, the selected run of each method).
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import parse_args, plt, save_figure, write_json
from jax.flatten_util import ravel_pytree

import jaxbp
from jaxbp import datasets, softmax_cross_entropy

CE = softmax_cross_entropy
SEED = 0
# Part 1: ~1,200 params, so the exact float64 Hessian (1,210^2) is cheap to form.
SMALL_HIDDEN, SMALL_EXAMPLES, QUICK_SMALL_EXAMPLES = 16, 256, 64
SMALL_ADAM_LR, SMALL_STEPS = 1e-2, 100  # "trained": full-batch training loss ~0.1, below ln 10
MC_SAMPLES, QUICK_MC_SAMPLES = (1, 4, 16, 64, 256), (1, 16)
# Part 2
HIDDEN, BATCH = 64, 128  # 11 steps per epoch on 1,437 digits
EPOCHS, QUICK_EPOCHS = 30, 2
REFRESH = 10  # steps between diag_ggn refreshes: ~ one per epoch, k = 10 sweeps each
DECAY = 0.9  # running average of the refreshed diagonals, as K-FAC and Adam average theirs
# Each method's grid of (learning rate, damping); the full run keeps the pair with the lowest final
# training loss. The damping sits near the diag GGN's median entries at init (1e-3 to 1e-1):
# below them, directions of near-zero curvature get steps lr/damping times the gradient and the
# run diverges (lr 0.1, damping 1e-3 does); lr ~ damping steps ~ 1x the gradient where flat.
# lr / damping is SGD's rate in the flat directions (SGD alone diverges at 3), so it spans 0.5-4.
DIAG_GRID = tuple(
    (r * damping, damping) for damping in (0.003, 0.01, 0.03, 0.1) for r in (0.5, 1.0, 2.0, 4.0)
)
GRID = {"adam": tuple((lr, None) for lr in (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)),
        "sgd": tuple((lr, None) for lr in (0.1, 0.3, 1.0, 3.0)),
        "diag_ggn": DIAG_GRID, "diag_ggn_mc": DIAG_GRID}  # fmt: skip
QUICK_GRID = {"adam": ((1e-2, None),), "sgd": ((1.0, None),), "diag_ggn": ((0.1, 0.1),),
              "diag_ggn_mc": ((0.1, 0.1),)}  # fmt: skip
HVP_EVERY = 10  # part 1 checks jaxbp.hvp on every 10th coordinate (121 products, not 1,210)


# ---------------------------------------------------------------------------------------------
# Part 1: diag GGN against the exact Hessian diagonal


def flat(tree) -> jax.Array:
    return jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(tree)])


def diagonals(model, params, x, y, coords, draws: int):
    """One compiled call: diag H by jax.hessian, H[c, c] by jaxbp.hvp at coords, diag GGN, and
    `draws` one-sample Monte Carlo estimates (their running means are the n-sample estimates)."""
    vec, unravel = ravel_pytree(params)
    H = jax.hessian(lambda v: CE.apply(model.apply(unravel(v), x), y))(vec)
    basis = jnp.eye(vec.size, dtype=vec.dtype)[coords]
    by_hvp = jax.vmap(lambda e: flat(jaxbp.hvp(model, CE, params, x, y, unravel(e))) @ e)(basis)
    ggn = flat(jaxbp.diag_ggn(model, CE, params, x, y))
    keys = jax.random.split(jax.random.PRNGKey(SEED), draws)
    mc = jax.vmap(lambda k: flat(jaxbp.diag_ggn_mc(model, CE, params, x, y, k)))(keys)
    return jnp.diag(H), by_hvp, ggn, mc


def compare_diagonals(model, params, x, y, mc_samples) -> dict:
    """diag H (jax.hessian and jaxbp.hvp), diag GGN, and Monte Carlo estimates, at params."""
    coords = np.arange(0, ravel_pytree(params)[0].size, HVP_EVERY)
    run = jax.jit(diagonals, static_argnums=(0, 5))
    diag_h, by_hvp, ggn, mc = map(np.asarray, run(model, params, x, y, coords, max(mc_samples)))
    errors = [np.linalg.norm(mc[:n].mean(0) - ggn) / np.linalg.norm(ggn) for n in mc_samples]
    return {
        "hvp_vs_jax_hessian_max_rel_error": float(
            np.max(np.abs(by_hvp - diag_h[coords])) / np.max(np.abs(diag_h))
        ),
        "ggn_vs_hessian_rel_diff": float(np.linalg.norm(ggn - diag_h) / np.linalg.norm(diag_h)),
        "ggn_hessian_correlation": float(np.corrcoef(ggn, diag_h)[0, 1]),
        "negative_hessian_entries": int(np.sum(diag_h < 0)),
        "params": int(diag_h.size),
        "mc_samples": list(mc_samples),
        "mc_rel_error": errors,
        "_points": (ggn, diag_h),
    }


def part1(train_set, examples: int, mc_samples) -> dict:
    with jax.enable_x64(True):
        x, y = (jnp.asarray(a[:examples]) for a in train_set)
        x = x.astype(jnp.float64)
        model = jaxbp.mlp([SMALL_HIDDEN, 10], "tanh")
        _, params = model.init(jax.random.PRNGKey(SEED), x.shape[1:])
        out = {"init": compare_diagonals(model, params, x, y, mc_samples)}
        params = adam_steps(model, params, x, y)
        out["trained"] = compare_diagonals(model, params, x, y, mc_samples)
        out["trained"]["train_loss"] = float(CE.apply(model.apply(params, x), y))
    return out


def adam_steps(model, params, x, y):
    """SMALL_STEPS full-batch Adam steps, in one scan."""
    opt = optax.adam(SMALL_ADAM_LR)

    def step(carry, _):
        p, s = carry
        g = jaxbp.backprop(model, CE, p, x, y)[1]
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    run = jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), None, SMALL_STEPS)[0][0])
    return run(params)


# ---------------------------------------------------------------------------------------------
# Part 2: a diagonal Gauss-Newton optimiser against Adam


class DiagState(NamedTuple):
    diag: Any  # running average of diag GGN, params' structure
    count: jax.Array  # steps taken


def scale_by_diag_ggn(
    model, loss, damping: float, *, mc: bool
) -> optax.GradientTransformationExtraArgs:
    """updates / (d + damping), d the running average of diag_ggn (or diag_ggn_mc, one sample)
    on the batch passed as update(..., x=x, y=y, key=key), refreshed every REFRESH steps."""

    def init(params):
        return DiagState(jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.int32))

    def update(updates, state, params, *, x, y, key, **_):
        def refresh(old):
            if mc:
                new = jaxbp.diag_ggn_mc(model, loss, params, x, y, key, samples=1)
            else:
                new = jaxbp.diag_ggn(model, loss, params, x, y)
            keep = jnp.where(state.count == 0, 0.0, DECAY)  # no history to average with yet
            return jax.tree.map(lambda o, n: keep * o + (1 - keep) * n, old, new)

        diag = jax.lax.cond(state.count % REFRESH == 0, refresh, lambda old: old, state.diag)
        updates = jax.tree.map(lambda g, d: g / (d + damping), updates, diag)
        return updates, DiagState(diag, state.count + 1)

    return optax.GradientTransformationExtraArgs(init, update)


def optimizer(method: str, model, damping) -> optax.GradientTransformationExtraArgs:
    """The update direction, before the learning rate: Adam's, the gradient (SGD), or the
    preconditioned gradient. The first two ignore the batch passed as x, y, key."""
    if method == "adam":
        return optax.with_extra_args_support(optax.scale_by_adam())
    if method == "sgd":
        return optax.with_extra_args_support(optax.identity())
    return scale_by_diag_ggn(model, CE, damping, mc=method == "diag_ggn_mc")


def train(method: str, lr: float, damping, model, train_set, test_set, epochs: int) -> dict:
    """epochs of minibatch training, one jitted scan per epoch; curves per epoch."""
    x, y = train_set
    opt = optimizer(method, model, damping)
    _, params = model.init(jax.random.PRNGKey(SEED), x.shape[1:])
    steps = len(x) // BATCH

    def step(carry, batch):
        params, state = carry
        xb, yb, key = batch
        value, grads = jaxbp.backprop(model, CE, params, xb, yb)
        u, state = opt.update(grads, state, params, x=xb, y=yb, key=key)
        return (jax.tree.map(lambda p, d: p - lr * d, params, u), state), value

    @jax.jit
    def epoch(carry, key):
        order = jax.random.permutation(key, len(x))[: steps * BATCH].reshape(steps, BATCH)
        keys = jax.random.split(jax.random.fold_in(key, 1), steps)
        carry, losses = jax.lax.scan(step, carry, (x[order], y[order], keys))
        return carry, losses.mean()

    @jax.jit
    def evaluate(params):
        logits = model.apply(params, test_set[0])
        return CE.apply(logits, test_set[1]), jnp.mean(jnp.argmax(logits, -1) == test_set[1])

    carry = (params, opt.init(params))
    curves = {"train_loss": [], "test_loss": [], "test_accuracy": []}
    start = time.perf_counter()
    for e in range(epochs):
        carry, loss = epoch(carry, jax.random.PRNGKey(1000 + e))
        test_loss, accuracy = evaluate(carry[0])
        for name, v in zip(curves, (loss, test_loss, accuracy)):
            curves[name].append(float(v))
    return curves | {"lr": lr, "damping": damping, "seconds": time.perf_counter() - start}


def part2(train_set, test_set, grids: dict, epochs: int) -> dict:
    model = jaxbp.mlp([HIDDEN, 10], "tanh")
    out = {}
    for method, grid in grids.items():
        runs = [train(method, *hp, model, train_set, test_set, epochs) for hp in grid]
        finite = [r for r in runs if np.isfinite(r["train_loss"][-1])] or runs
        best = min(finite, key=lambda r: r["train_loss"][-1])
        out[method] = {"selected": best, "runs": runs}
        last = {k: best[k][-1] for k in ("train_loss", "test_loss", "test_accuracy")}
        print(f"{method:12s} lr {best['lr']:<6g} damping {best['damping']}: {last}")
    return out


# ---------------------------------------------------------------------------------------------
# Figures and main


def plot_diagonals(p1: dict, out) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, name in zip(axes[:2], ("init", "trained")):
        ggn, h = p1[name]["_points"]
        neg = h < 0
        ax.loglog(ggn[~neg], h[~neg], ".", ms=3, label="diag H > 0")
        ax.loglog(ggn[neg], -h[neg], "x", ms=3, color="C3", label="diag H < 0 (|diag H| shown)")
        lo = max(min(ggn[ggn > 0].min(), np.abs(h[h != 0]).min()), 1e-12)
        hi = max(ggn.max(), np.abs(h).max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="equal")
        ax.set(xlabel="diag GGN (jaxbp.diag_ggn)", ylabel="exact diag H (jax.hessian)")
        ax.set_title(
            f"{name}: rel. diff {p1[name]['ggn_vs_hessian_rel_diff']:.2f}, "
            f"corr {p1[name]['ggn_hessian_correlation']:.3f}", fontsize=10,
        )  # fmt: skip
        ax.legend(fontsize=8)
    ax = axes[2]
    for name in ("init", "trained"):
        ax.loglog(p1[name]["mc_samples"], p1[name]["mc_rel_error"], "o-", label=name)
    n = np.asarray(p1["init"]["mc_samples"], float)
    ax.loglog(n, p1["init"]["mc_rel_error"][0] / np.sqrt(n), "k--", lw=0.8, label="1/sqrt(n)")
    ax.set(xlabel="Monte Carlo samples n", ylabel="||mc - exact|| / ||exact||")
    ax.set_title("diag_ggn_mc against diag_ggn", fontsize=10)
    ax.legend(fontsize=8)
    save_figure(fig, out, "diagonal.png")


def plot_training(p2: dict, out) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method, r in p2.items():
        s = r["selected"]
        epochs = np.arange(1, len(s["train_loss"]) + 1)
        label = (
            f"{method} (lr {s['lr']:g}"
            + ("" if s["damping"] is None else f", damping {s['damping']:g}")
            + ")"
        )
        axes[0].semilogy(epochs, s["train_loss"], "-", label=label)
        axes[1].plot(epochs, s["test_accuracy"], "-", label=label)
    axes[0].set(xlabel="epoch", ylabel="training loss")
    axes[1].set(xlabel="epoch", ylabel="test accuracy")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle("digits, 64-64-10 tanh, batch 128", fontsize=10)
    save_figure(fig, out, "training.png")


def main() -> None:
    args = parse_args(__doc__)
    train_set, test_set = (tuple(map(jnp.asarray, part)) for part in datasets.load("digits"))
    start = time.perf_counter()
    examples = QUICK_SMALL_EXAMPLES if args.quick else SMALL_EXAMPLES
    p1 = part1(train_set, examples, QUICK_MC_SAMPLES if args.quick else MC_SAMPLES)
    print(f"part 1: {time.perf_counter() - start:.1f} s")
    plot_diagonals(p1, args.out)
    grids = QUICK_GRID if args.quick else GRID
    epochs = QUICK_EPOCHS if args.quick else EPOCHS
    p2 = part2(train_set, test_set, grids, epochs)
    plot_training(p2, args.out)
    for name in ("init", "trained"):
        p1[name].pop("_points")
    config = {"small_hidden": SMALL_HIDDEN, "small_examples": examples, "hidden": HIDDEN,
              "batch": BATCH, "refresh": REFRESH, "decay": DECAY, "epochs": epochs,
              "quick": args.quick}  # fmt: skip
    write_json(args.out, "results.json", {"config": config, "diagonal": p1, "training": p2})


if __name__ == "__main__":
    main()
