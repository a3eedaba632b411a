"""What `jaxbp train` does once its arguments parse: set up, check, train, write, report."""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp import _multihost, datasets, losses
from jaxbp._fit_setup import check_arrays, check_labels, output_shape
from jaxbp._plot import plot_history
from jaxbp.backprop import autodiff, backprop
from jaxbp.cli import _run_folder as run_folder
from jaxbp.cli._common import UsageError, bad_input, reason
from jaxbp.cli._privacy import check_dp
from jaxbp.cli._sequence import describe_run, report_baselines, reported, sequence_model
from jaxbp.cli._train_options import SEQUENCE_MODELS, resolve_defaults
from jaxbp.layers import IMAGE_PRESETS, init_state, mlp, preset
from jaxbp.train import CHECKPOINT_NAME, TrainingDiverged, fit


def train(args: argparse.Namespace) -> int:
    """Run `jaxbp train`. Every check of the arguments against the data and the model comes
    before the output folder is touched; the folder stays locked while this run writes it."""
    _distributed(args)  # first: jax.distributed must start before any device is used
    resolve_defaults(args)  # --dataset, --epochs, --lr, ... as --model wants them
    writer = _multihost.is_writer()
    images = _wants_images(args)
    (x, y), (x_test, y_test), info = _load(args.dataset, args.task, images, args.context)
    loss_name = args.loss or ("softmax_cross_entropy" if info.task == "classification" else "mse")
    with bad_input("--loss"):
        loss = losses.get(loss_name)
    model = _model(args, info.n_outputs)
    devices, key = _devices(args), jax.random.PRNGKey(args.seed)
    # One compiled program draws every layer's params (op by op, each layer's draws compiled
    # on their own: ~1.5 s of a small run's start).
    params = jax.jit(lambda k: model.init(k, info.input_shape)[1])(jax.random.fold_in(key, 0))
    state = init_state(model, params)  # () unless a layer keeps state (BatchNorm)
    with_state = {"state": state} if jax.tree.leaves(state) else {}
    _check_fit(args, model, loss, params, (x, y), (x_test, y_test), len(devices))
    privacy = check_dp(args, model, loss, params, state, (x, y))  # fills in its defaults
    steps = max(len(x) // min(args.batch_size, len(x)), 1)  # per epoch
    optimizer = _optimizer(args, model, args.epochs * steps)  # what it refuses, before any file
    config = _config(args, task=info.task, loss=loss_name, devices=len(devices))
    if args.resume:  # before the folder is created; the rest is checked under its lock
        run_folder.require_run(args.out)
    # Across processes only process 0 locks and writes --out; all learn if that failed.
    with _multihost.entered_once(run_folder.locked(args.out), default=args.out) as out:
        prepare = functools.partial(run_folder.prepare_out, args, config)
        start = _multihost.agree(_multihost.run_once(prepare, default=0))
        if start == args.epochs:
            print(
                f"jaxbp train: the run in {out} has trained all its {start} epochs; "
                "nothing to do (give a larger --epochs to train it further)"
            )
            return 0
        data = f"{args.dataset} ({info.n_train} train, {info.n_test} test, {info.task})"
        shown = repr(model)
        if args.model in SEQUENCE_MODELS:  # a GPT's repr runs to a screenful
            data, shown = describe_run(args, info, params)
        print(
            f"jaxbp train: {data}, model {shown}, loss {loss!r}, {args.optimizer} lr "
            f"{args.lr:g}, {len(devices)} device(s)"
        )
        if privacy:
            print(privacy)
        first = (x[: args.batch_size], y[: args.batch_size])
        _report_gradient_check(model, loss, params, *first, key=key, **with_state)
        if start:
            print(f"resumed from epoch {start} ({out / CHECKPOINT_NAME}), on to {args.epochs}")
        on_epoch = None
        if writer:  # a resumed run's metrics.jsonl is cut back to its checkpoint's epochs here
            on_epoch = reported(args, run_folder.metrics_writer(out / "metrics.jsonl", args.resume))
        t0 = time.perf_counter()
        try:
            *params, history = fit(
                model,
                loss,
                params,
                (x, y),
                optimizer=optimizer,
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
                # Said to be a regression: no accuracy, even where the targets are all 0 or 1.
                accuracy=False if args.task == "regression" else None,
                on_epoch=on_epoch,
                **with_state,
            )
        except TrainingDiverged as error:
            if error.history["loss"] and writer:
                plot_history(error.history, out / "plot.png", title=f"{args.dataset}: stopped")
            print(f"jaxbp train: stopped: {error}", file=sys.stderr)
            return 1
        if writer:
            _summarise(history, out, args, time.perf_counter() - t0, steps, start)
            if args.model in SEQUENCE_MODELS and args.baselines:
                report_baselines(args, (x, y), (x_test, y_test), history, out)
    return 0


def _check_fit(args, model, loss, params, train_data, test_data, n_devices: int) -> None:
    """What fit would refuse about the data, loss and devices, found before any file is written."""
    data = {"the training data": train_data, "the test data": test_data}
    with bad_input():  # nothing traced: its messages name the data and what is wrong with it
        for name, pair in data.items():
            check_arrays(name, pair, model)
    # Not bad input if it fails: the model was built for this data's shape and type.
    outs = {name: output_shape(model, params, pair[0]) for name, pair in data.items()}
    with bad_input():
        for name, pair in data.items():
            check_labels(name, pair[1], outs[name])
    x, y = train_data
    batch = min(args.batch_size, len(x))
    full = outs["the training data"]
    out = jax.ShapeDtypeStruct((batch, *full.shape[1:]), full.dtype)
    try:  # the loss against these labels: only its own refusal is the user's choice of loss
        jax.eval_shape(loss.apply, out, y[:batch])
    except (ValueError, TypeError) as error:
        hint = ""
        if np.issubdtype(np.asarray(y).dtype, np.integer):
            hint = f"; {args.dataset} has integer class labels: use softmax_cross_entropy"
        raise UsageError(f"{reason(error)}{hint}") from error
    if getattr(loss, "targets", None) == "labels" and out.shape[-1] == 1:  # one class: no choice
        raise UsageError(
            f"{loss!r} over a single output is always 0: use --loss binary_cross_entropy or mse"
        )
    if n_devices > 1 and batch % n_devices:
        raise UsageError(
            f"--batch-size {batch} does not split evenly over {n_devices} devices: "
            f"give a multiple of {n_devices}, or fewer --devices"
        )


def _load(name, task, images: bool = False, context: int | None = None):
    """The data and what it is; --task, when given, says what a file's labels are; images asks
    digits for (n, 8, 8, 1) arrays, for the convolutional presets; context cuts names' windows."""
    options = ({} if task is None else {"task": task}) | ({"images": True} if images else {})
    options |= {} if context is None else {"context": context}
    # Its messages name the file or dataset; OSError: a file that cannot be read.
    with bad_input(errors=(ValueError, TypeError, OSError)):
        train_data, test_data = datasets.load(name, **options)
    return train_data, test_data, datasets.describe((train_data, test_data), name)


def _wants_images(args) -> bool:
    if args.model not in IMAGE_PRESETS:
        return False
    if args.dataset != "digits":
        raise UsageError(
            f"--model {args.model} takes images: only --dataset digits comes as images, "
            f"got {args.dataset}"
        )
    return True


def _config(args, **resolved) -> dict:
    """The settings as given, with those left to defaults that depend on the data or the machine
    (`task`, `loss`, `devices`) as resolved."""
    skip = ("run", "verb")
    given = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in skip
    }
    return given | resolved


