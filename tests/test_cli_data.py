"""`jaxbp train` on users' files: --task, and bad files refused in one line before any output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jaxbp.cli import main

TINY = ["--layers", "4", "--batch-size", "8", "--epochs", "1", "--no-progress"]


def write_csv(path: Path, labels) -> Path:
    """Two features per row, then the label as given; 'a,b,label' header."""
    rows = [f"{i % 7},{(i % 5) / 10},{label}" for i, label in enumerate(labels)]
    path.write_text("\n".join(["a,b,label", *rows]) + "\n")
    return path


def refused(capsys, tmp_path, *args) -> str:
    """Run `jaxbp train`; it must exit 2 with one line on stderr and leave no output folder."""
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxbp train: error: ") and err.count("\n") == 1, err
    assert not out.exists()
    return err


def test_million_label_is_refused_naming_file_line_column_and_value(tmp_path, capsys):
    path = write_csv(tmp_path / "d.csv", [0, 1] * 20 + [1000000])
    err = refused(capsys, tmp_path, "--dataset", str(path))
    assert f"{path}, line 42, column 3: label 1000000 is above 999" in err
    assert "--task" in err


def test_half_label_is_refused_not_turned_into_regression(tmp_path, capsys):
    path = write_csv(tmp_path / "d.csv", [0, 1] * 20 + [0.5])
    err = refused(capsys, tmp_path, "--dataset", str(path))
    assert f"{path}, line 42, column 3: label 0.5 is not a class label" in err
    err = refused(capsys, tmp_path, "--dataset", str(path), "--task", "classification")
    assert f"{path}, line 42, column 3: label 0.5 is not a class label" in err


def test_nan_is_named_by_the_loader_not_by_fit(tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n" + "1,2,0\n3,4,1\n" * 10 + "5,nan,1\n")
    err = refused(capsys, tmp_path, "--dataset", str(path))
    assert f"{path}, line 22, column 2: nan is not a finite float32 number" in err
    assert "eval_data" not in err


def test_corrupt_npz_is_refused_without_pickle_advice(tmp_path, capsys):
    path = tmp_path / "d.npz"
    path.write_bytes(b"\x80\x04not an archive")
    err = refused(capsys, tmp_path, "--dataset", str(path))
    assert f"{path}: not a valid .npz file (not a zip archive)" in err
    assert "pickle" not in err


def test_task_regression_on_a_builtin_classification_set(tmp_path, capsys):
    err = refused(capsys, tmp_path, "--dataset", "moons", "--task", "regression")
    assert "moons is a classification dataset; task='regression' does not apply" in err


def test_unknown_task_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--task", "labels", "--out", str(tmp_path / "run")])
    assert exit_.value.code == 2
    assert "argument --task: invalid choice: 'labels'" in capsys.readouterr().err


def test_task_regression_trains_without_accuracy(tmp_path, capsys):
    path = write_csv(tmp_path / "d.csv", [i / 10 for i in range(42)])  # 0.0, 0.1, ..., 4.1
    out = tmp_path / "run"
    args = ["--dataset", str(path), "--task", "regression", "--out", str(out)]
    assert main(["train", *TINY, *args]) == 0
    stdout = capsys.readouterr().out
    assert "(34 train, 8 test, regression)" in stdout and "Dense(features=1))" in stdout
    assert "loss mse" in stdout and "accuracy" not in stdout
    assert json.loads((out / "config.json").read_text())["task"] == "regression"
    assert "eval_accuracy" not in json.loads((out / "metrics.jsonl").read_text())


def test_task_regression_on_0_1_targets_reports_no_accuracy(tmp_path, capsys):
    # MSE on targets all 0 or 1 is scored as a classification unless the user says otherwise.
    path = write_csv(tmp_path / "d.csv", [0, 1] * 21)
    out = tmp_path / "run"
    args = ["--dataset", str(path), "--task", "regression", "--out", str(out)]
    assert main(["train", *TINY, *args]) == 0
    stdout = capsys.readouterr().out
    assert "regression)" in stdout and "loss mse" in stdout and "accuracy" not in stdout
    assert "eval_accuracy" not in json.loads((out / "metrics.jsonl").read_text())


def test_auto_task_trains_a_classifier(tmp_path, capsys):
    path = write_csv(tmp_path / "d.csv", [0, 1, 2] * 14)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--dataset", str(path), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "(34 train, 8 test, classification)" in stdout and "Dense(features=3))" in stdout
    assert "loss softmax_cross_entropy" in stdout and "test accuracy" in stdout
