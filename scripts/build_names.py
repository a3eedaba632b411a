"""Build src/jaxbp/data/names_*.txt, the bundled surnames, from the copy inside PyPI's `names`.

Why a script: the shipped files must be re-derivable from a public source, byte for byte.
tests/test_names.py rebuilds them into a temporary folder and compares the bytes.

Usage (the `names` package is needed here only, never at runtime):

    pip install names==0.3.0
    python scripts/build_names.py             # write the three files, print counts and hashes
    python scripts/build_names.py --out DIR   # write them into DIR instead
    python scripts/build_names.py --check     # rebuild in memory; exit 1 unless the shipped
                                              # files (or those in --out DIR) have the same bytes

Source: `names/dist.all.last` in the `names` 0.3.0 wheel (Trey Hunner, MIT): the 1990 US Census
surname list (public domain), 88,799 surnames ranked by frequency, one per line as
"NAME  FREQ  CUMULATIVE_FREQ  RANK".

Corpus: the TOP = 32,000 most frequent surnames (82.2% of the 1990 population), lowercased.
Split: `numpy.random.default_rng(0).permutation(32000)`; its first 25,600 positions are train, the
next 3,200 validation, the last 3,200 test. Each file lists its names in that shuffled order (the
order the loader streams them in), one per line, ASCII a-z, "\\n" after every line.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path

import numpy as np

PACKAGE, VERSION = "names", "0.3.0"  # the wheel whose dist.all.last this was built from
SOURCE = "dist.all.last"
SOURCE_SHA256 = "b0e2b3743ccbad641ca48b344c24cdebcd1d9a1f76dc6dbf05986f2919f0b4e1"
TOP = 32_000  # ~242 KB of text: big enough for a small GPT to beat an MLP, small enough to ship
SEED = 0  # fixed so the split never moves
SPLITS = {"train": 25_600, "validation": 3_200, "test": 3_200}  # 80 / 10 / 10 by name
OUT = Path(__file__).resolve().parents[1] / "src" / "jaxbp" / "data"


def file_name(split: str) -> str:
    return f"names_{split}.txt"


def source_path() -> Path:
    """names/dist.all.last, found without importing the package (its import does nothing else)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the {PACKAGE} package is needed: pip install {PACKAGE}=={VERSION}")
    return Path(spec.submodule_search_locations[0]) / SOURCE


def read_source() -> tuple[list[str], str]:
    """The surnames in rank order, lowercased, and the source file's sha256."""
    raw = source_path().read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SOURCE_SHA256:
        version = importlib.metadata.version(PACKAGE)
        raise SystemExit(
            f"{SOURCE} sha256 {digest} is not the expected {SOURCE_SHA256} "
            f"({PACKAGE} {version} installed; built from {VERSION})"
        )
    rows = [line.split() for line in raw.decode("ascii").splitlines()]
    ranks = [int(row[3]) for row in rows]
    if ranks != list(range(1, len(rows) + 1)):
        raise ValueError(f"{SOURCE}: rows are not in rank order 1..{len(rows)}")
    surnames = [row[0].lower() for row in rows]
    bad = [s for s in surnames if not re.fullmatch("[a-z]+", s)]
    if bad or len(set(surnames)) != len(surnames):
        raise ValueError(f"{SOURCE}: non-letter or repeated surnames: {bad[:5]}")
    return surnames, digest


def build() -> dict[str, bytes]:
    """The bytes of each split's file."""
    surnames = read_source()[0][:TOP]
    order = np.random.default_rng(SEED).permutation(TOP)
    files, start = {}, 0
    for split, count in SPLITS.items():
        chosen = [surnames[i] for i in order[start : start + count]]
        files[split] = "".join(name + "\n" for name in chosen).encode("ascii")
        start += count
    assert start == TOP
    return files


def check(folder: Path) -> int:
    """0 if every file in `folder` has exactly the bytes of a fresh build, else 1."""
    fresh = build()
    same = {s: (folder / file_name(s)).read_bytes() == data for s, data in fresh.items()}
    print("; ".join(f"{file_name(s)} identical: {ok}" for s, ok in same.items()))
    return 0 if all(same.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder to write (default {OUT})")
    parser.add_argument("--check", action="store_true", help="compare with --out, write nothing")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.out)
    files = build()
    assert files == build(), "two builds differ"  # reproducible within one run
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"source {PACKAGE} {importlib.metadata.version(PACKAGE)} {SOURCE} sha256 {SOURCE_SHA256}")
    for split, data in files.items():
        (args.out / file_name(split)).write_bytes(data)
        names = data.decode("ascii").split()
        chars = sum(len(n) + 1 for n in names)  # each name and its "." end token
        digest = hashlib.sha256(data).hexdigest()
        print(
            f"{file_name(split):22s} {len(names):6,d} names {chars:8,d} chars "
            f"{len(data):8,d} bytes sha256 {digest}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
