"""Build src/jaxbp/data/digits.npz, the bundled 8x8 digits, from the copy inside scikit-learn.

Why a script: the shipped file must be re-derivable from a public source, byte for byte.
tests/test_datasets.py rebuilds it into a temporary folder and compares the bytes.

Usage (scikit-learn is needed here only, never at runtime):

    python scripts/build_digits.py             # write src/jaxbp/data/digits.npz, print hashes
    python scripts/build_digits.py --out F     # write F instead, leaving the shipped file alone
    python scripts/build_digits.py --check     # rebuild in memory; exit 1 unless the shipped
                                               # file (or --out F) has exactly the same bytes

Source: `sklearn/datasets/data/digits.csv.gz` (1,797 rows of 64 pixel counts 0-16 and a label),
the test set `optdigits.tes` of UCI "Optical Recognition of Handwritten Digits" (CC BY 4.0).

Split: stratified by label with `numpy.random.default_rng(0)`: each class gives
`n_class * 360 / 1797` test rows, rounded by largest remainder so the total is exactly 360;
the other 1,437 rows are train. Rows keep their source order within each split, and the source
row numbers are stored as `index_train` / `index_test`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

SEED = 0  # fixed so the split never moves
N_TEST = 360  # 20% of 1,797, rounded to a whole number of rows
OUT = Path(__file__).resolve().parents[1] / "src" / "jaxbp" / "data" / "digits.npz"
# A fixed zip timestamp: np.savez stamps the current time, which changes the sha256.
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def source_path() -> Path:
    """sklearn/datasets/data/digits.csv.gz, found without importing sklearn (slow: scipy)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-learn is needed to build digits.npz: pip install scikit-learn")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"


def read_source() -> tuple[np.ndarray, np.ndarray, str]:
    """Return (pixels uint8 (1797, 64), labels uint8 (1797,), sha256 of digits.csv.gz)."""
    raw = source_path().read_bytes()
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.int64)
    if table.shape != (1797, 65) or table.min() < 0 or table[:, :64].max() > 16:
        raise ValueError(
            f"unexpected digits.csv.gz: shape {table.shape}, range {table.min()}..{table.max()}"
        )
    return (
        table[:, :64].astype(np.uint8),
        table[:, 64].astype(np.uint8),
        hashlib.sha256(raw).hexdigest(),
    )


def stratified_test_rows(labels: np.ndarray, n_test: int, seed: int) -> np.ndarray:
    """Sorted row numbers of a stratified test set of exactly n_test rows."""
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n_test / len(labels)
    take = np.floor(quota).astype(int)
    # Largest remainder: the classes that lost most to flooring get the leftover rows.
    take[np.argsort(-(quota - take), kind="stable")[: n_test - take.sum()]] += 1
    rng = np.random.default_rng(seed)
    picked = [
        rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def build() -> dict[str, np.ndarray]:
    """The arrays that go into digits.npz, split and typed."""
    pixels, labels, _ = read_source()
    test = stratified_test_rows(labels, N_TEST, SEED)
    train = np.setdiff1d(np.arange(len(labels)), test)
    return {
        "x_train": pixels[train],
        "y_train": labels[train],
        "x_test": pixels[test],
        "y_test": labels[test],
        "index_train": train.astype(np.uint16),
        "index_test": test.astype(np.uint16),
    }


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz as np.savez lays it out (uncompressed .npy members), minus the timestamps.

    Stored, not deflated: compressed bytes depend on the zlib build (zlib-ng deflates
    differently), stored bytes only on the .npy format and the zip layout.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            entry = zipfile.ZipInfo(name + ".npy", date_time=ZIP_TIME)
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, member.getvalue(), compress_type=zipfile.ZIP_STORED)
    return buffer.getvalue()


def check(path: Path) -> int:
    """0 if the file has exactly the bytes of a fresh build, else 1; says if the arrays match."""
    fresh = build()
    with np.load(path, allow_pickle=False) as shipped:
        same = sorted(shipped.files) == sorted(fresh) and all(
            shipped[k].dtype == v.dtype and np.array_equal(shipped[k], v) for k, v in fresh.items()
        )
    identical = path.read_bytes() == npz_bytes(fresh)
    print(f"arrays identical: {same}; file bytes identical: {identical}")
    return 0 if same and identical else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"file to write (default {OUT})")
    parser.add_argument("--check", action="store_true", help="compare with --out, write nothing")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.out)
    arrays = build()
    data = npz_bytes(arrays)
    assert data == npz_bytes(build()), "two builds differ"  # reproducible within one run
    args.out.write_bytes(data)
    print(f"source digits.csv.gz sha256 {read_source()[2]}")
    for name, array in arrays.items():
        digest = hashlib.sha256(array.tobytes()).hexdigest()
        print(f"{name:12s} {array.dtype} {array.shape} sha256 {digest}")
    print(f"{args.out.name} {len(data)} bytes sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
