"""Datasets as numpy arrays with a fixed train/test split: bundled digits, toy sets, your files.

Why a module: every experiment and the CLI's `--dataset` take a name or a path and must get the
same split back every time, offline, without sklearn or a download.

Every loader returns `((x_train, y_train), (x_test, y_test))`: x float32 `(n, features)`, images
flattened and scaled to [0, 1]; y int32 labels `(n,)` (classification) or float32 `(n, k)`.

Built-in names (`names()`), options keyword-only:
  digits   8x8 handwritten digits (UCI, CC BY 4.0; data/README.md), 1,797 images, counts 0-16
           divided by 16; split fixed by scripts/build_digits.py: stratified by label, seed 0,
           1,437 train / 360 test (every class in both). images=False: True gives x as
           (n, 8, 8, 1) images, for convolutional models.
  names    32,000 US surnames (1990 Census, public domain; data/README.md) as characters for
           next-character models; 25,600 train / 3,200 validation / 3,200 test names, split
           fixed by scripts/build_names.py. Each split is one stream "." + "name1." + ... of
           ids into `vocabulary()` (".abc...z"); x, y int32 (n, context) are windows of it, y the
           character after each x (jaxbp._names). context=32; split="validation" (the second
           pair; "test" for the held-out one, used once).
  xor      the 4 XOR points, y float32 (4, 1) targets 0/1; train == test (2-2-1 sigmoid, MSE).
  moons    two interleaved half circles, 2 classes.
           n_train=1000, n_test=500, noise=0.1 (sd of Gaussian noise on x), seed=0.
  spirals  one spiral arm per class: radius r ~ U[0, 1), angle 4r + 2*pi*k/classes.
           n_train=1200, n_test=600, noise=0.2 (sd on the angle), classes=3, seed=0.
Synthetic classes are balanced (label = i mod classes, shuffled); train and test come from
independent streams of `SeedSequence(seed)`, so changing n_test never changes the train set.

Paths `load` accepts (options go to the loader): `*.npz` (`load_npz`), `*.csv` (`load_csv`),
and MNIST IDX files (`load_idx`, `.gz` allowed) as `IMAGES:LABELS` or, with a given test set,
`IMAGES:LABELS:TEST_IMAGES:TEST_LABELS`. Data without its own split is shuffled by
`numpy.random.default_rng(seed)` (seed=0); the last `round(n * test_fraction)` rows
(test_fraction=0.2) are the test set.

A file's task (option `task`): "classification" makes y int32 labels, whole numbers 0 to 2**31-1;
"regression" makes y float32 targets (n, k). The default, "auto", infers classification only when
y is one label per row, every label a whole number 0..K-1 with 2 <= K <= MAX_CLASSES (1000), and
every class used, in at least MIN_PER_CLASS (2) rows, train and test counted together; anything
else (0.5, 1000000, -1, labels 1..10, a class in one row) is refused with a message naming the
file, the row and the value, asking for the task. Regression is never inferred. A built-in set
has its own task; an explicit one must match it.
Every value must be a finite float32 number. Errors name the file and the place: a CSV's line and
column (1-based), an array's index (0-based).
Arrays of Python objects are refused, never unpickled: a dataset never runs code.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from jaxbp import _names
from jaxbp._data_checks import MAX_CLASSES, MIN_PER_CLASS, TASKS, Split, Task, check_task
from jaxbp._datafiles import PathLike, load_csv, load_idx, load_npz

__all__ = [
    "MAX_CLASSES",
    "MIN_PER_CLASS",
    "TASKS",
    "DatasetInfo",
    "Task",
    "describe",
    "info",
    "load",
    "load_csv",
    "load_idx",
    "load_npz",
    "names",
    "vocabulary",
]


class DatasetInfo(NamedTuple):
    """What a training loop needs to build a model for a dataset."""

    name: str
    task: Literal["classification", "regression"]  # int32 labels (n,) or float32 targets (n, k)
    input_shape: tuple[int, ...]  # per example, e.g. (64,)
    n_classes: int | None  # max label + 1; None for regression
    n_outputs: int  # width of the model's last layer: n_classes, or k
    n_train: int
    n_test: int


def _digits(images: bool = False) -> Split:
    """The bundled digits: uint8 counts 0-16 on disk, float32 in [0, 1] out; images=True gives
    x as (n, 8, 8, 1) images (rows, columns, one channel) instead of (n, 64) vectors."""
    ref = resources.files("jaxbp").joinpath("data/digits.npz")
    with ref.open("rb") as handle, np.load(handle, allow_pickle=False) as z:
        train, test = ((z["x_" + s], z["y_" + s]) for s in ("train", "test"))
        shape = (-1, 8, 8, 1) if images else (-1, 64)
        return tuple(
            (x.astype(np.float32).reshape(shape) / 16, y.astype(np.int32)) for x, y in (train, test)
        )


def _xor() -> Split:
    """The 4 XOR points; train == test because there is nothing else to test on."""
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    y = np.array([[0], [1], [1], [0]], np.float32)
    return (x, y), (x.copy(), y.copy())


def _two_draws(draw: Callable, n_train: int, n_test: int, seed: int) -> Split:
    """Train and test from independent child streams of one seed."""
    if n_train < 1 or n_test < 1:
        raise ValueError(f"need n_train >= 1 and n_test >= 1, got {n_train} and {n_test}")
    train_rng, test_rng = map(np.random.default_rng, np.random.SeedSequence(seed).spawn(2))
    return draw(train_rng, n_train), draw(test_rng, n_test)


def _balanced(rng: np.random.Generator, n: int, classes: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % classes).astype(np.int32)


def _moons(*, n_train: int = 1000, n_test: int = 500, noise: float = 0.1, seed: int = 0) -> Split:
    """Upper arc (cos t, sin t) is class 0, lower arc (1 - cos t, 0.5 - sin t) class 1."""

    def draw(rng, n):
        y = _balanced(rng, n, 2)
        t = rng.uniform(0.0, np.pi, n)
        upper = np.stack([np.cos(t), np.sin(t)], axis=1)
        x = np.where(y[:, None] == 0, upper, [1.0, 0.5] - upper)
        return (x + noise * rng.standard_normal((n, 2))).astype(np.float32), y

    return _two_draws(draw, n_train, n_test, seed)


def _spirals(
    *, n_train: int = 1200, n_test: int = 600, noise: float = 0.2, classes: int = 3, seed: int = 0
) -> Split:
    """Arm k: radius r ~ U[0, 1), angle 4r + 2*pi*k/classes + N(0, noise^2)."""

    def draw(rng, n):
        y = _balanced(rng, n, classes)
        r = rng.uniform(0.0, 1.0, n)
        angle = 4.0 * r + 2.0 * np.pi * y / classes + noise * rng.standard_normal(n)
        return np.stack([r * np.sin(angle), r * np.cos(angle)], axis=1).astype(np.float32), y

    return _two_draws(draw, n_train, n_test, seed)


_BUILTIN: dict[str, Callable[..., Split]] = dict(
    digits=_digits, moons=_moons, names=_names.load, spirals=_spirals, xor=_xor
)


def vocabulary(name: str = "names") -> _names.Vocabulary:
    """The characters of a text dataset (only "names"): .chars, .size, .encode(text) -> int32
    ids, .decode(ids) -> text; id 0 is ".", the end of a name."""
    if name != "names":
        raise ValueError(f"{name!r} has no vocabulary: only 'names' is a text dataset")
    return _names.vocabulary()


def names() -> tuple[str, ...]:
    """The built-in dataset names, sorted."""
    return tuple(sorted(_BUILTIN))


def load(name: PathLike, **options) -> Split:
    """A built-in dataset by name, or a file by path (see the module docstring)."""
    spec = os.fspath(name)
    if spec in _BUILTIN:
        return _builtin(spec, **options)
    path = Path(spec)
    if path.suffix.lower() == ".npz":
        return load_npz(path, **options)
    if path.suffix.lower() == ".csv":
        return load_csv(path, **options)
    if ":" in spec:
        return _idx_spec(spec.split(":"), **options)
    if path.exists():
        raise ValueError(f"{path}: unsupported file type; use .npz, .csv or IDX files")
    if os.sep in spec or "/" in spec:
        raise FileNotFoundError(f"dataset file not found: {path}")
    raise ValueError(
        f"unknown dataset {spec!r}; valid names: {', '.join(names())}; "
        "or a path: *.npz, *.csv, IMAGES:LABELS[:TEST_IMAGES:TEST_LABELS] (IDX)"
    )


def _builtin(name: str, task: Task = "auto", **options) -> Split:
    """A built-in set; its task is fixed, so an explicit one must agree with it."""
    check_task(task)
    data = _BUILTIN[name](**options)
    kind = describe(data).task
    if task not in ("auto", kind):
        raise ValueError(f"{name} is a {kind} dataset; task={task!r} does not apply")
    return data


def _idx_spec(paths: list[str], **options) -> Split:
    if len(paths) == 2:
        return load_idx(*paths, **options)
    if len(paths) == 4:
        test = dict(test_images_path=paths[2], test_labels_path=paths[3])
        return load_idx(*paths[:2], **test, **options)
    raise ValueError(f"IDX spec has {len(paths)} ':'-separated paths, expected 2 or 4: {paths}")


def describe(data: Split, name: str = "") -> DatasetInfo:
    """Task, classes, input shape and sizes of loaded data."""
    (x_train, y_train), (x_test, y_test) = data
    classes = None
    if np.issubdtype(y_train.dtype, np.integer):
        classes = int(max(y_train.max(), y_test.max())) + 1
    task = "regression" if classes is None else "classification"
    outputs = classes or int(np.prod(y_train.shape[1:]))
    shape = x_train.shape[1:]
    return DatasetInfo(name, task, shape, classes, outputs, len(x_train), len(x_test))


def info(name: PathLike, **options) -> DatasetInfo:
    """`describe(load(name, **options))`, named: what the CLI needs to size a model."""
    return describe(load(name, **options), os.fspath(name))
