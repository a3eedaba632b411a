"""Backprop, feedback alignment (FA) and direct feedback alignment (DFA) learning digits.

Two models, an MLP and a residual MLP (Dense layers inside skip connections, where a rule must
replace the Dense's backward and never the Residual's). Per model, one init, one optimizer and
one data order per seed; only the backward rule changes, and it reaches `jaxbp.train.fit`
through its `grad=` option (`"backprop"`, or the engines made by `jaxbp.feedback_alignment` and
`jaxbp.direct_feedback_alignment`). Per epoch: test accuracy, and for every Dense layer's W (by
its path, `jaxbp.walk`) the angle between the update the engine used and the true gradient
(`jaxbp.autodiff`), both taken on the whole training set at the parameters of that epoch's end.

How the angles see the parameters: `fit` is called once per engine and seed, with its optimizer
state intact for the whole run, and writes a checkpoint at every epoch end (`checkpoint_dir`, in a
scratch folder); its `on_epoch` callback reads that checkpoint back with `jaxbp.checkpoint.load` and
measures the angles. So the trained run is exactly `fit(..., epochs=EPOCHS)`, and the measurement
only looks. Epoch 0 is the init. The output layer's angle is 0 for FA and DFA by construction (it
gets the true error), and every angle is ~0 for backprop: both are reported as sanity checks.
For FA, the angle between each W and the fixed feedback matrix B that stands in for it is reported
too: the forward weights coming to align with B is why FA learns at all.

Usage:
    python experiments/feedback_alignment.py --out experiments/results/feedback_alignment [--quick]

Writes results.json (per model and engine: final and best test accuracy, accuracy per epoch,
angles per layer per epoch, wall time; per seed and mean over seeds), accuracy.png (test
accuracy of the three engines, a panel per model) and alignment.png (FA's and DFA's angles to
the true gradient over training, a row per model).
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import time
from pathlib import Path

import jax
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")  # files only: no display on a CI runner or a shared machine
import matplotlib.pyplot as plt  # noqa: E402
from _common import parse_args  # noqa: E402

import jaxbp  # noqa: E402
from jaxbp import checkpoint, datasets, train  # noqa: E402

HIDDEN = (256, 256)  # two hidden layers: the least depth at which FA's and DFA's updates differ
QUICK_HIDDEN = (64, 64)  # small enough to compile and train in seconds
BLOCKS = 2  # the residual MLP: Dense(width), 2 blocks x + Dense(relu(Dense(x))), Dense(10)
ACTIVATION = "relu"  # FA and DFA come within a point of backprop with it (tanh did about as well)
LEARNING_RATE = 1e-3  # Adam's default; stable for all three engines at this width
BATCH_SIZE = 32  # 44 updates per epoch on 1437 examples, so a few epochs already learn a lot
EPOCHS = 40  # backprop levels off by ~20; FA and DFA keep creeping up a little after it
QUICK_EPOCHS = 3  # enough for every engine to get well above chance (10%)
SEEDS = 3  # init, data order and feedback matrices per seed: the spread shows what is noise
QUICK_SEEDS = 1
DPI = 100  # the PNGs are committed with the results: keep them small
ENGINES = ("backprop", "feedback_alignment", "direct_feedback_alignment")
LABELS = {"backprop": "backprop", "feedback_alignment": "FA", "direct_feedback_alignment": "DFA"}


def make_engine(name: str, model, params, key):
    """The `grad=` argument for fit: a name fit knows, or an engine from jaxbp.feedback."""
    if name == "backprop":
        return "backprop"
    make = getattr(jaxbp, name)  # feedback_alignment or direct_feedback_alignment
    return make(model, params, key=key)


def make_model(name: str, hidden):
    """The MLP, or the residual MLP of the same width (no normalisation: only Dense has params)."""
    if name == "mlp":
        return jaxbp.mlp([*hidden, 10], ACTIVATION)
    return jaxbp.layers.residual_mlp(hidden[0], BLOCKS, 10, ACTIVATION, norm=None)


def dense_names(model) -> dict[tuple, str]:
    """{layer path: "W1", "W2", ...} for the model's Dense layers at any depth, input first."""
    dense = [path for path, layer in jaxbp.walk.leaves(model) if isinstance(layer, jaxbp.Dense)]
    return {path: f"W{n}" for n, path in enumerate(dense, 1)}


def angle_meter(model, engine, data, names):
    """params -> {"W1": degrees, ...}: the engine's update against the true gradient on data."""
    grad = jaxbp.backprop if engine == "backprop" else engine
    loss = jaxbp.softmax_cross_entropy

    @jax.jit
    def both(params):
        return grad(model, loss, params, *data)[1], jaxbp.autodiff(model, loss, params, *data)[1]

    def measure(params):
        angles = jaxbp.alignment(*both(params))
        return {name: angles[f"{jaxbp.walk.path_str(p)}['W']"] for p, name in names.items()}

    return measure


