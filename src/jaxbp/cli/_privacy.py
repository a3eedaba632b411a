"""`jaxbp train --grad dp`: its options, checked and filled in before anything is written."""

from __future__ import annotations

import jax

from jaxbp.cli._common import UsageError, bad_input

DP_OPTIONS = {"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-5}  # --grad dp's defaults


def check_dp(args, model, loss, params, state, train_data) -> str:
    """--grad dp's options (defaults filled in), the accountant's presence, and a model whose
    examples stay separate; returns a line on the privacy the whole run will spend ('' unless
    --grad dp)."""
    given = [f"--{k.replace('_', '-')}" for k in DP_OPTIONS if getattr(args, k) is not None]
    if args.grad != "dp":
        if given:
            raise UsageError(f"{', '.join(given)}: only for --grad dp")
        return ""
    for name, default in DP_OPTIONS.items():
        setattr(args, name, default if getattr(args, name) is None else getattr(args, name))
    from jaxbp.quantities.dp import dp_sgd

    with bad_input("--grad dp", (ImportError, ValueError)):  # no dp-accounting, or a bad option
        engine = dp_sgd(args.clip_norm, args.noise_multiplier, delta=args.delta)
    (x, y), key = train_data, jax.random.PRNGKey(0)
    options = {"state": state} if jax.tree.leaves(state) else {}
    # Traced only: a layer that mixes examples (BatchNorm in training) refuses here; any other
    # error is not the user's (the model and data were checked already).
    with bad_input("--grad dp needs per-example gradients", (NotImplementedError,)):
        jax.eval_shape(lambda p: engine(model, loss, p, x[:2], y[:2], key=key, **options), params)
    batch, steps = min(args.batch_size, len(x)), len(x) // min(args.batch_size, len(x))
    with bad_input("--grad dp: the privacy accountant refused the run's settings"):
        total = engine.epoch_metrics(steps=args.epochs * steps, n=len(x), batch_size=batch)
    spent = f"epsilon {total['epsilon']:.3g}" if total else "no privacy (noise multiplier 0)"
    return (
        f"DP-SGD: clip norm {args.clip_norm:g}, noise multiplier {args.noise_multiplier:g}, "
        f"Poisson batches of expected size {batch} (q = {batch / len(x):.4g}); "
        f"after {args.epochs} epochs: {spent} at delta {args.delta:g}"
    )
