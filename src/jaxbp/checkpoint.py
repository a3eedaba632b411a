"""Checkpoints: save and restore training state atomically, as a plain ``.npz``, with no pickle.

Format (version 1). One ``.npz`` archive, readable with ``np.load(path)``:

- one entry per pytree leaf, named by its path, ``jax.tree_util.keystr`` of
  ``tree_flatten_with_path`` (e.g. ``['params']['w']``, ``['opt_state'][0].mu['w']``);
- ``__metadata__``: UTF-8 JSON bytes as a ``uint8`` array, holding ``format``, ``version``,
  ``leaves`` (``path``, ``shape``, ``dtype`` of every leaf, in flattening order) and the
  caller's ``metadata``.

Dtypes numpy cannot store (bfloat16, float8, int4, ...) are stored bit for bit as unsigned
integers of the same width; the ``dtype`` in ``leaves`` says how to view them back, and ``load``
does so. Reading never unpickles: object arrays are refused.

Restored leaves mirror the template: a ``jax.Array`` or ``jax.ShapeDtypeStruct`` leaf gives a
``jax.Array``, anything else (numpy arrays, Python scalars) a numpy array, so 64-bit leaves
never pass through JAX when ``jax_enable_x64`` is off.

``lock_folder`` keeps a second writer out of a run's folder while the first one runs; it and
``atomic_write`` live in ``jaxbp._disk``.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._disk import LOCK_NAME, FolderLocked, atomic_write, lock_folder

__all__ = ["FORMAT", "VERSION", "METADATA_KEY", "LOCK_NAME", "FolderLocked", "atomic_write",
           "latest", "load", "lock_folder", "save"]  # fmt: skip

FORMAT = "jaxbp.checkpoint"
"""The `format` field of a checkpoint's metadata."""
VERSION = 1
"""The checkpoint format's version; `load` refuses another."""
METADATA_KEY = "__metadata__"
"""The archive entry holding the JSON metadata."""
# Everything np.load and zipfile raise on a damaged archive; OSError stays out, as it means I/O.
_CORRUPT = (ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, zlib.error)


def save(
    path: str | os.PathLike,
    tree: Any,
    *,
    metadata: dict | None = None,
    compress: bool = False,
) -> None:
    """Write ``tree`` (a pytree of arrays) and JSON-able ``metadata`` to ``path``, atomically.

    Either the complete new checkpoint is at ``path`` afterwards, or the old file is untouched.
    ``path`` is used as given (no suffix is added); missing parent directories are created.
    Raises ``TypeError``, before writing anything, for metadata JSON cannot encode or a leaf
    dtype that cannot round-trip (object, string, structured). Metadata comes back as JSON
    gives it: tuples as lists, and NaN as written by Python's ``json``.
    """
    arrays, leaves = _flatten(tree)
    header = {"format": FORMAT, "version": VERSION, "leaves": leaves, "metadata": metadata or {}}
    # Serialise before touching the disk, so bad metadata cannot cost a file.
    blob = json.dumps(header).encode("utf-8")
    arrays[METADATA_KEY] = np.frombuffer(blob, dtype=np.uint8)
    savez = np.savez_compressed if compress else np.savez
    atomic_write(Path(path), lambda f: savez(f, allow_pickle=False, **arrays))


def load(path: str | os.PathLike, like: Any = None) -> tuple[Any, dict]:
    """Read a checkpoint; return ``(tree, metadata)``.

    With ``like`` (a template pytree), the arrays are restored into its structure after checking
    that leaf paths, shapes and dtypes match. Without it, ``tree`` is ``{leaf path: np.ndarray}``.
    Raises ``FileNotFoundError`` if ``path`` is missing, ``ValueError`` if it is damaged or
    does not match ``like``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        arrays, header = _read(path)
    except _CORRUPT as e:
        raise ValueError(f"{path}: not a readable {FORMAT} file: {e}") from e
    if like is None:
        return arrays, header["metadata"]
    return _restore(path, arrays, like), header["metadata"]


def latest(directory: str | os.PathLike, pattern: str = "*.npz") -> Path | None:
    """The checkpoint in ``directory`` with the largest step number in its name, or None.

    ``step_900.npz`` < ``step_1200.npz``; names without digits sort first, then by name.
    """
    files = [p for p in Path(directory).glob(pattern) if p.is_file()]
    return max(files, key=lambda p: (_step_number(p.name), p.name), default=None)


def _step_number(name: str) -> int:
    digits = re.findall(r"\d+", name)
    return int(digits[-1]) if digits else -1


def _dtype(name: str) -> np.dtype:
    # jnp.dtype knows the ml_dtypes names (bfloat16, float8_*) as well as numpy's.
    return np.dtype(jnp.dtype(name))


def _checkpointable(dtype: np.dtype) -> bool:
    """Numeric, native byte order, and named so that ``_dtype`` gives it back."""
    try:
        return dtype.kind not in "OSUMm" and _dtype(dtype.name) == dtype
    except TypeError:  # structured and other nameless dtypes
        return False


def _stored_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype a leaf has inside the npz: itself, or a same-width uint for ml_dtypes."""
    return np.dtype(f"u{dtype.itemsize}") if dtype.kind == "V" else dtype