def weight_feedback_angles(engine, params, names) -> dict[str, float]:
    """FA only: angle between W_k and its fixed stand-in B_k, for every layer whose B is used."""
    angles, first = {}, next(iter(names))
    for path, B in engine.feedback.items():  # keyed by the Dense layer's path
        if path != first:  # the first layer's dx is dropped, so its B is never used
            w, b = np.ravel(jaxbp.walk.params_at(params, path)["W"]), np.ravel(B)
            cos = w @ b / (np.linalg.norm(w) * np.linalg.norm(b))
            angles[names[path]] = float(np.degrees(np.arccos(np.clip(cos, -1, 1))))
    return angles


def run(model_name: str, name: str, seed: int, data, hidden, epochs: int) -> dict:
    """One model, one engine, one seed: fit once, measuring the angles at every epoch end."""
    (x_train, y_train), test = data
    key = jax.random.key(seed)
    init_key, fit_key, feedback_key = jax.random.split(key, 3)
    model = make_model(model_name, hidden)
    _, params = model.init(init_key, x_train.shape[1:])
    engine = make_engine(name, model, params, feedback_key)
    optimizer = optax.adam(LEARNING_RATE)
    names = dense_names(model)
    measure = angle_meter(model, engine, (x_train, y_train), names)
    record = {"angles": [measure(params)], "weight_vs_feedback": []}
    fa = name == "feedback_alignment"
    if fa:
        record["weight_vs_feedback"].append(weight_feedback_angles(engine, params, names))
    like = {"params": params, "opt_state": optimizer.init(params)}
    with tempfile.TemporaryDirectory() as scratch:

        def on_epoch(epoch, metrics):
            state, _ = checkpoint.load(Path(scratch) / train.CHECKPOINT_NAME, like=like)
            record["angles"].append(measure(state["params"]))
            if fa:
                angles = weight_feedback_angles(engine, state["params"], names)
                record["weight_vs_feedback"].append(angles)

        t0 = time.perf_counter()
        _, history = train.fit(
            model, jaxbp.softmax_cross_entropy, params, (x_train, y_train),
            optimizer=optimizer, epochs=epochs, batch_size=BATCH_SIZE, key=fit_key, grad=engine,
            eval_data=test, progress=False, checkpoint_dir=scratch, on_epoch=on_epoch,
        )  # fmt: skip
        record["wall_time_s"] = time.perf_counter() - t0
    record["accuracy"] = history["eval_accuracy"]
    record["epoch_time_s"] = float(np.median(history["epoch_time"]))  # the median skips compile
    return record


def by_layer(rows: list[dict]) -> dict[str, list]:
    """[{"W1": a, ...} per epoch] -> {"W1": [a per epoch], ...}."""
    return {layer: [row[layer] for row in rows] for layer in (rows[0] if rows else {})}


def summarise(name: str, records: list[dict]) -> dict:
    """Per seed and mean over seeds: accuracies, angle trajectories, times."""
    acc = np.array([r["accuracy"] for r in records])
    angles = [by_layer(r["angles"]) for r in records]
    out = {
        "final_accuracy": float(acc[:, -1].mean()),
        "best_accuracy": float(acc.max(1).mean()),
        "final_accuracy_per_seed": acc[:, -1].tolist(),
        "best_accuracy_per_seed": acc.max(1).tolist(),
        "accuracy_mean": acc.mean(0).tolist(),
        "accuracy_per_seed": acc.tolist(),
        "angles_mean": {k: np.mean([a[k] for a in angles], 0).tolist() for k in angles[0]},
        "angles_per_seed": angles,
        "wall_time_s": sum(r["wall_time_s"] for r in records),
        "epoch_time_s": float(np.median([r["epoch_time_s"] for r in records])),
    }
    if name == "feedback_alignment":
        weights = [by_layer(r["weight_vs_feedback"]) for r in records]
        out["weight_vs_feedback_mean"] = {
            k: np.mean([w[k] for w in weights], 0).tolist() for k in weights[0]
        }
    return out


