"""How close are the hand-written gradients to jax.grad's, in float32 and float64, as nets deepen?

For MLPs of several depths, widths and activations (softmax cross-entropy on random data), this
compares `jaxbp.backprop` with `jaxbp.autodiff` (jax.grad) in float64 and in float32, and both
float32 gradients with the float64 truth computed from the same (float32-representable) params
and data. Error: the largest, over parameter leaves, of ||g - reference|| / ||reference||.

Usage:
    python experiments/gradient_precision.py --out experiments/results/gradient_precision [--quick]

Writes results.json (per comparison the largest error, where it occurred, and the median; the
ratio of backprop's float32 error to jax.grad's; every configuration's errors) and errors.png
(error against depth, per comparison and activation).
"""

from __future__ import annotations

import itertools

import jax

jax.config.update("jax_enable_x64", True)  # this script is its own process: float64 on demand

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import parse_args, plt, save_figure, write_json  # noqa: E402

import jaxbp  # noqa: E402
from jaxbp import softmax_cross_entropy  # noqa: E402

DEPTHS = (1, 2, 4, 8, 16)  # Dense layers; rounding error grows with the chain's length
WIDTHS = (8, 64, 256)  # longer dot products accumulate more rounding error
ACTIVATIONS = ("sigmoid", "tanh", "relu", "gelu")  # saturating, piecewise linear, composite f'
QUICK_DEPTHS, QUICK_WIDTHS = (1, 4, 16), (64,)  # the ends of the depth range, one width
QUICK_ACTIVATIONS = ("sigmoid", "gelu")  # the simplest and the most involved derivative
BATCH = 64  # examples per gradient
CLASSES = 10  # softmax cross-entropy on random labels
EPS = {32: float(np.finfo(np.float32).eps), 64: float(np.finfo(np.float64).eps)}  # for scale
COMPARISONS = {  # name -> (gradient, reference), keys of `gradients`
    "float64: backprop vs jax.grad": ("backprop64", "autodiff64"),
    "float32: backprop vs jax.grad": ("backprop32", "autodiff32"),
    "float32 backprop vs float64 truth": ("backprop32", "autodiff64"),
    "float32 jax.grad vs float64 truth": ("autodiff32", "autodiff64"),
}


def rel_error(grads, reference) -> float:
    """Largest relative error over the leaves, each in norm, computed in float64."""
    errors = []
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(reference)):
        g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
        errors.append(np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-300))
    return float(max(errors))


def draw(model, width: int, seed: int) -> tuple:
    """LeCun-normal params (Dense's init: W ~ N(0, 1/in), b = 0), inputs and labels, by NumPy.

    Which generator draws them does not matter for precision, and compiling JAX's random kernels
    for every new shape would cost more than the whole measurement.
    """
    rng = np.random.default_rng(seed)
    _, shapes = jax.eval_shape(lambda key: model.init(key, (width,)), jax.random.PRNGKey(0))
    params = jax.tree.map_with_path(
        lambda path, s: (
            rng.standard_normal(s.shape, np.float32) / np.sqrt(s.shape[0])
            if path[-1].key == "W"
            else np.zeros(s.shape, np.float32)
        ),
        shapes,
    )
    x = rng.standard_normal((BATCH, width), np.float32)
    return params, x, rng.integers(0, CLASSES, BATCH).astype(np.int32)


def gradients(activation: str, depth: int, width: int, seed: int = 0) -> dict:
    """backprop and jax.grad in float32 and float64, from the same float32 params and data."""
    model = jaxbp.mlp([width] * (depth - 1) + [CLASSES], activation)
    params, x, y = draw(model, width, seed)
    out = {}
    for bits, dtype in ((32, jnp.float32), (64, jnp.float64)):
        p, xd = jax.tree.map(lambda a, d=dtype: jnp.asarray(a, d), (params, x))
        for name, engine in (("backprop", jaxbp.backprop), ("autodiff", jaxbp.autodiff)):
            out[f"{name}{bits}"] = engine(model, softmax_cross_entropy, p, xd, jnp.asarray(y))[1]
    return out


