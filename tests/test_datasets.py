"""Tests for jaxbp.datasets: bundled digits, synthetic sets, user-file loaders and their errors."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import re
import struct
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from jaxbp import datasets
from jaxbp.datasets import load, load_csv, load_idx, load_npz

DIGITS_FILE = resources.files("jaxbp").joinpath("data/digits.npz")
BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_digits.py"


def assert_all_equal(left, right):
    """Same arrays, same dtypes, in the same order."""
    left, right = list(left), list(right)
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def flat(split):
    """All four arrays of a split, for comparing two splits."""
    (x_train, y_train), (x_test, y_test) = split
    return [x_train, y_train, x_test, y_test]


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> Path:
    """An IDX file by hand: big-endian u32 magic, u32 per dim, uint8 data; gzip if *.gz."""
    magic = 0x00000800 + array.ndim if magic is None else magic
    raw = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


# -- digits ----------------------------------------------------------------------------------


def test_digits_shapes_dtypes_ranges():
    (x_train, y_train), (x_test, y_test) = load("digits")
    assert x_train.shape == (1437, 64) and x_test.shape == (360, 64)
    assert y_train.shape == (1437,) and y_test.shape == (360,)
    assert len(x_train) + len(x_test) == 1797
    assert x_train.dtype == x_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int32
    for x in (x_train, x_test):
        assert x.min() == 0.0 and x.max() == 1.0
        np.testing.assert_array_equal(x * 16, np.round(x * 16))  # counts 0-16, divided by 16


def test_digits_split_is_stratified_and_disjoint():
    (_, y_train), (_, y_test) = load("digits")
    train_counts, test_counts = (
        np.bincount(y_train, minlength=10),
        np.bincount(y_test, minlength=10),
    )
    assert len(train_counts) == len(test_counts) == 10
    assert (train_counts > 0).all() and (test_counts > 0).all()
    # Stratified: every class's test share is within one row of 360/1797 of its size.
    np.testing.assert_allclose(test_counts, (train_counts + test_counts) * 360 / 1797, atol=1)
    with DIGITS_FILE.open("rb") as handle, np.load(handle, allow_pickle=False) as z:
        rows = np.concatenate([z["index_train"], z["index_test"]])
    np.testing.assert_array_equal(np.sort(rows), np.arange(1797))


def test_digits_is_deterministic():
    assert_all_equal(flat(load("digits")), flat(load("digits")))


def test_digits_file_matches_its_readme():
    digest = hashlib.sha256(DIGITS_FILE.read_bytes()).hexdigest()
    readme = resources.files("jaxbp").joinpath("data/README.md").read_text()
    assert digest in readme
    with DIGITS_FILE.open("rb") as handle, np.load(handle, allow_pickle=False) as z:
        for name in z.files:
            assert hashlib.sha256(z[name].tobytes()).hexdigest() in readme, name


def test_build_script_reproduces_the_shipped_file():
    if importlib.util.find_spec("sklearn") is None:
        pytest.skip("scikit-learn (build time only) is not installed")
    spec = importlib.util.spec_from_file_location("build_digits", BUILD_SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    first, second = script.build(), script.build()
    with DIGITS_FILE.open("rb") as handle, np.load(handle, allow_pickle=False) as z:
        assert sorted(z.files) == sorted(first)
        for name, array in first.items():
            assert z[name].dtype == array.dtype, name
            np.testing.assert_array_equal(z[name], array)
    assert script.npz_bytes(first) == script.npz_bytes(second)


# -- synthetic sets --------------------------------------------------------------------------


def test_names():
    assert datasets.names() == ("digits", "moons", "spirals", "xor")


def test_xor():
    (x, y), (x_test, y_test) = load("xor")
    np.testing.assert_array_equal(x, [[0, 0], [0, 1], [1, 0], [1, 1]])
    np.testing.assert_array_equal(y, [[0], [1], [1], [0]])
    assert x.dtype == y.dtype == np.float32
    np.testing.assert_array_equal(x_test, x)
    np.testing.assert_array_equal(y_test, y)


@pytest.mark.parametrize(
    ("name", "n_train", "n_test", "classes"), [("moons", 1000, 500, 2), ("spirals", 1200, 600, 3)]
)
def test_synthetic_defaults(name, n_train, n_test, classes):
    (x_train, y_train), (x_test, y_test) = load(name)
    assert x_train.shape == (n_train, 2) and x_test.shape == (n_test, 2)
    assert x_train.dtype == np.float32 and y_train.dtype == y_test.dtype == np.int32
    for y in (y_train, y_test):
        counts = np.bincount(y)
        assert len(counts) == classes and counts.max() - counts.min() <= 1


@pytest.mark.parametrize("name", ["moons", "spirals"])
def test_synthetic_determinism(name):
    assert_all_equal(flat(load(name)), flat(load(name, seed=0)))
    assert not np.array_equal(load(name)[0][0], load(name, seed=1)[0][0])
    # The train set comes from its own stream: asking for more test rows leaves it alone.
    assert_all_equal(load(name)[0], load(name, n_test=7)[0])
    assert load(name, n_train=10, n_test=3)[1][0].shape == (3, 2)


def test_moons_without_noise_lie_on_their_arcs():
    (x, y), _ = load("moons", noise=0.0)
    centre = np.where(y[:, None] == 0, [0.0, 0.0], [1.0, 0.5])
    np.testing.assert_allclose(np.linalg.norm(x - centre, axis=1), 1.0, atol=1e-6)
    assert (x[y == 0, 1] >= 0).all() and (x[y == 1, 1] <= 0.5).all()


def test_spirals_classes_option_and_radius():
    (x, y), _ = load("spirals", classes=5, n_train=50)
    assert set(y.tolist()) == set(range(5))
    assert (np.linalg.norm(x, axis=1) < 1).all()


def test_info():
    assert datasets.info("digits") == datasets.DatasetInfo(
        "digits", "classification", (64,), 10, 10, 1437, 360
    )
    assert datasets.info("xor") == datasets.DatasetInfo("xor", "regression", (2,), None, 1, 4, 4)
    assert datasets.info("spirals", n_train=30).n_classes == 3


# -- user files ------------------------------------------------------------------------------


def test_npz_with_its_own_split(tmp_path):
    path = tmp_path / "d.npz"
    images = np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 2, 3)
    np.savez(path, x_train=images, y_train=np.arange(5), x_test=images[:2], y_test=[1, 0])
    (x_train, y_train), (x_test, y_test) = load(str(path))
    assert x_train.shape == (5, 6) and x_train.dtype == np.float32
    np.testing.assert_allclose(x_train, images.reshape(5, 6) / 255)  # uint8 images scaled
    assert y_train.dtype == np.int32 and y_test.tolist() == [1, 0]
    assert_all_equal(flat(load_npz(path)), flat(load(path)))


def test_npz_x_y_is_split_with_a_fixed_seed(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.arange(20.0).reshape(10, 2), y=np.arange(10.0))
    (x_train, y_train), (x_test, y_test) = load_npz(path)
    assert len(x_train) == 8 and len(x_test) == 2  # test_fraction=0.2
    assert y_train.dtype == np.float32 and y_train.shape == (8, 1)  # float targets: regression
    np.testing.assert_array_equal(np.sort(np.concatenate([y_train, y_test]).ravel()), np.arange(10))
    np.testing.assert_array_equal(x_train[:, 0], 2 * y_train[:, 0])  # rows stay paired
    assert_all_equal(flat(load_npz(path)), flat(load_npz(path, seed=0)))
    assert not np.array_equal(y_test, load_npz(path, seed=1)[1][1])
    assert len(load_npz(path, test_fraction=0.5)[1][0]) == 5


def test_csv_with_header_and_label_column(tmp_path):
    path = tmp_path / "d.csv"
    rows = "\n".join(f"{i},{i / 10},{i % 3}" for i in range(10))
    path.write_text("a,b,label\n" + rows + "\n\n")
    (x_train, y_train), (x_test, y_test) = load(str(path))
    assert x_train.shape == (8, 2) and x_test.shape == (2, 2) and x_train.dtype == np.float32
    assert y_train.dtype == np.int32
    np.testing.assert_array_equal(y_train, x_train[:, 0].astype(int) % 3)
    (x0, y0), _ = load_csv(path, label_column=0, test_fraction=0.5)
    assert x0.shape == (5, 2) and y0.dtype == np.int32
    np.testing.assert_allclose(x0[:, 0], y0 / 10, rtol=1e-6)


def test_csv_without_header_and_float_targets(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("".join(f"{i},{i + 0.5}\n" for i in range(5)))
    (x_train, y_train), (x_test, y_test) = load_csv(path, header=False)
    assert len(x_train) + len(x_test) == 5  # no row lost to a header
    assert y_train.dtype == np.float32 and y_train.shape == (4, 1)
    np.testing.assert_allclose(y_train, x_train + 0.5)
    assert sum(len(x) for x, _ in load_csv(path, header=True)) == 4  # a numeric first row dropped


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_split_here(tmp_path, suffix):
    images = np.arange(10 * 2 * 2).reshape(10, 2, 2) * 6 % 256
    labels = np.arange(10) % 4
    image_path = write_idx(tmp_path / f"images.idx{suffix}", images)
    label_path = write_idx(tmp_path / f"labels.idx{suffix}", labels)
    (x_train, y_train), (x_test, y_test) = load_idx(image_path, label_path)
    assert x_train.shape == (8, 4) and x_test.shape == (2, 4) and x_train.dtype == np.float32
    assert y_train.dtype == np.int32
    rows = np.round(np.concatenate([x_train, x_test]) * 255).astype(int)
    index = rows[:, 0] // 24  # the first pixel of image i is 24 i: recover i after the shuffle
    np.testing.assert_array_equal(np.sort(index), np.arange(10))
    np.testing.assert_array_equal(rows, images.reshape(10, 4)[index])  # scaled by exactly 1/255
    np.testing.assert_array_equal(np.concatenate([y_train, y_test]), labels[index])
    assert_all_equal(
        flat(load(f"{image_path}:{label_path}")), flat(load_idx(image_path, label_path))
    )


def test_idx_with_given_test_files(tmp_path):
    images, labels = np.full((3, 2, 2), 255), np.array([7, 8, 9])
    paths = [
        write_idx(tmp_path / "train-images.gz", images),
        write_idx(tmp_path / "train-labels", labels),
        write_idx(tmp_path / "test-images", images[:1] * 0),
        write_idx(tmp_path / "test-labels.gz", labels[:1]),
    ]
    split = load_idx(paths[0], paths[1], test_images_path=paths[2], test_labels_path=paths[3])
    (x_train, y_train), (x_test, y_test) = split
    np.testing.assert_array_equal(x_train, np.ones((3, 4)))
    np.testing.assert_array_equal(x_test, np.zeros((1, 4)))
    assert y_train.tolist() == [7, 8, 9] and y_test.tolist() == [7]
    assert_all_equal(flat(load(":".join(map(str, paths)))), flat(split))


# -- errors ----------------------------------------------------------------------------------


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'") as error:
        load("mnist")
    for name in datasets.names():
        assert name in str(error.value)


@pytest.mark.parametrize("loader", [load, load_npz, load_csv])
def test_missing_file_is_named(tmp_path, loader):
    path = tmp_path / ("gone.csv" if loader is load_csv else "gone.npz")
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        loader(path)


def test_missing_paths_through_load(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="labels.idx"):
        load(f"{write_idx(tmp_path / 'images.idx', np.zeros((2, 1, 1)))}:{tmp_path}/labels.idx")


def test_unsupported_existing_file(tmp_path):
    (tmp_path / "data.txt").write_text("1,2\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        load(str(tmp_path / "data.txt"))


def idx_error_cases(tmp_path):
    """(images path, labels path, regex for the message) per malformed IDX pair."""
    good_images = write_idx(tmp_path / "images", np.zeros((3, 2, 2)))
    good_labels = write_idx(tmp_path / "labels", np.zeros(3))
    short = tmp_path / "short"
    short.write_bytes(write_idx(tmp_path / "full", np.zeros((3, 2, 2))).read_bytes()[:-1])
    return [
        (good_labels, good_labels, r"magic number 0x00000801, expected 0x00000803"),
        (good_images, write_idx(tmp_path / "bad", np.zeros(3), 0x00000901), r"0x00000901"),
        (short, good_labels, r"\(3, 2, 2\) needs 12 data bytes, found 11"),
        (good_images, write_idx(tmp_path / "four", np.zeros(4)), r"3 images but .* 4 labels"),
        (tmp_path / "stub", good_labels, r"too short"),
    ]


@pytest.mark.parametrize("case", range(5))
def test_malformed_idx(tmp_path, case):
    (tmp_path / "stub").write_bytes(b"\x00\x00\x08\x03\x00")
    images, labels, message = idx_error_cases(tmp_path)[case]
    with pytest.raises(ValueError, match=message):
        load_idx(images, labels)


def test_idx_argument_errors(tmp_path):
    images = write_idx(tmp_path / "images", np.zeros((3, 2, 2)))
    labels = write_idx(tmp_path / "labels", np.zeros(3))
    with pytest.raises(ValueError, match="or neither"):
        load_idx(images, labels, test_images_path=images)
    with pytest.raises(ValueError, match="3 ':'-separated paths"):
        load(f"{images}:{labels}:{images}")
    odd = write_idx(tmp_path / "odd", np.zeros((1, 3, 3)))
    one = write_idx(tmp_path / "one", np.zeros(1))
    with pytest.raises(
        ValueError, match=r"x_train is float32 \(3, 4\), but x_test is float32 \(1, 9\)"
    ):
        load_idx(images, labels, test_images_path=odd, test_labels_path=one)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2\n3,x\n", r"line 2, column 2: 'x' is not a number"),
        ("1,2\n3,4,5\n", r"line 2: 3 columns, expected 2"),
        ("h1,h2\n1,2\n", r"need at least 2 data rows"),
    ],
)
def test_malformed_csv(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_csv(path)


def test_csv_bad_label_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("1,2\n3,4\n5,6\n")
    with pytest.raises(ValueError, match="label_column=2 but rows have 2 columns"):
        load_csv(path, label_column=2)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"inputs": np.zeros((4, 2)), "y": np.zeros(4)}, r"found \['inputs', 'y'\]"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(3)}, r"x has 4 rows but y has 3"),
        ({"x": np.zeros((4, 2)), "y": np.array(["a"] * 4)}, r"y must be integer labels"),
        (
            {"x_train": np.zeros((4, 2)), "y_train": np.zeros(4, int)}
            | {"x_test": np.zeros((2, 3)), "y_test": np.zeros(2, int)},
            r"x_train is float32 \(4, 2\), but x_test is float32 \(2, 3\)",
        ),
    ],
)
def test_malformed_npz(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message):
        load_npz(path)


def test_npz_never_unpickles(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([{}, {}], dtype=object), y=np.zeros(2))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_npz(path)


def test_single_array_file_is_not_an_npz(tmp_path):
    path = tmp_path / "single.npz"
    with path.open("wb") as handle:
        np.save(handle, np.zeros(3))
    with pytest.raises(ValueError, match="single array"):
        load_npz(path)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: load("moons", n_train=0), r"n_train >= 1 and n_test >= 1, got 0 and 500"),
        (lambda: load("xor", seed=1), r"unexpected keyword"),
    ],
)
def test_bad_options(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_test_fraction_that_leaves_no_rows(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((3, 1)), y=np.zeros(3, int))
    with pytest.raises(ValueError, match="test_fraction=0.1 of 3 rows gives 0 test and 3 train"):
        load_npz(path, test_fraction=0.1)