def plain(value):
    """JSON-ready: floats to 6 significant digits; NaN (a zero update) to None."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    return value


def write_json(path: Path, results: dict) -> None:
    """Indented JSON with each list of numbers on one line, so a trajectory reads as a row."""
    text = json.dumps(plain(results), indent=1)
    text = re.sub(
        r"\[\s*([^\[\]{}]*?)\s*\]", lambda m: "[" + re.sub(r",\s+", ", ", m[1]) + "]", text
    )
    path.write_text(text + "\n")


def plot_accuracy(results: dict, out: Path) -> None:
    models = results["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(6.4 * len(models), 4), squeeze=False)
    for ax, res in zip(axes[0], models.values()):
        _accuracy_panel(ax, res, results["config"]["seeds"])
    save(fig, out / "accuracy.png")


def _accuracy_panel(ax, results: dict, seeds: int) -> None:
    for name, res in results["engines"].items():
        runs = np.array(res["accuracy_per_seed"])
        epochs = np.arange(1, runs.shape[1] + 1)
        label = f"{LABELS[name]} (final {res['final_accuracy']:.1%})"
        ax.plot(epochs, runs.mean(0), lw=1.8, label=label)
        if len(runs) > 1:
            ax.fill_between(epochs, runs.min(0), runs.max(0), alpha=0.2)
    worst = min(res["final_accuracy"] for res in results["engines"].values())
    ax.set(xlabel="epoch", ylabel="test accuracy", ylim=(min(0.8, worst - 0.1), 1.0))
    ax.set_title(f"digits, {results['model']}: mean of {seeds} seeds (band: min-max)", fontsize=10)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)


def plot_alignment(results: dict, out: Path) -> None:
    models = results["models"]
    fig, axes = plt.subplots(
        len(models), 2, figsize=(10, 4.5 * len(models)), sharey=True, squeeze=False
    )
    for row, res in zip(axes, models.values()):
        _alignment_row(row, res)
    fig.suptitle("Angle between the engine's update and the true gradient (whole training set)")
    save(fig, out / "alignment.png")


def _alignment_row(axes, results: dict) -> None:
    for ax, name in zip(axes, ENGINES[1:]):
        res = results["engines"][name]
        for n, (layer, curve) in enumerate(res["angles_mean"].items()):
            epochs = np.arange(len(curve))
            ax.plot(epochs, curve, color=f"C{n}", lw=1.8, label=f"{layer} vs true gradient")
            runs = np.array([a[layer] for a in res["angles_per_seed"]], dtype=float)
            if len(runs) > 1:
                ax.fill_between(epochs, runs.min(0), runs.max(0), color=f"C{n}", alpha=0.2)
        for n, (layer, curve) in enumerate(res.get("weight_vs_feedback_mean", {}).items(), 1):
            ax.plot(curve, color=f"C{n}", ls=":", lw=1.4, label=f"{layer} vs its B")
        ax.axhline(90, color="grey", lw=0.8, ls="--")
        title = f"{LABELS[name]}, {results['model']}"
        ax.set(title=title, xlabel="epoch (0: init)", ylim=(-3, 100))
        many = len(ax.get_lines()) > 7  # the residual MLP's 6 layers: two columns, lower down
        ax.legend(
            fontsize=7 if many else 8,
            ncol=2 if many else 1,
            loc="lower right",
            bbox_to_anchor=(1, 0.06),
        )  # below the curves
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("angle (degrees)")


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def describe(model_name: str, dims) -> tuple[str, dict]:
    """The model's one-line name and its Dense layers' shapes, input first."""
    if model_name == "mlp":
        pairs = list(zip(dims, dims[1:]))
        text = "-".join(map(str, dims)) + " " + ACTIVATION
    else:
        width = dims[1]
        pairs = [(dims[0], width)] + [(width, width)] * (2 * BLOCKS) + [(width, 10)]
        text = f"{dims[0]}-{width} + {BLOCKS} x (x + {width}-{width}-{width} {ACTIVATION}) -10"
    return text, {f"W{k}": f"{a}x{b}" for k, (a, b) in enumerate(pairs, 1)}


def main() -> None:
    args = parse_args(__doc__)
    hidden = QUICK_HIDDEN if args.quick else HIDDEN
    epochs, seeds = (QUICK_EPOCHS, QUICK_SEEDS) if args.quick else (EPOCHS, SEEDS)
    data = datasets.load("digits")
    dims = (data[0][0].shape[1], *hidden, 10)
    t0 = time.perf_counter()
    models = {}
    for model_name in ("mlp", "residual_mlp"):
        records = {
            name: [run(model_name, name, s, data, hidden, epochs) for s in range(seeds)]
            for name in ENGINES
        }
        text, layers = describe(model_name, dims)
        models[model_name] = {
            "model": text,
            "layers": layers,
            "engines": {name: summarise(name, recs) for name, recs in records.items()},
        }
    results = {
        "config": {
            "dataset": "digits",
            "optimizer": f"adam({LEARNING_RATE})",
            "batch_size": BATCH_SIZE,
            "epochs": epochs,
            "seeds": seeds,
            "quick": args.quick,
            "angles": "degrees, whole training set, at epoch 0 (init) .. epochs",
        },
        "models": models,
        "total_wall_time_s": time.perf_counter() - t0,
    }
    results = plain(results)  # the plots read the same plain numbers the JSON holds
    write_json(args.out / "results.json", results)
    plot_accuracy(results, args.out)
    plot_alignment(results, args.out)
    for model_name, model in results["models"].items():
        for name, res in model["engines"].items():
            start = {k: round(v[0]) for k, v in res["angles_mean"].items()}
            end = {k: round(v[-1]) for k, v in res["angles_mean"].items()}
            print(
                f"{model_name:>12} {LABELS[name]:>8}: final {res['final_accuracy']:.1%}, best "
                f"{res['best_accuracy']:.1%}, angles {start} -> {end}, {res['wall_time_s']:.1f} s"
            )


if __name__ == "__main__":
    main()