def sweep(activations, depths, widths) -> list[dict]:
    rows = []
    for activation, depth, width in itertools.product(activations, depths, widths):
        grads = gradients(activation, depth, width)
        row = {"activation": activation, "depth": depth, "width": width}
        rows.append(row | {c: rel_error(grads[g], grads[r]) for c, (g, r) in COMPARISONS.items()})
    return rows


def summarise(rows: list[dict]) -> dict:
    """Per comparison: the largest error and its configuration, and the median error."""
    out = {}
    for name in COMPARISONS:
        worst = max(rows, key=lambda row, n=name: row[n])
        out[name] = {"largest": worst[name], "median": np.median([r[name] for r in rows])}
        out[name] |= {f"largest_at_{k}": worst[k] for k in ("activation", "depth", "width")}
    return out


def float32_ratio(rows: list[dict]) -> float:
    """Geometric mean over configurations of (backprop's float32 error / jax.grad's)."""
    backprop = np.log([r["float32 backprop vs float64 truth"] for r in rows])
    autodiff = np.log([r["float32 jax.grad vs float64 truth"] for r in rows])
    return float(np.exp(np.mean(backprop - autodiff)))


def plot(rows: list[dict], activations, depths, out) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharex=True)
    panels = [("float64: backprop vs jax.grad",), ("float32: backprop vs jax.grad",)]
    panels.append(("float32 backprop vs float64 truth", "float32 jax.grad vs float64 truth"))
    for ax, names in zip(axes, panels):
        for i, activation in enumerate(activations):
            for name, style in zip(names, ("o-", "x--")):
                # The worst width at each depth: the envelope of what the sweep saw.
                worst = [
                    max(r[name] for r in rows if r["activation"] == activation and r["depth"] == d)
                    for d in depths
                ]
                label = activation if len(names) == 1 else f"{activation}, {name.split()[1]}"
                ax.plot(depths, worst, style, color=f"C{i}", ms=4, label=label)
        ax.set(xscale="log", yscale="log", xlabel="depth (Dense layers)", ylabel="relative error")
        ax.set_title(names[0] if len(names) == 1 else "float32 vs float64 truth", fontsize=10)
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.xaxis.set_minor_locator(plt.NullLocator())
        eps = EPS[64] if "float64:" in names[0] else EPS[32]
        ax.axhline(eps, color="grey", ls=":", lw=1, label=f"machine epsilon {eps:.1e}")
        ax.legend(fontsize=7)
    fig.suptitle("Gradient error, worst over widths and parameter leaves")
    save_figure(fig, out, "errors.png")


def main() -> None:
    args = parse_args(__doc__)
    if args.quick:
        activations, depths, widths = QUICK_ACTIVATIONS, QUICK_DEPTHS, QUICK_WIDTHS
    else:
        activations, depths, widths = ACTIVATIONS, DEPTHS, WIDTHS
    rows = sweep(activations, depths, widths)
    config = {"activations": activations, "depths": depths, "widths": widths, "batch": BATCH}
    columns = list(rows[0])
    results = {
        "config": config,
        "errors": summarise(rows),
        "float32_error_ratio_backprop_over_jax_grad": float32_ratio(rows),
        "table": {"columns": columns, "rows": [[r[c] for c in columns] for r in rows]},
    }
    write_json(args.out, "results.json", results)
    plot(rows, activations, depths, args.out)
    for name, e in results["errors"].items():
        print(f"{name:34s} largest {e['largest']:.2e}  median {e['median']:.2e}")
    ratio = results["float32_error_ratio_backprop_over_jax_grad"]
    print(f"float32 error against the float64 truth, backprop / jax.grad: {ratio:.3f}")


if __name__ == "__main__":
    main()