# float32: the two sweeps sum the same products in other orders, which moves the whole
# gradient by a few ulps (~1e-7 relative); a wrong rule moves it by far more. 1e-4 is ~800 ulps.
GRADIENT_CHECK_BOUND = 1e-4


def _report_gradient_check(model, loss, params, x, y, **options) -> None:
    """backprop against jax.grad on one batch, relative to the whole gradient's norm (a bias
    just before a BatchNorm has a gradient of exactly zero, of which both give only noise); above
    GRADIENT_CHECK_BOUND a warning on stderr says a rule disagrees, and training goes on."""
    bp = jax.jit(lambda p: backprop(model, loss, p, x, y, **options)[1])(params)
    ad = jax.jit(lambda p: autodiff(model, loss, p, x, y, **options)[1])(params)
    flat = [jnp.concatenate([g.ravel() for g in jax.tree.leaves(t)]) for t in (bp, ad)]
    error = float(jnp.linalg.norm(flat[0] - flat[1]) / jnp.maximum(jnp.linalg.norm(flat[1]), 1e-30))
    print(
        "gradient check on the first batch: backprop vs jax.grad, "
        f"relative error {error:.1e} (float32)"
    )
    if not error <= GRADIENT_CHECK_BOUND:  # NaN included
        print(
            f"warning: backprop and jax.grad disagree on the first batch (relative error "
            f"{error:.1e} > {GRADIENT_CHECK_BOUND:.0e}): a backward rule is wrong; "
            "`jaxbp check` tests each rule",
            file=sys.stderr,
        )


