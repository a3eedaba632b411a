"""Datasets as numpy arrays with a fixed train/test split: bundled digits, toy sets, your files.

Why a module: every experiment and the CLI's `--dataset` take a name or a path and must get the
same split back every time, offline, without sklearn or a download.

Every loader returns `((x_train, y_train), (x_test, y_test))`: x float32 `(n, features)`, images
flattened and scaled to [0, 1]; y int32 labels `(n,)` (classification) or float32 `(n, k)`.

Built-in names (`names()`), options keyword-only:
  digits   8x8 handwritten digits (UCI, CC BY 4.0; data/README.md), 1,797 images, counts 0-16
           divided by 16; split fixed by scripts/build_digits.py: stratified by label, seed 0,
           1,437 train / 360 test (every class in both). No options.
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
Files are read with `allow_pickle=False`: a dataset never runs code.
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import struct
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

Arrays = tuple[np.ndarray, np.ndarray]
Split = tuple[Arrays, Arrays]
PathLike = str | os.PathLike[str]

IDX_IMAGES = 0x00000803  # uint8 data, 3 dims (n, rows, cols)
IDX_LABELS = 0x00000801  # uint8 data, 1 dim (n,)


class DatasetInfo(NamedTuple):
    """What a training loop needs to build a model for a dataset."""

    name: str
    task: Literal["classification", "regression"]  # int32 labels (n,) or float32 targets (n, k)
    input_shape: tuple[int, ...]  # per example, e.g. (64,)
    n_classes: int | None  # max label + 1; None for regression
    n_outputs: int  # width of the model's last layer: n_classes, or k
    n_train: int
    n_test: int


def _digits() -> Split:
    """The bundled digits: uint8 counts 0-16 on disk, float32 in [0, 1] out."""
    ref = resources.files("jaxbp").joinpath("data/digits.npz")
    with ref.open("rb") as handle, np.load(handle, allow_pickle=False) as z:
        train, test = ((z["x_" + s], z["y_" + s]) for s in ("train", "test"))
        return tuple((x.astype(np.float32) / 16, y.astype(np.int32)) for x, y in (train, test))


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
    digits=_digits, moons=_moons, spirals=_spirals, xor=_xor
)


def _require(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    return path


def _pair(x: np.ndarray, y: np.ndarray, source: str) -> Arrays:
    """x as float32 (n, features), uint8 scaled by 1/255; y as int32 (n,) or float32 (n, k)."""
    if len(x) != len(y):
        raise ValueError(f"{source}: x has {len(x)} rows but y has {len(y)}")
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    inputs = (x.reshape(len(x), -1) / scale).astype(np.float32)
    if y.dtype.kind in "iub" and (y.ndim == 1 or y.shape[1:] == (1,)):
        return inputs, y.reshape(-1).astype(np.int32)
    if y.dtype.kind == "f":
        return inputs, y.reshape(len(y), -1).astype(np.float32)
    raise ValueError(
        f"{source}: y must be integer labels (n,) or float targets, got {y.dtype} {y.shape}"
    )


def _joined(train: Arrays, test: Arrays, source: str) -> Split:
    """Train and test must agree on everything but the number of rows."""
    for what, a, b in (("x", train[0], test[0]), ("y", train[1], test[1])):
        if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype:
            raise ValueError(
                f"{source}: {what}_train is {a.dtype} {a.shape}, "
                f"but {what}_test is {b.dtype} {b.shape}"
            )
    return train, test


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


def load_npz(path: PathLike, *, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """An .npz holding x_train, y_train, x_test, y_test (used as is), or x, y (split here)."""
    path = _require(path)
    archive = np.load(path, allow_pickle=False)
    if not hasattr(archive, "files"):
        raise ValueError(f"{path}: holds a single array, not an .npz archive of named arrays")
    with archive:
        keys = set(archive.files)
        if {"x_train", "y_train", "x_test", "y_test"} <= keys:
            train = _pair(archive["x_train"], archive["y_train"], f"{path} (train)")
            test = _pair(archive["x_test"], archive["y_test"], f"{path} (test)")
            return _joined(train, test, str(path))
        if {"x", "y"} <= keys:
            return _split(_pair(archive["x"], archive["y"], str(path)), test_fraction, seed)
    raise ValueError(
        f"{path}: expected arrays x_train, y_train, x_test, y_test or x, y; found {sorted(keys)}"
    )


def load_csv(
    path: PathLike,
    *,
    label_column: int = -1,
    test_fraction: float = 0.2,
    seed: int = 0,
    header: bool | Literal["auto"] = "auto",
) -> Split:
    """A numeric CSV, one example per row; whole-number labels become int32 classes.

    header="auto" skips the first row if any of its cells is not a number. Features are used as
    they are (no scaling); a label column of non-whole numbers gives float32 targets (n, 1).
    """
    path = _require(path)
    table = _read_table(path, header)
    if not -table.shape[1] <= label_column < table.shape[1]:
        raise ValueError(
            f"{path}: label_column={label_column} but rows have {table.shape[1]} columns"
        )
    labels = table[:, label_column]
    if np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    features = np.delete(table, label_column, axis=1)
    return _split(_pair(features, labels, str(path)), test_fraction, seed)


def _numeric(row: list[str]) -> bool:
    try:
        [float(cell) for cell in row]
    except ValueError:
        return False
    return True


def _read_table(path: Path, header: bool | str) -> np.ndarray:
    """float64 (rows, columns), blank lines and the header skipped; errors name line and column."""
    with path.open(newline="") as handle:
        rows = [(line, row) for line, row in enumerate(csv.reader(handle), 1) if any(row)]
    if rows and (header is True or (header == "auto" and not _numeric(rows[0][1]))):
        rows = rows[1:]
    if len(rows) < 2 or len(rows[0][1]) < 2:
        raise ValueError(f"{path}: need at least 2 data rows and 2 columns, found {len(rows)} rows")
    try:
        return np.array([row for _, row in rows], dtype=np.float64)
    except ValueError:
        pass  # the fast path failed; find the row or cell to blame
    for line, row in rows:
        if len(row) != len(rows[0][1]):
            raise ValueError(f"{path}, line {line}: {len(row)} columns, expected {len(rows[0][1])}")
        for column, cell in enumerate(row, 1):
            if not _numeric([cell]):
                raise ValueError(f"{path}, line {line}, column {column}: {cell!r} is not a number")
    raise ValueError(f"{path}: could not parse as numbers")


def _read_idx(path: PathLike, magic: int) -> np.ndarray:
    """uint8 array from an IDX file: big-endian u32 magic, one u32 per dim, then the bytes."""
    path = _require(path)
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as handle:
        raw = handle.read()
    if raw[:4] != struct.pack(">I", magic):
        found = raw[:4].hex().upper()
        raise ValueError(f"{path}: IDX magic number 0x{found}, expected 0x{magic:08X}")
    ndim = magic & 0xFF
    if len(raw) < 4 * (1 + ndim):
        raise ValueError(f"{path}: {len(raw)} bytes is too short for an IDX header of {ndim} dims")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 * (1 + ndim)])
    data = np.frombuffer(raw, np.uint8, offset=4 * (1 + ndim))
    if data.size != math.prod(shape):
        raise ValueError(
            f"{path}: header shape {shape} needs {math.prod(shape)} data bytes, found {data.size}"
        )
    return data.reshape(shape)


def _idx_pair(images_path: PathLike, labels_path: PathLike) -> Arrays:
    images, labels = _read_idx(images_path, IDX_IMAGES), _read_idx(labels_path, IDX_LABELS)
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels"
        )
    return _pair(images, labels, str(images_path))


def load_idx(
    images_path: PathLike,
    labels_path: PathLike,
    *,
    test_images_path: PathLike | None = None,
    test_labels_path: PathLike | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Split:
    """MNIST-format IDX files (.gz read as gzip); images (n, rows*cols) scaled by 1/255.

    With test files given they are the test set; otherwise the train files are split here.
    """
    train = _idx_pair(images_path, labels_path)
    if test_images_path is None and test_labels_path is None:
        return _split(train, test_fraction, seed)
    if test_images_path is None or test_labels_path is None:
        raise ValueError("give both test_images_path and test_labels_path, or neither")
    return _joined(train, _idx_pair(test_images_path, test_labels_path), str(images_path))


def names() -> tuple[str, ...]:
    """The built-in dataset names, sorted."""
    return tuple(sorted(_BUILTIN))


def load(name: PathLike, **options) -> Split:
    """A built-in dataset by name, or a file by path (see the module docstring)."""
    spec = os.fspath(name)
    if spec in _BUILTIN:
        return _BUILTIN[spec](**options)
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
