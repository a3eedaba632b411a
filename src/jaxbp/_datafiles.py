"""Users' dataset files (CSV, .npz, IDX) read into checked arrays; errors name file and place.

Why a module: a file is untrusted input. Each reader refuses what is not its format (a damaged
archive, a wrong IDX header, a CSV cell that is not a number), naming `file, line L, column C`
(CSV, 1-based) or the array; its arrays then go through `jaxbp._data_checks`. Rules:
`jaxbp.datasets`.
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Literal

import numpy as np

from jaxbp._data_checks import Split, Task, _check_finite, _examples, _split, _targets

PathLike = str | os.PathLike[str]

IDX_IMAGES = 0x00000803  # uint8 data, 3 dims (n, rows, cols)
IDX_LABELS = 0x00000801  # uint8 data, 1 dim (n,)


def _require(path: PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: a folder, not a dataset file")
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    return path


# -- .npz ------------------------------------------------------------------------------------


def load_npz(
    path: PathLike, *, task: Task = "auto", test_fraction: float = 0.2, seed: int = 0
) -> Split:
    """An .npz holding x_train, y_train, x_test, y_test (used as is), or x, y (split here)."""
    path = _require(path)
    with _open_npz(path) as archive:
        members = {name.removesuffix(".npy"): name for name in archive.namelist()}
        for names in (("x_train", "y_train", "x_test", "y_test"), ("x", "y")):
            if set(names) <= members.keys():
                arrays = [_npz_array(archive, path, members[name]) for name in names]
                break
        else:
            raise ValueError(
                f"{path}: expected arrays x_train, y_train, x_test, y_test or x, y; "
                f"found {sorted(members)}"
            )
    parts = [(names[i], arrays[i], names[i + 1], arrays[i + 1]) for i in range(0, len(names), 2)]
    examples = _examples(str(path), parts, task)
    return tuple(examples) if len(examples) == 2 else _split(examples[0], test_fraction, seed)


def _open_npz(path: Path) -> zipfile.ZipFile:
    with path.open("rb") as handle:
        start = handle.read(6)
    if start == b"\x93NUMPY":
        raise ValueError(
            f"{path}: holds a single array (.npy), not an .npz archive of named arrays"
        )
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError):
        raise ValueError(
            f"{path}: not a valid .npz file ({'empty' if not start else 'not a zip archive'})"
        ) from None


def _npz_array(archive: zipfile.ZipFile, path: Path, member: str) -> np.ndarray:
    """One array, numbers only: an array of Python objects is refused, never loaded."""
    name = member.removesuffix(".npy")
    try:
        with archive.open(member) as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            dtype = read_header(handle)[2]
        if not dtype.hasobject:
            with archive.open(member) as handle:
                return np.lib.format.read_array(handle, allow_pickle=False)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as error:
        raise ValueError(
            f"{path}: not a valid .npz file: array {name!r} is damaged ({error})"
        ) from None
    raise ValueError(f"{path}: array {name!r} holds Python objects ({dtype}), not numbers")


# -- .csv ------------------------------------------------------------------------------------


def load_csv(
    path: PathLike,
    *,
    label_column: int = -1,
    task: Task = "auto",
    test_fraction: float = 0.2,
    seed: int = 0,
    header: bool | Literal["auto"] = "auto",
) -> Split:
    """A numeric UTF-8 CSV, one example per row; features used as they are (no scaling).

    header="auto" skips the first row if any of its cells is not a number. Errors name the
    line (1-based) and column (1-based).
    """
    path = _require(path)
    lines, table = _read_table(path, header)
    if not -table.shape[1] <= label_column < table.shape[1]:
        raise ValueError(
            f"{path}: label_column={label_column} but rows have {table.shape[1]} columns"
        )
    column = label_column % table.shape[1]
    _check_finite(table, lambda index: f"{path}, line {lines[index[0]]}, column {index[1] + 1}")
    labels = _targets(
        table[:, column],
        task,
        f"{path}, column {column + 1}",
        lambda row: f"{path}, line {lines[row]}, column {column + 1}",
    )
    features = np.delete(table, column, axis=1).astype(np.float32)
    return _split((features, labels), test_fraction, seed)


def _numeric(row: list[str]) -> bool:
    try:
        [float(cell) for cell in row]
    except ValueError:
        return False
    return True


def _read_table(path: Path, header: bool | str) -> tuple[list[int], np.ndarray]:
    """(line numbers, float64 (rows, columns)), blank lines and the header skipped."""
    try:  # utf-8-sig: a byte-order mark (Excel writes one) must not turn row 1 into a header
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            rows = [(reader.line_num, row) for row in reader if any(row)]
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text, so not a CSV file") from None
    except csv.Error as error:
        raise ValueError(f"{path}, line {reader.line_num}: {error}") from None
    if not rows:
        raise ValueError(f"{path}: empty, no rows")
    has_header = header is True or (header == "auto" and not _numeric(rows[0][1]))
    titles = rows.pop(0) if has_header else None
    if len(rows) < 2:
        under = " under its header" if titles else ""
        raise ValueError(f"{path}: {len(rows)} data row(s){under}; need at least 2")
    line, first = rows[0]
    if len(first) < 2:
        raise ValueError(f"{path}, line {line}: 1 column; need at least 2 (features and a label)")
    if titles and len(titles[1]) != len(first):
        raise ValueError(
            f"{path}, line {titles[0]}: header has {len(titles[1])} columns, "
            f"but line {line} has {len(first)}"
        )
    try:
        return [line for line, _ in rows], np.array([row for _, row in rows], dtype=np.float64)
    except ValueError:
        pass  # the fast path failed; find the row or cell to blame
    for line, row in rows:
        if len(row) != len(first):
            raise ValueError(f"{path}, line {line}: {len(row)} columns, expected {len(first)}")
        for column, cell in enumerate(row, 1):
            if not _numeric([cell]):
                raise ValueError(f"{path}, line {line}, column {column}: {cell!r} is not a number")
    raise ValueError(f"{path}: could not parse as numbers")


# -- IDX (MNIST's format) --------------------------------------------------------------------


def _read_idx(path: PathLike, magic: int) -> np.ndarray:
    """uint8 array from an IDX file: big-endian u32 magic, one u32 per dim, then the bytes."""
    path = _require(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as handle:
            raw = handle.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: not a valid gzip file ({error})") from None
    if raw[:4] != struct.pack(">I", magic):
        found = raw[:4].hex().upper()
        gzipped = " (gzip data: name the file *.gz)" if raw[:2] == b"\x1f\x8b" else ""
        raise ValueError(f"{path}: IDX magic number 0x{found}, expected 0x{magic:08X}{gzipped}")
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


def _idx_part(images_path: PathLike, labels_path: PathLike) -> tuple:
    images, labels = _read_idx(images_path, IDX_IMAGES), _read_idx(labels_path, IDX_LABELS)
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels"
        )
    return str(images_path), images, str(labels_path), labels


def load_idx(
    images_path: PathLike,
    labels_path: PathLike,
    *,
    test_images_path: PathLike | None = None,
    test_labels_path: PathLike | None = None,
    task: Task = "auto",
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Split:
    """MNIST-format IDX files (.gz read as gzip); images (n, rows*cols) scaled by 1/255.

    With test files given they are the test set; otherwise the train files are split here.
    """
    parts = [_idx_part(images_path, labels_path)]
    if (test_images_path is None) != (test_labels_path is None):
        raise ValueError("give both test_images_path and test_labels_path, or neither")
    if test_images_path is None:
        return _split(_examples("", parts, task)[0], test_fraction, seed)
    return tuple(_examples("", [*parts, _idx_part(test_images_path, test_labels_path)], task))
