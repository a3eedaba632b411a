"""Arrays from a dataset file made into checked examples: numbers, finite, a decided task, a split.

Why a module: every reader (`jaxbp._datafiles`) hands its arrays to the same checks. Each value
must be a number, finite in float32; the task is decided from the labels or given; a bad value is
reported as `file, line L, column C` (CSV, 1-based) or `file, name[index]` (arrays, 0-based), the
place named by the caller's `locate`. Rules: `jaxbp.datasets`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np

Arrays = tuple[np.ndarray, np.ndarray]
Split = tuple[Arrays, Arrays]

Task = Literal["auto", "classification", "regression"]
"""A dataset's task: classification (integer labels), regression, or auto (from the labels)."""
TASKS: tuple[str, ...] = ("auto", "classification", "regression")
"""The tasks `load` and `jaxbp train --task` accept."""
MAX_CLASSES = 1000  # a larger label is more likely an id or a measurement than a class
"""The largest number of classes auto-detection accepts: a larger label is likelier an id."""
MIN_PER_CLASS = 2  # a class in a single row is more likely an id: it cannot be in train and test
"""The fewest rows a class needs under auto-detection: one row cannot be in both splits."""
_ASK = "set the task: task='classification' or task='regression' (jaxbp train --task)"


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task={task!r}; valid: {', '.join(TASKS)}")


def _check_finite(array: np.ndarray, locate: Callable[[tuple[int, ...]], str]) -> None:
    """Refuse NaN, inf and values float32 cannot hold, naming where the first one is."""
    if array.dtype.kind != "f":
        return
    with np.errstate(over="ignore"):
        bad = ~np.isfinite(array.astype(np.float32))
    if bad.any():
        index = tuple(int(i) for i in np.unravel_index(np.argmax(bad), bad.shape))
        raise ValueError(
            f"{locate(index)}: {array[index]} is not a finite float32 number "
            "(NaN, inf, or beyond 3.4e38)"
        )


def _show(value: np.generic) -> str:
    """A label as a file writes it: 1000000, not 1000000.0 or 1e+06."""
    value = value.item()
    return str(int(value)) if float(value).is_integer() else repr(value)


def _targets(y: np.ndarray, task: str, source: str, locate: Callable[[int], str]) -> np.ndarray:
    """y for its task: int32 classes (n,) or float32 targets (n, k); "auto" infers, see top.

    source names all the labels ("d.csv, column 3"); locate(i) names row i of them.
    """
    check_task(task)
    if task == "regression":
        return y.reshape(len(y), -1).astype(np.float32)
    hint = f"; {_ASK}" if task == "auto" else ""
    if y.shape[1:] not in ((), (1,)):
        raise ValueError(f"{source}: {math.prod(y.shape[1:])} values per row, not one label{hint}")
    labels = y.reshape(-1).astype(np.int64) if y.dtype.kind == "b" else y.reshape(-1)
    top = MAX_CLASSES - 1 if task == "auto" else np.iinfo(np.int32).max
    whole = labels == np.round(labels)
    bad = ~(whole & (labels >= 0) & (labels <= top))
    if bad.any():
        row = int(np.argmax(bad))
        why = f"is not a class label (a whole number 0 to {top})"
        if task == "auto" and whole[row] and labels[row] > top:
            why = f"is above {top}: at most {MAX_CLASSES} classes are inferred"
        raise ValueError(f"{locate(row)}: label {_show(labels[row])} {why}{hint}")
    labels = labels.astype(np.int32)
    if task == "auto":
        _check_dense(labels, source, locate)
    return labels


def _check_dense(labels: np.ndarray, source: str, locate: Callable[[int], str]) -> None:
    """Inferred classes are 0..K-1 with K >= 2, each one in at least MIN_PER_CLASS rows."""
    counts = np.bincount(labels)
    if len(counts) < 2:
        raise ValueError(f"{source}: every label is 0, a single class; {_ASK}")
    unused = np.flatnonzero(counts == 0)
    if len(unused):
        raise ValueError(
            f"{source}: labels run {labels.min()}..{len(counts) - 1}, but class {unused[0]} has "
            f"no rows ({len(unused)} of classes 0..{len(counts) - 1} unused); classes are "
            f"inferred only when numbered 0..K-1 without gaps; {_ASK}"
        )
    rare = np.flatnonzero(counts < MIN_PER_CLASS)
    if len(rare):
        label = rare[0]
        raise ValueError(
            f"{locate(int(np.argmax(labels == label)))}: class {label} has only "
            f"{counts[label]} row(s); classes are inferred only with at least {MIN_PER_CLASS} "
            f"rows each; {_ASK}"
        )


def _examples(source: str, parts: list[tuple[str, np.ndarray, str, np.ndarray]], task: str):
    """[(x float32 (n, features), y for the task)], one per (x name, x, y name, y) part.

    The task is decided from the labels of every part (train, test) together. A bad value is
    named `source, name[index]`, the index 0-based.
    """
    at = f"{source}, " if source else ""
    xs = [_inputs(at, *part) for part in parts]
    ys = [y for *_, y in parts]
    if len(parts) == 2:  # train and test agree on all but their rows
        for column in (0, 2):  # (x name, x), then (y name, y)
            (first, one), (second, other) = (part[column : column + 2] for part in parts)
            scaled = (one.dtype == np.uint8) != (other.dtype == np.uint8)  # by 1/255 or not
            if scaled or math.prod(one.shape[1:]) != math.prod(other.shape[1:]):
                raise ValueError(
                    f"{at}{first} is {one.dtype} {one.shape}, "
                    f"but {second} is {other.dtype} {other.shape}"
                )
    ends = np.cumsum([0] + [len(y) for y in ys])

    def locate(i):  # row i of every part's labels, one after the other
        k = int(np.searchsorted(ends, i, side="right")) - 1
        return f"{at}{parts[k][2]}[{i - ends[k]}]"

    names = " and ".join(y_name for _, _, y_name, _ in parts)
    y = _targets(np.concatenate([y.reshape(len(y), -1) for y in ys]), task, at + names, locate)
    return [(x, y[ends[k] : ends[k + 1]]) for k, x in enumerate(xs)]


def _inputs(at: str, x_name: str, x: np.ndarray, y_name: str, y: np.ndarray) -> np.ndarray:
    """x as float32 (n, features), uint8 scaled by 1/255, once x and y are checked."""
    for name, array in ((x_name, x), (y_name, y)):
        if array.ndim == 0:
            raise ValueError(f"{at}{name} is a single number, not one row per example")
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{at}{name} must hold numbers, not {array.dtype}")
        _check_finite(array, lambda i, name=name: f"{at}{name}[{', '.join(map(str, i))}]")
    if len(x) != len(y):
        raise ValueError(f"{at}{x_name} has {len(x)} rows but {y_name} has {len(y)}")
    if len(x) == 0:
        raise ValueError(f"{at}{x_name} has no rows")
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    return (x.reshape(len(x), -1) / scale).astype(np.float32)


def _split(data: Arrays, test_fraction: float, seed: int) -> Split:
    """Shuffle with default_rng(seed); the last round(n * test_fraction) rows are the test set."""
    x, y = data
    n_test = round(len(x) * test_fraction)
    if not 0 < n_test < len(x):
        raise ValueError(
            f"test_fraction={test_fraction} of {len(x)} rows gives {n_test} test and "
            f"{len(x) - n_test} train rows; both must be at least 1"
        )
    order = np.random.default_rng(seed).permutation(len(x))
    train, test = order[: len(x) - n_test], order[len(x) - n_test :]
    return (x[train], y[train]), (x[test], y[test])
