"""What `jaxbp train` does once its arguments parse: set up, check, train, write, report."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp import checkpoint, datasets, losses
from jaxbp._plot import plot_history
from jaxbp.backprop import autodiff, backprop
from jaxbp.cli import UsageError
from jaxbp.cli.train import RESUMABLE
from jaxbp.layers import mlp
from jaxbp.train import CHECKPOINT_NAME, TrainingDiverged, fit


def train(args: argparse.Namespace) -> int:
    """Run `jaxbp train`; bad arguments are found before the output folder is touched."""
    (x, y), (x_test, y_test), info = _load(args.dataset)
    loss = losses.get(
        args.loss or ("softmax_cross_entropy" if info.task == "classification" else "mse")
    )
    model = mlp([*args.layers, info.n_outputs], args.activation, args.output_activation)
    devices, key = _devices(args), jax.random.PRNGKey(args.seed)
    _, params = model.init(jax.random.fold_in(key, 0), info.input_shape)
    out = _prepare_out(args)
    print(
        f"jaxbp train: {args.dataset} ({info.n_train} train, {info.n_test} test, {info.task}), "
        f"model {model!r}, loss {loss!r}, {args.optimizer} lr {args.lr:g}, {len(devices)} device(s)"
    )
    _report_gradient_check(model, loss, params, x[: args.batch_size], y[: args.batch_size])
    steps = args.epochs * max(len(x) // min(args.batch_size, len(x)), 1)
    t0 = time.perf_counter()
    try:
        params, history = fit(
            model,
            loss,
            params,
            (x, y),
            optimizer=_optimizer(args, steps),
            epochs=args.epochs,
            batch_size=args.batch_size,
            key=key,
            grad=_engine(args, model, params),
            eval_data=(x_test, y_test),
            devices=devices,
            progress=args.progress,
            checkpoint_dir=out,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            on_epoch=_metrics_writer(out / "metrics.jsonl", args.resume),
        )
    except TrainingDiverged as error:
        if error.history["loss"]:
            plot_history(error.history, out / "plot.png", title=f"{args.dataset}: stopped")
        print(f"jaxbp train: stopped: {error}", file=sys.stderr)
        return 1
    _summarise(history, out, args, time.perf_counter() - t0, steps)
    return 0


def _load(name):
    train_data, test_data = datasets.load(name)
    return train_data, test_data, datasets.describe((train_data, test_data), name)


def _config(args) -> dict:
    skip = ("run", "verb")
    return {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in skip
    }


def _metrics_writer(path: Path, resume: bool):
    """Append one JSON line per epoch; a resumed run first keeps only the checkpoint's epochs."""
    saved = path.parent / CHECKPOINT_NAME
    _rewrite_metrics(path, saved if resume and saved.exists() else None)

    def on_epoch(epoch, metrics):
        with path.open("a") as f:
            f.write(json.dumps({"epoch": epoch, **metrics}) + "\n")

    return on_epoch


def _prepare_out(args) -> Path:
    out: Path = args.out
    config = _config(args)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".jaxbp-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UsageError(
            f"cannot write to output folder {out}: {error.strerror or error}"
        ) from None
    saved = out / "config.json"
    if (out / CHECKPOINT_NAME).exists() and not (args.resume or args.overwrite):
        raise UsageError(
            f"{out} already holds a run ({CHECKPOINT_NAME}); pass --resume to continue it, "
            "--overwrite to replace it, or another --out"
        )
    if args.resume and saved.exists():
        before = json.loads(saved.read_text())
        changed = sorted(k for k in config if k not in RESUMABLE and before.get(k) != config[k])
        if changed:
            raise UsageError(
                f"--resume with different settings than the run in {out}: {', '.join(changed)}"
            )
    checkpoint.atomic_write(saved, lambda f: f.write(json.dumps(config, indent=2).encode()))
    if args.overwrite and not args.resume:
        for name in (CHECKPOINT_NAME, "metrics.jsonl", "plot.png"):
            (out / name).unlink(missing_ok=True)
    return out


def _rewrite_metrics(path: Path, checkpoint_path) -> None:
    """metrics.jsonl restarts with the epochs the checkpoint kept, so lines match parameters."""
    lines = []
    if checkpoint_path:
        history = checkpoint.load(checkpoint_path)[1]["history"]
        for epoch in range(len(history["loss"])):
            lines.append(
                json.dumps(
                    {
                        "epoch": epoch + 1,
                        **{k: v[epoch] for k, v in history.items() if len(v) > epoch},
                    }
                )
            )
    checkpoint.atomic_write(
        path, lambda f: f.write("".join(line + "\n" for line in lines).encode())
    )


def _report_gradient_check(model, loss, params, x, y) -> None:
    _, bp = jax.jit(lambda p: backprop(model, loss, p, x, y))(params)
    _, ad = jax.jit(lambda p: autodiff(model, loss, p, x, y))(params)
    errors = [
        float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-30))
        for a, b in zip(jax.tree.leaves(bp), jax.tree.leaves(ad))
    ]
    print(
        "gradient check on the first batch: backprop vs jax.grad, "
        f"largest relative error {max(errors):.1e} (float32)"
    )


def _optimizer(args, steps: int) -> optax.GradientTransformation:
    lr = optax.cosine_decay_schedule(args.lr, steps) if args.schedule == "cosine" else args.lr
    if args.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=args.weight_decay)
    if args.optimizer == "momentum":
        return optax.sgd(lr, momentum=0.9)
    return getattr(optax, args.optimizer)(lr)


def _engine(args, model, params):
    if args.grad in ("backprop", "autodiff"):
        return args.grad
    from jaxbp import feedback

    make = feedback.feedback_alignment if args.grad == "fa" else feedback.direct_feedback_alignment
    return make(model, params, key=jax.random.fold_in(jax.random.PRNGKey(args.seed), 1))


def _devices(args):
    devices = jax.local_devices()
    if args.devices is not None and args.devices > len(devices):
        raise UsageError(f"--devices {args.devices}: only {len(devices)} local device(s) present")
    return devices[: args.devices] if args.devices else devices


def _summarise(history, out: Path, args, seconds: float, steps: int) -> None:
    plot_history(
        history, out / "plot.png", title=f"{args.dataset}: {args.activation} MLP, {args.grad}"
    )
    last = {k: v[-1] for k, v in history.items() if v}
    acc = f", test accuracy {last['eval_accuracy']:.2%}" if "eval_accuracy" in last else ""
    per_step = np.median(history["epoch_time"][1:] or history["epoch_time"]) / max(
        steps // args.epochs, 1
    )
    print(
        f"done: {len(history['loss'])} epochs in {seconds:.1f} s "
        f"({1 / per_step:,.0f} steps/s after compiling), "
        f"train loss {last['loss']:.4f}, test loss {last.get('eval_loss', float('nan')):.4f}{acc}"
    )
    print(f"wrote {out}/config.json, metrics.jsonl, {CHECKPOINT_NAME}, plot.png")