def _model(args, outputs: int):
    """The network the flags name; what its builder refuses (an unknown preset or activation, a
    --width that --heads does not divide) is the flags' fault, named in the builder's message."""
    with bad_input("--model" if args.model else None):
        if args.model in SEQUENCE_MODELS:
            return sequence_model(vars(args))
        if args.model is None:
            return mlp([*args.layers, outputs], args.activation, args.output_activation)
        return preset(args.model, outputs)


def _optimizer(args, model, steps: int) -> optax.GradientTransformation:
    lr = optax.cosine_decay_schedule(args.lr, steps) if args.schedule == "cosine" else args.lr
    if args.model in SEQUENCE_MODELS and args.schedule == "cosine":  # attention needs a warm-up
        lr = optax.warmup_cosine_decay_schedule(0.0, args.lr, max(steps // 20, 1), steps)
    if args.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=args.weight_decay)
    if args.optimizer == "momentum":
        return optax.sgd(lr, momentum=0.9)
    if args.optimizer == "kfac":  # a model it cannot precondition is the flag's fault
        from jaxbp.optimizers import kfac

        errors = (ValueError, TypeError, NotImplementedError)
        with bad_input(f"--optimizer kfac on this model ({type(model).__name__})", errors):
            return kfac(model, lr, damping=args.damping, inverse_every=args.inverse_every)
    return getattr(optax, args.optimizer)(lr)


def _engine(args, model, params):
    if args.grad in ("backprop", "autodiff"):
        return args.grad
    if args.grad == "dp":
        from jaxbp.quantities.dp import dp_sgd

        return dp_sgd(args.clip_norm, args.noise_multiplier, delta=args.delta)
    from jaxbp import feedback

    make = feedback.feedback_alignment if args.grad == "fa" else feedback.direct_feedback_alignment
    return make(model, params, key=jax.random.fold_in(jax.random.PRNGKey(args.seed), 1))


def _distributed(args) -> None:
    """Join a jax.distributed run when asked to; then only process 0 prints and writes files."""
    coordinator = args.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if args.num_processes is None and args.process_id is None and args.coordinator is None:
        return
    if None in (coordinator, args.num_processes, args.process_id):
        raise UsageError(
            "a multi-process run needs --coordinator HOST:PORT (or JAX_COORDINATOR_ADDRESS), "
            "--num-processes and --process-id"
        )
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        source = "--coordinator" if args.coordinator else "JAX_COORDINATOR_ADDRESS"
        raise UsageError(f"{source} {coordinator!r}: expected HOST:PORT, port 1 to 65535")
    if args.process_id >= args.num_processes:
        raise UsageError(
            f"--process-id {args.process_id} must be below --num-processes {args.num_processes}"
        )
    # Cross-process collectives for CPU devices (jax 0.10's default; other platforms ignore it).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, args.num_processes, args.process_id)
    if args.process_id > 0:  # process 0 reports for the run; the others' errors go to stderr
        sys.stdout.flush()  # then file descriptor 1 itself, as gloo's C++ logs go there too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        args.progress = False


def _devices(args):
    devices = jax.local_devices()
    if args.devices is not None and args.devices > len(devices):
        raise UsageError(f"--devices {args.devices}: only {len(devices)} local device(s) present")
    if jax.process_count() > 1:
        return _multihost.devices(args.devices)
    return devices[: args.devices] if args.devices else devices


def _summarise(history, out: Path, args, seconds: float, steps: int, start: int) -> None:
    """Plot, then one line: the epochs this run trained, its speed, the final metrics."""
    network = args.model if args.model in SEQUENCE_MODELS else f"{args.activation} MLP"
    plot_history(history, out / "plot.png", title=f"{args.dataset}: {network}, {args.grad}")
    last = {k: v[-1] for k, v in history.items() if v}
    acc = f", test accuracy {last['eval_accuracy']:.2%}" if "eval_accuracy" in last else ""
    if "epsilon" in last:  # DP-SGD: the privacy spent by every step so far
        acc += f", epsilon {last['epsilon']:.3g} at delta {args.delta:g}"
    end, times = len(history["loss"]), history["epoch_time"][start:]
    if len(times) > 1:  # the first epoch of a run compiles
        speed = f"{steps / np.median(times[1:]):,.0f} steps/s after compiling"
    else:
        speed = f"{steps / times[0]:,.0f} steps/s, compilation included"
    span = f"epochs {start + 1}-{end}" if end - start > 1 else f"epoch {end}"
    span = f"{span} ({end - start} this run)" if start else f"{end} epoch{'s' * (end > 1)}"
    print(
        f"done: {span} in {seconds:.1f} s ({speed}), train loss {last['loss']:.4f}, "
        f"test loss {last.get('eval_loss', float('nan')):.4f}{acc}"
    )
    print(f"wrote {out}/config.json, metrics.jsonl, {CHECKPOINT_NAME}, plot.png")
