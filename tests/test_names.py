"""The bundled surnames: rebuilt byte for byte, a fixed disjoint split, the vocabulary, windows."""

from __future__ import annotations

import hashlib
import importlib.util
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from jaxbp import datasets

BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_names.py"
SIZES = {"train": 25_600, "validation": 3_200, "test": 3_200}
SHA256 = {  # the table in src/jaxbp/data/README.md
    "train": "9febc1a894793b2e225b865f32a1bc5cd0f1da5bdb353fd1e2a0cb88d0e368ee",
    "validation": "66db04d93de98fb9f56f3b69ccabbf038fe4f1b6fcceaabdac5b00cd532e22e8",
    "test": "dab9da072a45c4b83a37451b1406f6f7bd8d628b129290072cdeeb6247abd56d",
}


def shipped(split: str) -> bytes:
    return resources.files("jaxbp").joinpath(f"data/names_{split}.txt").read_bytes()


def split_names(split: str) -> list[str]:
    return shipped(split).decode("ascii").split("\n")[:-1]


def build_script():
    spec = importlib.util.spec_from_file_location("build_names", BUILD_SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_build_script_reproduces_the_shipped_files(tmp_path):
    pytest.importorskip("names", reason="the names package is the source (pip install names)")
    script = build_script()
    assert script.main(["--out", str(tmp_path)]) == 0
    for split in SIZES:
        assert (tmp_path / f"names_{split}.txt").read_bytes() == shipped(split), split
    assert script.check(tmp_path) == 0
    (tmp_path / "names_test.txt").write_bytes(b"smith\n")
    assert script.check(tmp_path) == 1  # a changed file is caught


def test_files_are_fixed_and_the_split_disjoint():
    every = []
    for split, size in SIZES.items():
        data = shipped(split)
        assert hashlib.sha256(data).hexdigest() == SHA256[split], split
        names = split_names(split)
        assert len(names) == size and all(
            n.isascii() and n.isalpha() and n.islower() for n in names
        )
        every += names
    assert len(set(every)) == sum(SIZES.values()), "a name in two splits"


def test_vocabulary_is_end_then_the_letters():
    vocab = datasets.vocabulary()
    assert vocab.chars == "." + "abcdefghijklmnopqrstuvwxyz" and vocab.size == 27
    ids = vocab.encode(".smith.")
    assert ids.dtype == np.int32 and ids.tolist() == [0, 19, 13, 9, 20, 8, 0]
    assert vocab.decode(ids) == ".smith." and vocab.decode(ids.reshape(1, 7)) == ".smith."
    with pytest.raises(ValueError, match=r"not in the vocabulary .*\['S', '_'\]"):
        vocab.encode("Smith_")
    with pytest.raises(ValueError, match="ids must lie in 0..26"):
        vocab.decode([3, 27])
    with pytest.raises(ValueError, match="'digits' has no vocabulary"):
        datasets.vocabulary("digits")


@pytest.mark.parametrize("split", ["validation", "test"])
def test_windows_are_the_stream_shifted_by_one(split):
    context = 8
    (x, y), (x_eval, y_eval) = datasets.load("names", split=split, context=context)
    vocab = datasets.vocabulary()
    for (xs, ys), name in (((x, y), "train"), ((x_eval, y_eval), split)):
        text = "." + "".join(n + "." for n in split_names(name))  # the stream of the split
        n = (len(text) - 1) // context  # whole windows; the last (N mod context) left out
        assert xs.shape == ys.shape == (n, context) and xs.dtype == ys.dtype == np.int32
        assert vocab.decode(xs) == text[: n * context]
        assert vocab.decode(ys) == text[1 : n * context + 1]  # every character after its x


def test_default_load_and_describe():
    info = datasets.info("names")
    assert info.task == "classification" and info.n_outputs == 27 and info.input_shape == (32,)
    assert (info.n_train, info.n_test) == (193_624 // 32, 24_401 // 32)  # characters // context
    assert "names" in datasets.names()


@pytest.mark.parametrize(
    "options, error",
    [
        (dict(split="train"), "split must be 'validation' or 'test'"),
        (dict(context=0), "context must be positive"),
        (dict(context=100_000), "longer than the stream"),
        (dict(context=2.5), "context must be an int"),
    ],
)
def test_bad_options_are_named(options, error):
    with pytest.raises((ValueError, TypeError), match=error):
        datasets.load("names", **options)