def _flatten(tree: Any) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Leaves as host arrays keyed by path, plus their ``leaves`` header records."""
    arrays, leaves = {}, []
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = jax.tree_util.keystr(key_path)
        arr = np.asarray(leaf)
        if not _checkpointable(arr.dtype):
            raise TypeError(f"leaf {name}: dtype {arr.dtype} cannot be checkpointed")
        if name in arrays:
            raise ValueError(f"two leaves share the path {name}")
        arrays[name] = arr.view(_stored_dtype(arr.dtype))
        leaves.append({"path": name, "shape": list(arr.shape), "dtype": arr.dtype.name})
    return arrays, leaves


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Every leaf (viewed back to its real dtype) and the header, checked against each other."""
    if not zipfile.is_zipfile(path):
        raise ValueError("not a zip archive (truncated, or not an .npz)")
    npz = np.load(path, allow_pickle=False)
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError("not an .npz archive")
    with npz:
        if METADATA_KEY not in npz.files:
            raise ValueError(f"no {METADATA_KEY} entry")
        header = _parse_header(npz[METADATA_KEY])
        arrays = {leaf["path"]: _read_leaf(npz, leaf) for leaf in header["leaves"]}
        extra = set(npz.files) - set(arrays) - {METADATA_KEY}
    if extra:
        raise ValueError(f"entries not listed in {METADATA_KEY}: {sorted(extra)}")
    return arrays, header


def _parse_header(raw: np.ndarray) -> dict:
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError(f"{METADATA_KEY} is {raw.dtype}{list(raw.shape)}, not 1-d uint8")
    header = json.loads(raw.tobytes().decode("utf-8"))
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{METADATA_KEY} does not describe a {FORMAT} file")
    if header.get("version") != VERSION:
        raise ValueError(f"format version {header.get('version')}, this reader knows {VERSION}")
    if not isinstance(header.get("leaves"), list) or "metadata" not in header:
        raise ValueError(f"{METADATA_KEY} lacks the leaves list or the metadata")
    return header


def _read_leaf(npz: Any, leaf: dict) -> np.ndarray:
    arr, dtype, shape = npz[leaf["path"]], _dtype(leaf["dtype"]), tuple(leaf["shape"])
    if arr.shape != shape or arr.dtype != _stored_dtype(dtype):
        raise ValueError(
            f"entry {leaf['path']} is {arr.dtype}{list(arr.shape)}, header says "
            f"{dtype}{list(shape)}"
        )
    return arr.view(dtype)


def _restore(path: Path, arrays: dict[str, np.ndarray], like: Any) -> Any:
    """Put ``arrays`` into the structure of ``like``, leaf by leaf, checking each one."""
    pairs, treedef = jax.tree_util.tree_flatten_with_path(like)
    names = [jax.tree_util.keystr(key_path) for key_path, _ in pairs]
    known = set(names)
    missing = [n for n in names if n not in arrays]
    extra = [n for n in arrays if n not in known]
    if missing:
        raise ValueError(f"{path}: leaf {missing[0]} is missing ({len(missing)} leaves missing)")
    if extra:
        raise ValueError(f"{path}: leaf {extra[0]} is not in the template ({len(extra)} extra)")
    return treedef.unflatten(
        [_restore_leaf(path, n, arrays[n], t) for n, (_, t) in zip(names, pairs, strict=True)]
    )


def _spec(template: Any) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a template leaf, without copying a device array to the host."""
    if hasattr(template, "shape") and hasattr(template, "dtype"):
        return tuple(template.shape), np.dtype(template.dtype)
    arr = np.asarray(template)
    return arr.shape, arr.dtype


def _restore_leaf(path: Path, name: str, arr: np.ndarray, template: Any) -> Any:
    want = _spec(template)
    if (arr.shape, arr.dtype) != want:
        raise ValueError(
            f"{path}: leaf {name}: checkpoint has {arr.dtype}{list(arr.shape)}, "
            f"template has {want[1]}{list(want[0])}"
        )
    return jnp.asarray(arr) if isinstance(template, jax.Array | jax.ShapeDtypeStruct) else arr
