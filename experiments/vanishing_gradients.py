"""Vanishing gradients at init: how the backward signal shrinks layer by layer, per activation.

In the reverse sweep each hidden layer multiplies the delta (dC/dz, the cotangent at a Dense
layer's output) by W^T and then by f'(z) elementwise. With LeCun-normal init (variance 1/fan_in)
the W^T step keeps ||delta|| about the same on square layers, so the per-layer factor is about
sqrt(mean f'(z)^2): for the sigmoid f' <= 1/4, and the signal shrinks geometrically. This script
measures that factor (slope of log10 ||delta_l|| against the layer index l) and compares it with
sqrt(mean f'(z)^2) computed from the forward pass's own pre-activations, for sigmoid, tanh and relu;
also the norm of each layer's weight gradient dC/dW_l = x_l^T delta_l, which `jaxbp.backprop`
returns, and the first layer's gradient norm against depth.

Usage:
    python experiments/vanishing_gradients.py \
        --out experiments/results/vanishing_gradients [--quick]

Writes results.json (per activation: measured and predicted per-layer factors and their ratio, the
per-layer norms of the deepest net, the first layer's gradient norm per depth), per_layer.png and
depth.png.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from _common import parse_args, plt, save_figure, write_json

import jaxbp
from jaxbp import Dense, softmax_cross_entropy

ACTIVATIONS = ("sigmoid", "tanh", "relu")  # f' <= 1/4, f' <= 1 (saturating), f' in {0, 1}
WIDTH = 64  # square hidden layers, so W^T alone keeps ||delta|| the same on average
CLASSES = 10  # a classification head on random labels: the loss's delta is O(1) at init
BATCH = 256  # examples per gradient; the norms are over the whole batch
DEPTHS = tuple(range(2, 31))  # Dense layers in the net, 2..30
QUICK_DEPTHS = (2, 5, 10, 20, 30)  # the same trend from fewer nets
SIGMOID_BOUND = 0.25  # max of sigmoid'(z) = s(1 - s), at z = 0
SEEDS = 5  # nets (init and data) per depth; norms are averaged in log10 (a geometric mean)
QUICK_SEEDS = 2  # enough to see the trend


def norm(a) -> float:
    """||a|| in float64: a float32 sum of squares underflows below 1e-19, and sigmoid gets there."""
    return float(np.linalg.norm(np.asarray(a, np.float64)))


def draws(seed: int, depth: int) -> tuple:
    """Params of a `depth`-layer net (the library's init), random inputs and labels (NumPy's).

    Every Dense layer is initialised independently, so the first d-1 hidden layers plus the
    output layer are a correct init of a d-layer net: one draw serves every depth (each new
    random shape compiles a kernel, and that costs more than the measurement).
    """
    model = jaxbp.mlp([WIDTH] * (depth - 1) + [CLASSES])
    _, params = model.init(jax.random.PRNGKey(seed), (WIDTH,))
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((BATCH, WIDTH), np.float32))
    return params, x, jnp.asarray(rng.integers(0, CLASSES, BATCH, dtype=np.int32))


def signals(model, params, x, y) -> dict:
    """The reverse sweep by hand, keeping per Dense layer ||delta|| and, per activation, f'(z)."""
    y_pred, residuals = model.forward(params, x)
    _, loss_residuals = softmax_cross_entropy.forward(y_pred, y)
    delta = softmax_cross_entropy.backward(loss_residuals)
    deltas, slopes = [], []
    for layer, p, r in reversed(list(zip(model.layers, params, residuals))):
        if isinstance(layer, Dense):
            deltas.append(norm(delta))
        else:  # the activation's own hand-written rule with dy = 1 gives f'(z), elementwise
            slopes.append(np.asarray(layer.backward(p, r, jnp.ones_like(delta))[1]))
        _, delta = layer.backward(p, r, delta)
    fprime = np.stack(slopes[::-1])  # (hidden layers, batch, width), first layer first
    return {
        "delta_norm": np.array(deltas[::-1]),
        "mean_fprime": fprime.mean((1, 2)),
        "rms_fprime": np.sqrt((fprime**2).mean((1, 2))),
    }


def measure(activation: str, depth: int, draw: tuple, *, with_signals: bool) -> dict:
    """Each Dense layer's ||dC/dW|| by jaxbp.backprop (and the signals) for one draw.

    Eager, not jitted: every depth is a new program, and the eager ops' compiled kernels are
    shared by all depths, so this is faster than compiling 3 x 29 programs.
    """
    model = jaxbp.mlp([WIDTH] * (depth - 1) + [CLASSES], activation)
    deep_params, x, y = draw
    params = deep_params[: 2 * (depth - 1)] + deep_params[-1:]
    _, grads = jaxbp.backprop(model, softmax_cross_entropy, params, x, y)
    out = {"grad_norm": np.array([norm(g["W"]) for g in grads[::2]])}
    return out | (signals(model, params, x, y) if with_signals else {})


