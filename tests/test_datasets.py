"""Tests for jaxbp.datasets: bundled digits, synthetic sets, user-file loaders and their errors."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import pickle
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


def build_script():
    spec = importlib.util.spec_from_file_location("build_digits", BUILD_SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_build_script_reproduces_the_shipped_file(tmp_path):
    # No skip: scikit-learn is in the `test` extra, and this test is the README's "byte for byte".
    shipped = DIGITS_FILE.read_bytes()
    out = tmp_path / "digits.npz"
    assert build_script().main(["--out", str(out)]) == 0
    assert DIGITS_FILE.read_bytes() == shipped  # --out wrote elsewhere
    with out.open("rb") as handle, np.load(handle, allow_pickle=False) as fresh:
        with DIGITS_FILE.open("rb") as handle2, np.load(handle2, allow_pickle=False) as old:
            assert fresh.files == old.files
            assert_all_equal((fresh[k] for k in fresh.files), (old[k] for k in old.files))
    assert out.read_bytes() == shipped
    readme = resources.files("jaxbp").joinpath("data/README.md").read_text()
    assert build_script().read_source()[2] in readme  # the source file is the one recorded


def test_build_script_check_compares_bytes(tmp_path, capsys):
    script = build_script()
    assert script.main(["--check"]) == 0
    same_arrays = tmp_path / "recompressed.npz"
    with DIGITS_FILE.open("rb") as handle, np.load(handle, allow_pickle=False) as z:
        np.savez_compressed(same_arrays, **{k: z[k] for k in z.files})
    assert script.main(["--check", "--out", str(same_arrays)]) == 1
    assert "arrays identical: True; file bytes identical: False" in capsys.readouterr().out


# -- synthetic sets --------------------------------------------------------------------------


def test_names():
    assert datasets.names() == ("digits", "moons", "names", "spirals", "xor")


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
    np.savez(path, x_train=images, y_train=[0, 1, 2, 1, 0], x_test=images[:2], y_test=[2, 0])
    (x_train, y_train), (x_test, y_test) = load(str(path))
    assert x_train.shape == (5, 6) and x_train.dtype == np.float32
    np.testing.assert_allclose(x_train, images.reshape(5, 6) / 255)  # uint8 images scaled
    assert y_train.dtype == np.int32 and y_test.tolist() == [2, 0]
    assert_all_equal(flat(load_npz(path)), flat(load(path)))


def test_npz_x_y_is_split_with_a_fixed_seed(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.arange(20.0).reshape(10, 2), y=np.arange(10.0))
    with pytest.raises(ValueError, match=r"class 0 has only 1 row"):
        load_npz(path)  # 10 whole numbers, one row each: more likely ids than classes
    (x_train, y_train), (x_test, y_test) = load_npz(path, task="regression")
    assert len(x_train) == 8 and len(x_test) == 2  # test_fraction=0.2
    assert y_train.dtype == np.float32 and y_train.shape == (8, 1)  # float targets: regression
    np.testing.assert_array_equal(np.sort(np.concatenate([y_train, y_test]).ravel()), np.arange(10))
    np.testing.assert_array_equal(x_train[:, 0], 2 * y_train[:, 0])  # rows stay paired
    regression = load_npz(path, task="regression")
    assert_all_equal(flat(regression), flat(load_npz(path, task="regression", seed=0)))
    assert not np.array_equal(y_test, load_npz(path, task="regression", seed=1)[1][1])
    assert len(load_npz(path, task="regression", test_fraction=0.5)[1][0]) == 5


def test_csv_with_header_and_label_column(tmp_path):
    path = tmp_path / "d.csv"
    rows = "\n".join(f"{i},{i / 10},{i % 3}" for i in range(10))
    path.write_text("a,b,label\n" + rows + "\n\n")
    (x_train, y_train), (x_test, y_test) = load(str(path))
    assert x_train.shape == (8, 2) and x_test.shape == (2, 2) and x_train.dtype == np.float32
    assert y_train.dtype == np.int32
    np.testing.assert_array_equal(y_train, x_train[:, 0].astype(int) % 3)
    (x0, y0), _ = load_csv(path, label_column=0, task="classification", test_fraction=0.5)
    assert x0.shape == (5, 2) and y0.dtype == np.int32
    np.testing.assert_allclose(x0[:, 0], y0 / 10, rtol=1e-6)


def test_csv_without_header_and_float_targets(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("".join(f"{i},{i + 0.5}\n" for i in range(5)))
    (x_train, y_train), (x_test, y_test) = load_csv(path, header=False, task="regression")
    assert len(x_train) + len(x_test) == 5  # no row lost to a header
    assert y_train.dtype == np.float32 and y_train.shape == (4, 1)
    np.testing.assert_allclose(y_train, x_train + 0.5)
    assert sum(len(x) for x, _ in load_csv(path, header=True, task="regression")) == 4


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
    with pytest.raises(ValueError, match=r"labels run 7..9, but class 0 has no rows"):
        load_idx(paths[0], paths[1], test_images_path=paths[2], test_labels_path=paths[3])
    test_files = dict(test_images_path=paths[2], test_labels_path=paths[3])
    split = load_idx(paths[0], paths[1], **test_files, task="classification")
    (x_train, y_train), (x_test, y_test) = split
    np.testing.assert_array_equal(x_train, np.ones((3, 4)))
    np.testing.assert_array_equal(x_test, np.zeros((1, 4)))
    assert y_train.tolist() == [7, 8, 9] and y_test.tolist() == [7]
    assert_all_equal(flat(load(":".join(map(str, paths)), task="classification")), flat(split))


# -- the task: what a file's labels are -------------------------------------------------------


def write_csv(path: Path, labels, header="a,b,label") -> Path:
    """A header, then one row per label: features (row, row / 10), then the label as given."""
    rows = [f"{i},{i / 10},{label}" for i, label in enumerate(labels)]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


# Labels "auto" must not read as classes; the message names the place and says why.
# Row i of write_csv's labels is on line i + 2.
REFUSED_LABELS = [
    ([0, 1] * 4 + [1000000, 0], r"line 10, column 3: label 1000000 is above 999"),
    ([0, 1] * 4 + [0.5, 1], r"line 10, column 3: label 0.5 is not a class label \(a whole"),
    ([0, 1, -1, 1, 0, 0], r"line 4, column 3: label -1 is not a class label"),
    ([1, 2, 3] * 3, r"column 3: labels run 1..3, but class 0 has no rows \(1 of classes 0..3"),
    ([0, 2, 0, 2, 0, 2], r"column 3: labels run 0..2, but class 1 has no rows"),
    ([0, 1, 0, 1, 2, 0], r"line 6, column 3: class 2 has only 1 row\(s\)"),
    ([0] * 6, r"column 3: every label is 0, a single class"),
]


@pytest.mark.parametrize(("labels", "message"), REFUSED_LABELS)
def test_auto_task_refuses_labels_that_are_not_plainly_classes(tmp_path, labels, message):
    path = write_csv(tmp_path / "d.csv", labels)
    with pytest.raises(ValueError, match=message) as error:
        load(path)
    assert str(error.value).startswith(f"{path}, ")
    assert str(error.value).endswith(
        "set the task: task='classification' or task='regression' (jaxbp train --task)"
    )


def test_million_label_needs_the_task_and_then_gets_it(tmp_path):
    path = write_csv(tmp_path / "d.csv", [0, 1] * 4 + [1000000, 0])
    info = datasets.describe(load(path, task="classification"))
    assert info.task == "classification" and info.n_classes == info.n_outputs == 1000001
    (_, y), (_, y_test) = load(path, task="regression")
    assert y.dtype == np.float32 and y.shape == (8, 1)
    assert sorted(np.concatenate([y, y_test]).ravel().tolist()) == [0] * 5 + [1] * 4 + [1e6]
    assert datasets.info(path, task="regression") == datasets.DatasetInfo(
        str(path), "regression", (2,), None, 1, 8, 2
    )


def test_auto_task_infers_dense_classes(tmp_path):
    path = write_csv(tmp_path / "d.csv", [2, 0, 1, 1, 0, 2, "2.0", "1e0"])
    assert datasets.info(path) == datasets.DatasetInfo(
        str(path), "classification", (2,), 3, 3, 6, 2
    )
    at_limit = write_csv(tmp_path / "wide.csv", list(range(datasets.MAX_CLASSES)) * 2)
    assert datasets.info(at_limit).n_classes == 1000
    over = write_csv(tmp_path / "over.csv", list(range(datasets.MAX_CLASSES + 1)) * 2)
    with pytest.raises(ValueError, match="label 1000 is above 999: at most 1000 classes"):
        load(over)


def test_explicit_classification_names_the_row_of_a_non_integer(tmp_path):
    path = write_csv(tmp_path / "d.csv", [0, 1, 0, 1, 2.5, 0])
    with pytest.raises(ValueError) as error:
        load(path, task="classification")
    assert str(error.value) == (
        f"{path}, line 6, column 3: label 2.5 is not a class label (a whole number 0 to 2147483647)"
    )
    for bad in (-1, 2**31):
        with pytest.raises(ValueError, match=f"line 3, column 3: label {bad} is not a class"):
            load(write_csv(tmp_path / "e.csv", [0, bad, 1, 0]), task="classification")
    (_, y), (_, y_test) = load(
        write_csv(tmp_path / "f.csv", [0, 7, 7, 0, 3]), task="classification"
    )
    assert y.dtype == np.int32 and sorted([*y, *y_test]) == [0, 0, 3, 7, 7]


def test_npz_labels_follow_the_same_rules(tmp_path):
    path = tmp_path / "d.npz"
    x = np.zeros((6, 2))
    np.savez(path, x=x, y=np.array([0, 1, 0, 1, 1000000, 0]))
    with pytest.raises(ValueError, match=r"d.npz, y\[4\]: label 1000000 is above 999"):
        load(path)
    np.savez(path, x=x, y=np.array([0, 1, 0, 1, 0.5, 0]))
    with pytest.raises(ValueError, match=r"d.npz, y\[4\]: label 0.5 is not a class label"):
        load(path, task="classification")
    assert load(path, task="regression")[0][1].dtype == np.float32
    np.savez(path, x=x, y=np.array([0.0, 1, 0, 1, 1, 0]))  # whole floats: values, not dtype, count
    assert datasets.info(path).task == "classification"
    np.savez(path, x=x, y=np.ones((6, 2)))
    with pytest.raises(ValueError, match=r"d.npz, y: 2 values per row, not one label; set the"):
        load(path)
    with pytest.raises(ValueError, match=r"d.npz, y: 2 values per row, not one label$"):
        load(path, task="classification")
    assert load(path, task="regression")[0][1].shape == (5, 2)


def test_npz_own_split_counts_train_and_test_labels_together(tmp_path):
    path = tmp_path / "d.npz"
    x = np.zeros((4, 2), np.float32)
    np.savez(path, x_train=x, y_train=[0, 1, 1, 0], x_test=x[:2], y_test=[2, 2])
    (_, y), (_, y_test) = load(path)  # class 2 is only in the test set, but in 2 rows
    assert y.tolist() == [0, 1, 1, 0] and y_test.tolist() == [2, 2]
    np.savez(path, x_train=x, y_train=[0, 1, 1, 0], x_test=x[:2], y_test=[0, 0.5])
    with pytest.raises(ValueError, match=r"d.npz, y_test\[1\]: label 0.5 is not"):
        load(path)
    np.savez(path, x_train=x, y_train=[0, 1, 1, 3], x_test=x[:2], y_test=[0, 3])
    with pytest.raises(ValueError, match=r"d.npz, y_train and y_test: labels run 0..3, but cl"):
        load(path)


def test_idx_labels_follow_the_same_rules(tmp_path):
    images = write_idx(tmp_path / "images", np.zeros((6, 2, 2)))
    labels = write_idx(tmp_path / "labels", np.array([0, 1, 2, 0, 1, 0]))
    with pytest.raises(ValueError, match=r"labels\[2\]: class 2 has only 1 row"):
        load_idx(images, labels)
    assert load_idx(images, labels, task="classification")[0][1].dtype == np.int32


def test_builtin_sets_keep_their_task():
    assert_all_equal(flat(load("digits", task="classification")), flat(load("digits")))
    assert_all_equal(flat(load("xor", task="regression")), flat(load("xor")))
    with pytest.raises(ValueError, match="digits is a classification dataset; task='regression'"):
        load("digits", task="regression")
    with pytest.raises(ValueError, match="xor is a regression dataset"):
        load("xor", task="classification")


@pytest.mark.parametrize("name", ["moons", "d.csv"])
def test_unknown_task(tmp_path, name):
    path = write_csv(tmp_path / "d.csv", [0, 1, 0, 1])
    with pytest.raises(ValueError, match="task='labels'; valid: auto, classification, regression"):
        load(path if name == "d.csv" else name, task="labels")


# -- NaN and inf are named where they are ----------------------------------------------------


@pytest.mark.parametrize("cell", ["nan", "NaN", "inf", "-inf", "1e39"])
def test_csv_non_finite_value_names_line_and_column(tmp_path, cell):
    path = tmp_path / "d.csv"
    path.write_text(f"a,b,label\n1,2,0\n3,4,1\n\n5,{cell},0\n7,8,1\n")
    with pytest.raises(ValueError) as error:
        load(path)
    value = {"NaN": "nan", "1e39": "1e+39"}.get(cell, cell)
    assert str(error.value) == (
        f"{path}, line 5, column 2: {value} is not a finite float32 number "
        "(NaN, inf, or beyond 3.4e38)"
    )


def test_csv_non_finite_label_is_named(tmp_path):
    path = write_csv(tmp_path / "d.csv", [0, 1, "nan", 1])
    with pytest.raises(ValueError, match=r"d.csv, line 4, column 3: nan is not a finite"):
        load(path, task="regression")


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": [[0, 1], [2, np.nan], [4, 5]], "y": [0, 1, 0]}, r"d.npz, x\[1, 1\]: nan is not"),
        ({"x": np.zeros((3, 2, 2)), "y": [0.0, np.inf, 1]}, r"d.npz, y\[1\]: inf is not"),
        (
            {"x_train": np.zeros((2, 2)), "y_train": [0, 1]}
            | {"x_test": [[0, 0], [0, -np.inf]], "y_test": [0, 1]},
            r"d.npz, x_test\[1, 1\]: -inf is not a finite float32 number",
        ),
        (
            {"x": np.full((3, 1, 2), 1e300), "y": [0, 1, 0]},
            r"d.npz, x\[0, 0, 0\]: 1e\+300 is not a finite float32 number",
        ),
    ],
)
def test_npz_non_finite_value_names_array_and_index(tmp_path, arrays, message):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message):
        load(path, task="regression")


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


def test_idx_gzip_errors_name_the_file(tmp_path):
    labels = write_idx(tmp_path / "labels", np.zeros(3))
    fake = tmp_path / "images.gz"
    fake.write_bytes(write_idx(tmp_path / "raw", np.zeros((3, 2, 2))).read_bytes())
    with pytest.raises(ValueError, match=r"images.gz: not a valid gzip file \(Not a gzipped"):
        load_idx(fake, labels)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(write_idx(tmp_path / "whole.gz", np.zeros((3, 2, 2))).read_bytes()[:-9])
    with pytest.raises(ValueError, match=r"cut.gz: not a valid gzip file \(Compressed file ended"):
        load_idx(cut, labels)
    hidden = tmp_path / "images-idx3-ubyte"
    hidden.write_bytes((tmp_path / "whole.gz").read_bytes())
    with pytest.raises(ValueError, match=r"0x1F8B0800, expected 0x00000803 \(gzip data: name"):
        load_idx(hidden, labels)


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
        ValueError, match=r"images is uint8 \(3, 2, 2\), but .*odd is uint8 \(1, 3, 3\)"
    ):
        load_idx(images, labels, test_images_path=odd, test_labels_path=one)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2\n3,x\n", r"line 2, column 2: 'x' is not a number"),
        ("1,2\n3,4,5\n", r"line 2: 3 columns, expected 2"),
        ("h1,h2\n1,2\n", r"bad.csv: 1 data row\(s\) under its header; need at least 2"),
        ("", r"bad.csv: empty, no rows"),
        ("\n\n", r"bad.csv: empty, no rows"),
        ("h1,h2,label\n", r"bad.csv: 0 data row\(s\) under its header; need at least 2"),
        ("1\n2\n3\n", r"bad.csv, line 1: 1 column; need at least 2 \(features and a label\)"),
        ("a,b,c\n1,2\n3,4\n", r"bad.csv, line 1: header has 3 columns, but line 2 has 2"),
        ('1,2\n"3\n",5\n6,x\n', r"bad.csv, line 4, column 2: 'x' is not a number"),  # 2 lines
    ],
)
def test_malformed_csv(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        load(path)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_csv_that_is_not_text(tmp_path):
    path = tmp_path / "image.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(ValueError, match=r"image.csv: not UTF-8 text, so not a CSV file"):
        load(path)


def test_csv_byte_order_mark_is_not_a_header(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("1,2,0\n3,4,1\n5,6,0\n7,8,1\n9,10,0\n".encode("utf-8-sig"))
    (x, _), (x_test, _) = load(path)
    assert sorted(np.concatenate([x, x_test])[:, 0].tolist()) == [1, 3, 5, 7, 9]


def test_folder_is_not_a_dataset(tmp_path):
    (tmp_path / "data.csv").mkdir()
    with pytest.raises(ValueError, match=r"data.csv: a folder, not a dataset file"):
        load(tmp_path / "data.csv")


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
        ({"x": np.zeros((4, 2)), "y": np.array(["a"] * 4)}, r"bad.npz, y must hold numbers"),
        (
            {"x_train": np.zeros((4, 2)), "y_train": np.zeros(4, int)}
            | {"x_test": np.zeros((2, 3)), "y_test": np.zeros(2, int)},
            r"bad.npz, x_train is float64 \(4, 2\), but x_test is float64 \(2, 3\)",
        ),
        (
            {"x_train": np.zeros((4, 2), np.uint8), "y_train": np.zeros(4, int)}
            | {"x_test": np.zeros((2, 2)), "y_test": np.zeros(2, int)},
            r"bad.npz, x_train is uint8 \(4, 2\), but x_test is float64 \(2, 2\)",  # scaled?
        ),
        ({"x": np.float64(3.0), "y": np.zeros(2)}, r"bad.npz, x is a single number, not one row"),
        ({"x": np.array([["a", "b"]] * 4), "y": np.zeros(4)}, r"bad.npz, x must hold numbers"),
        ({"x": np.zeros((4, 2), complex), "y": np.zeros(4)}, r"x must hold numbers, not complex"),
        (
            {"x_train": np.zeros((0, 2)), "y_train": np.zeros(0, int)}
            | {"x_test": np.zeros((1, 2)), "y_test": np.zeros(1, int)},
            r"bad.npz, x_train has no rows",
        ),
    ],
)
def test_malformed_npz(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message):
        load_npz(path)


UNPICKLED = []


class Tripwire:
    """Unpickling one runs UNPICKLED.append: proof that a loader ran code from a file."""

    def __reduce__(self):
        return UNPICKLED.append, ("code from the file ran",)


@pytest.mark.parametrize("key", ["x", "y"])
def test_npz_object_arrays_are_refused_never_unpickled(tmp_path, key):
    path = tmp_path / "objects.npz"
    arrays = {"x": np.zeros((4, 2)), "y": np.array([0, 1, 0, 1])}
    arrays[key] = np.array([Tripwire()] * 4, dtype=object)
    np.savez(path, **arrays)
    with pytest.raises(ValueError) as error:
        load(path)
    assert str(error.value) == f"{path}: array {key!r} holds Python objects (object), not numbers"
    assert "pickle" not in str(error.value)
    assert UNPICKLED == []


def corrupt_npz_cases(tmp_path):
    """(file bytes, what the message says) per broken .npz."""
    np.savez(tmp_path / "good.npz", x=np.arange(40.0).reshape(20, 2), y=np.arange(20) % 2)
    good = (tmp_path / "good.npz").read_bytes()
    member = good.index(b"\x93NUMPY")  # the first .npy member's data, stored uncompressed
    flipped = bytearray(good)
    flipped[member + 200] ^= 0xFF
    return [
        (b"", r"not a valid \.npz file \(empty\)"),
        (b"x,y\n1,2\n", r"not a valid \.npz file \(not a zip archive\)"),
        (pickle.dumps({"x": [1.0]}), r"not a valid \.npz file \(not a zip archive\)"),
        (good[: len(good) // 2], r"not a valid \.npz file \(not a zip archive\)"),
        (bytes(flipped), r"not a valid \.npz file: array 'x' is damaged \(Bad CRC-32"),
    ]


@pytest.mark.parametrize("case", range(5))
def test_corrupt_npz_is_named_and_never_unpickled(tmp_path, case):
    data, message = corrupt_npz_cases(tmp_path)[case]
    path = tmp_path / "broken.npz"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message) as error:
        load(path)
    assert str(error.value).startswith(f"{path}: ")
    assert "pickle" not in str(error.value)


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
        load_npz(path, task="regression", test_fraction=0.1)
