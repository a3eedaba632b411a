"""What every experiment shares: the `--out DIR [--quick]` command line, and JSON and PNG writing.

Not an experiment itself (the leading underscore keeps it out of the test's discovery).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections.abc import Callable
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")  # files only: no display on a CI runner or a shared machine
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 100  # figures are committed with the results: keep each PNG small


def parse_args(doc: str) -> argparse.Namespace:
    """The command line every experiment takes; `doc` (the module docstring) is the help text."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, type=Path, help="folder for the JSON and PNGs")
    parser.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def _plain(value):
    """JSON-ready: numpy and JAX scalars and arrays to Python numbers and lists; NaN to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return _plain(np.asarray(value).tolist())
    if isinstance(value, float):
        return float(f"{value:.7g}") if math.isfinite(value) else None  # JSON has no NaN
    return value


def write_json(out: Path, name: str, results: dict) -> Path:
    """Write `results` as the JSON file `name` in `out`, floats to 7 significant digits."""
    path = out / name
    text = json.dumps(_plain(results), indent=1)
    # One line per list of plain values, so a trajectory reads as a row, not 200 lines.
    text = re.sub(
        r"\[\s*([^\[\]{}]*?)\s*\]", lambda m: "[" + re.sub(r",\s+", ", ", m[1]) + "]", text
    )
    path.write_text(text + "\n")
    return path


def save_figure(fig: plt.Figure, out: Path, name: str) -> Path:
    """Write `fig` as the PNG `name` in `out` and free it."""
    path = out / name
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def stopwatch(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` takes, waiting for JAX's asynchronous results to be ready."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0