def fit_rate(log10_norms: np.ndarray) -> float:
    """Per-layer factor going back one layer: 10^-slope of log10 norm against layer index.

    The first layer reads the raw data and the last gets its delta straight from the loss, so
    neither is a typical hidden layer; the fit runs over layers 2..L-1 (1-based).
    """
    layers = np.arange(len(log10_norms))[1:-1]
    slope = np.polyfit(layers, log10_norms[1:-1], 1)[0]
    return float(10**-slope)


def analyse(activation: str, depths, draws_: list) -> dict:
    """Every depth for one activation, averaged over the draws; per-layer fits on the deepest."""
    first_layer = []
    for depth in depths:
        runs = [measure(activation, depth, d, with_signals=depth == depths[-1]) for d in draws_]
        rows = {k: np.stack([run[k] for run in runs]) for k in runs[0]}
        first_layer.append(np.log10(rows["grad_norm"][:, 0]).mean())
    # From here on, `rows` are the deepest net's, the only one measured with signals.
    delta = np.log10(rows["delta_norm"]).mean(0)
    grad = np.log10(rows["grad_norm"]).mean(0)
    # f'(z_l) links delta_{l+1} to delta_l: the fit's transitions use l = 2..L-2 (1-based).
    predicted = 10 ** np.log10(rows["rms_fprime"][:, 1:-1]).mean()  # geometric mean, as fitted
    measured = fit_rate(delta)
    # Each extra layer of depth multiplies the first layer's gradient by this, on average.
    per_depth = 10 ** np.polyfit(depths, first_layer, 1)[0]
    return {
        "measured_delta_factor": measured,
        "predicted_factor_rms_fprime": predicted,
        "measured_over_predicted": measured / predicted,
        "mean_fprime": rows["mean_fprime"].mean(),
        "measured_weight_grad_factor": fit_rate(grad),
        "first_layer_grad_factor_per_extra_layer": per_depth,
        "log10_delta_norm_per_layer": delta,
        "log10_weight_grad_norm_per_layer": grad,
        "log10_first_layer_grad_norm_per_depth": np.array(first_layer),
    }


def plot_per_layer(results: dict, depth: int, out) -> None:
    layers = np.arange(1, depth + 1)
    fig, (ax_w, ax_d) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, r) in enumerate(results.items()):
        ax_w.plot(layers, r["log10_weight_grad_norm_per_layer"], "o-", ms=3, label=name)
        ax_d.plot(layers, r["log10_delta_norm_per_layer"], "o-", ms=3, color=f"C{i}", label=name)
        # The prediction: from layer L-1 back, falling by the predicted factor per layer.
        back = depth - 1 - layers  # layers back from L-1
        anchor = r["log10_delta_norm_per_layer"][-2]
        ax_d.plot(
            layers, anchor + back * np.log10(r["predicted_factor_rms_fprime"]), ":", color=f"C{i}"
        )
    sigmoid = results["sigmoid"]["log10_delta_norm_per_layer"][-2]
    ax_d.plot(
        layers,
        sigmoid + back * np.log10(SIGMOID_BOUND),
        "--",
        color="grey",
        lw=1,
        label="bound for sigmoid: 1/4 per layer",
    )
    ax_d.plot([], [], ":", color="k", label="predicted: sqrt(mean f'(z)^2) per layer")
    ax_w.set(xlabel="layer index l", ylabel="log10 ||dC/dW_l||", title=f"{depth}-layer net")
    ax_d.set(xlabel="layer index l", ylabel="log10 ||delta_l||", title="delta = dC/dz_l")
    ax_w.legend(fontsize=8)
    ax_d.legend(fontsize=8)
    save_figure(fig, out, "per_layer.png")


def plot_depth(results: dict, depths, out) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, r in results.items():
        ax.plot(depths, r["log10_first_layer_grad_norm_per_depth"], "o-", ms=3, label=name)
    ax.set(xlabel="depth (Dense layers)", ylabel="log10 ||dC/dW_1||", title="first layer at init")
    ax.legend()
    save_figure(fig, out, "depth.png")


def main() -> None:
    args = parse_args(__doc__)
    depths, seeds = (QUICK_DEPTHS, QUICK_SEEDS) if args.quick else (DEPTHS, SEEDS)
    samples = [draws(seed, depths[-1]) for seed in range(seeds)]
    results = {name: analyse(name, depths, samples) for name in ACTIVATIONS}
    config = {"width": WIDTH, "classes": CLASSES, "batch": BATCH, "seeds": seeds}
    config["sigmoid_fprime_bound"] = SIGMOID_BOUND
    write_json(args.out, "results.json", {"config": config, "depths": depths} | results)
    plot_per_layer(results, depths[-1], args.out)
    plot_depth(results, depths, args.out)
    for name, r in results.items():
        print(
            f"{name:8s} measured factor {r['measured_delta_factor']:.4f}  predicted "
            f"{r['predicted_factor_rms_fprime']:.4f}  ratio {r['measured_over_predicted']:.3f}  "
            f"dW factor {r['measured_weight_grad_factor']:.4f}"
        )


if __name__ == "__main__":
    main()
