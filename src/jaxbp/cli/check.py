"""Check hand-written backward rules against jax.vjp, finite differences and the dot-product test.

Without a target: every built-in layer and loss, and a few random models (several depths,
activations and losses) through jaxbp.backprop. With a target `module:attribute`: your own layer
or loss (or a class or factory that makes one when called with no arguments); `module` is
imported from the current directory or the Python path. A layer needs --input-shape (per
example, no batch axis); for a loss it is y_pred's per-example shape (default 5).

Prints one line per check (its worst error against each reference) and the full table of any
check that fails (of every check with --verbose). Exit status: 0 when all pass, 1 when any fails,
2 for bad arguments. --json writes {"ok", "dtype", "seed", "reports": [...]} to stdout (in place
of the tables) or, given a path, to that file.

examples:
  jaxbp check
  jaxbp check --dtype float32 --seed 3
  jaxbp check --json report.json
  jaxbp check mylayers:Swish --input-shape 5
  jaxbp check mylosses:make_huber --input-shape 3
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from functools import partial
from typing import Any

import numpy as np

from jaxbp.cli._common import UsageError, number, reason

HELP = "check backward rules against jax.vjp, finite differences and the dot-product test"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", nargs="?", help="module:attribute naming a layer or loss")
    parser.add_argument("--input-shape", help="per-example input shape of TARGET, e.g. 3,4")
    parser.add_argument(
        "--targets",
        default="auto",
        help="how a loss TARGET's targets are drawn: auto (default), normal, unit, labels, probs",
    )
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument(
        "--seed", type=number(int, zero=True), default=0, help="seed of every random draw (0)"
    )
    parser.add_argument("--batch-size", type=number(int), default=8, help="rows of each input (8)")
    parser.add_argument("--directions", type=number(int), default=3, help="random directions (3)")
    parser.add_argument(
        "--json", nargs="?", const="-", metavar="PATH", help="write JSON to PATH (or stdout)"
    )
    parser.add_argument("--verbose", action="store_true", help="print every check's table")


def run(args: argparse.Namespace) -> int:
    from jaxbp.check import summary_table

    options = {"key": args.seed, "dtype": args.dtype, "directions": args.directions}
    if args.target:
        reports = [_check_target(args, options)]
    else:
        reports = [check() for check in _builtin_checks(args.batch_size, options)]
    ok = all(r.ok for r in reports)
    if args.json:
        _write_json(args.json, {"ok": ok, "dtype": args.dtype, "seed": args.seed,
                                "reports": [r.to_dict() for r in reports]})  # fmt: skip
    if args.json != "-":
        print(summary_table(reports))
        for report in reports:
            if args.verbose or not report.ok:
                print(f"\n{report}")
        verdict = "all passed" if ok else f"{sum(not r.ok for r in reports)} FAILED"
        noun = "check" if len(reports) == 1 else "checks"
        print(f"\n{len(reports)} {noun}, {verdict} ({args.dtype}, seed {args.seed})")
    return 0 if ok else 1


def _builtin_checks(batch_size: int, options: dict) -> list:
    """A thunk per check: every layer, every loss, and four random models."""
    from jaxbp import layers as L
    from jaxbp import losses
    from jaxbp.check import check_layer, check_loss

    layers = [(L.activation(name), (5,)) for name in L.ACTIVATIONS]
    layers += [
        (L.LeakyRelu(0.3), (5,)), (L.Elu(0.5), (5,)), (L.Gelu(approximate=False), (5,)),
        (L.Dense(3), (4,)), (L.Flatten(), (2, 3)),
        (L.serial(L.Flatten(), L.Dense(4), L.Tanh(), L.Dense(3)), (2, 3)),
        (L.Dense(3), (2, 4)), (L.LayerNorm(), (3, 4)), (L.RMSNorm(), (5,)),
        (L.GroupNorm(2), (3, 4)), (L.BatchNorm(), (2, 4)), (L.Dropout(0.3), (5,)),
        (L.serial(L.Dense(4), L.Residual(L.serial(L.LayerNorm(), L.Dense(4), L.Gelu())),
                  L.Parallel(L.Dense(2), L.serial(L.Dense(3), L.Tanh()), merge="concat")), (3,)),
        (L.Conv(3, (3, 3), strides=2), (5, 6, 2)),
        (L.Conv(4, (2, 3), padding=((0, 2), (1, 0)), dilation=2, groups=2), (6, 7, 4)),
        (L.Conv(2, (3,), strides=2, padding="VALID"), (7, 3)),
        (L.MaxPool((2, 2), padding="SAME"), (5, 5, 2)),
        (L.AvgPool((3, 3), padding="SAME"), (5, 6, 2)),
        (L.GlobalAvgPool(), (3, 4, 2)),
    ]  # fmt: skip
    ids = np.array([[0, 1, 1, 6], [2, 2, 2, 3]])  # Embedding: integer ids, repeated
    layers_with_x = [(L.Embedding(7, 3), (4,), ids)]
    ce = losses.softmax_cross_entropy
    targets = [(losses.mse, "normal"), (losses.binary_cross_entropy, "unit"), (ce, "labels"),
               (ce, "probs")]  # fmt: skip
    checks = [partial(check_layer, a, s, batch_size=batch_size, **options) for a, s in layers]
    checks += [partial(check_layer, a, s, x=x, **options) for a, s, x in layers_with_x]
    checks += [partial(check_loss, f, (batch_size, 4), targets=t, **options) for f, t in targets]
    rng = np.random.default_rng(options["key"])
    kinds = [(losses.mse, "sigmoid"), (losses.binary_cross_entropy, None), (ce, None),
             (ce, "probs")]  # fmt: skip
    models = [_random_model(rng, depth, *kind, batch_size) for depth, kind in enumerate(kinds, 1)]
    return checks + [partial(_check_backprop, *model, **options) for model in models]


def _random_model(rng, depth: int, loss: Any, extra: str | None, batch_size: int) -> tuple:
    """An mlp of `depth` layers, random widths (2-5) and activation, for `loss`; its params
    (LeCun-normal W, small nonzero b), inputs x: (batch_size, 3) and targets."""
    import jax

    from jaxbp import layers as L

    widths = [int(w) for w in rng.integers(2, 6, size=depth)]
    act = str(rng.choice(list(L.ACTIVATIONS)))
    model = L.mlp(widths, act, "sigmoid" if extra == "sigmoid" else None)
    # Params drawn here, not by init: its eager PRNG calls would compile once per shape.
    shapes = jax.eval_shape(lambda k: model.init(k, (3,))[1], jax.random.PRNGKey(0))
    params = jax.tree.map(lambda s: _lecun(rng, s.shape), shapes)
    x = 2 * rng.standard_normal((batch_size, 3))
    return model, loss, params, x, _targets(loss, extra, rng, (batch_size, widths[-1]))


def _check_backprop(*args, **options):
    from jaxbp.check import check_backprop

    return check_backprop(*args, **options)


def _lecun(rng, shape: tuple[int, ...]) -> np.ndarray:
    scale = 1 / np.sqrt(shape[0]) if len(shape) == 2 else 0.1
    return scale * rng.standard_normal(shape)


def _targets(loss: Any, extra: str | None, rng, shape: tuple[int, int]) -> np.ndarray:
    """Targets the loss takes (its own `targets`): class labels, probability rows (extra
    "probs"), or uniform floats in [0, 1], which every other loss here accepts."""
    kind = "probs" if extra == "probs" else getattr(loss, "targets", "normal")
    if kind == "labels":
        return rng.integers(0, shape[1], size=shape[0])
    y = rng.uniform(size=shape)
    return y / y.sum(axis=1, keepdims=True) if kind == "probs" else y


def _check_target(args: argparse.Namespace, options: dict):
    """Check the layer or loss named by args.target."""
    from jaxbp.check import TARGETS, check_layer, check_loss

    module, obj = _import(args.target)
    obj = _instantiate(obj, args.target)
    is_layer = callable(getattr(obj, "init", None))
    if args.input_shape is None and is_layer:
        raise UsageError(f"{args.target} is a layer: give its --input-shape, e.g. 3,4")
    if args.targets not in TARGETS:
        raise UsageError(f"--targets must be one of {', '.join(TARGETS)}, got {args.targets!r}")
    shape = _parse_shape(args.input_shape or "5")
    # A wrong rule is a failing check. A ValueError or TypeError is the target refusing the
    # shape it was given, or a bug of its own: the user's to fix either way, so named in a line.
    try:
        if is_layer:
            return check_layer(obj, shape, batch_size=args.batch_size, **options)
        return check_loss(obj, (args.batch_size, *shape), targets=args.targets, **options)
    except (ValueError, TypeError) as error:
        where = _line_in(error, getattr(module, "__file__", None))
        message = f"{args.target} on input shape {shape}{where}: {type(error).__name__}: "
        raise UsageError(message + reason(error)) from error


def _line_in(error: BaseException, path: str | None) -> str:
    """' (mylayers.py, line 12)': the last line of the user's file in the error's traceback."""
    lines = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == path]
    return f" ({os.path.basename(path)}, line {lines[-1].lineno})" if lines else ""


def _import(target: str) -> tuple[Any, Any]:
    """The module and the object named by module:attribute (attribute may be dotted)."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"target must look like module:attribute, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: modules next to you import
    try:
        module = obj = importlib.import_module(module_name)
    except Exception as error:  # a missing module, or one that fails as it imports
        message = f"cannot import {module_name!r}: {type(error).__name__}: {error}"
        raise UsageError(message) from None
    for name in attribute.split("."):
        if not hasattr(obj, name):
            raise UsageError(f"module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, name)
    return module, obj


def _instantiate(obj: Any, target: str) -> Any:
    """obj itself if it is a layer or loss; else what calling it (a class, a factory) gives."""
    if isinstance(obj, type) or (callable(obj) and not hasattr(obj, "backward")):
        try:
            obj = obj()
        except Exception as error:
            message = f"calling {target}() failed: {type(error).__name__}: {error}"
            raise UsageError(message) from None
    if not callable(getattr(obj, "forward", None)) or not callable(getattr(obj, "backward", None)):
        raise UsageError(f"{target} is not a layer or a loss: it needs forward and backward")
    return obj


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise UsageError(f"--input-shape must be positive integers joined by commas, got {text!r}")
    return shape


def _write_json(path: str, data: dict) -> None:
    from jaxbp.check import jsonable

    text = json.dumps(jsonable(data), indent=2)
    if path == "-":
        print(text)
        return
    try:
        with open(path, "w") as f:
            f.write(text + "\n")
    except OSError as error:
        raise UsageError(f"cannot write {path}: {error.strerror or error}") from None
