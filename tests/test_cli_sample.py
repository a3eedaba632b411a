"""`jaxbp train --model gpt|lstm` on the bundled names, then `jaxbp sample`; bad input exits 2."""

from __future__ import annotations

import json

import pytest

from jaxbp.cli import main

# Its module fixture is costly: one worker runs the whole module, so the fixture runs once.
pytestmark = pytest.mark.xdist_group("cli_sample")

# A GPT small enough to compile and train one epoch in seconds: 1 block of width 16.
TINY = ["--context", "8", "--width", "16", "--depth", "1", "--heads", "2", "--epochs", "1"]
TINY += ["--batch-size", "256", "--no-progress", "--no-baselines"]


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpt") / "run"
    assert main(["train", "--model", "gpt", *TINY, "--out", str(out)]) == 0
    return out


def test_train_gpt_reports_nats_per_character(gpt_run, capsys):
    config = json.loads((gpt_run / "config.json").read_text())
    assert config["dataset"] == "names"  # chosen by --model gpt
    assert (config["context"], config["width"], config["lr"]) == (8, 16, 6e-3)  # gpt's default lr
    (line,) = [json.loads(s) for s in (gpt_run / "metrics.jsonl").read_text().splitlines()]
    # One epoch of a tiny model: below uniform (ln 27 = 3.30 nats/char), above a bigram's ~2.5.
    assert 2.5 < line["eval_loss"] < 3.3


def test_sample_prints_count_names_reproducibly(gpt_run, capsys):
    assert main(["sample", str(gpt_run), "--count", "6", "--seed", "3"]) == 0
    names = capsys.readouterr().out.splitlines()
    assert len(names) == 6 and all(set(n) <= set("abcdefghijklmnopqrstuvwxyz") for n in names)
    assert main(["sample", str(gpt_run), "--count", "6", "--seed", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == names
    assert main(["sample", str(gpt_run), "--count", "6", "--seed", "4", "--temperature", "2"]) == 0
    assert capsys.readouterr().out.splitlines() != names


def test_sample_refuses_a_run_that_is_not_a_character_model(tmp_path, capsys):
    out = tmp_path / "mlp"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model": None, "dataset": "digits"}))
    (out / "checkpoint.npz").write_bytes(b"")
    assert main(["sample", str(out)]) == 2
    err = capsys.readouterr().err
    assert "needs one trained with --model gpt or lstm" in err and err.count("\n") == 1


def test_a_bug_while_sampling_is_not_reported_as_bad_input(gpt_run, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ValueError("internal: a shape mismatch")

    monkeypatch.setattr("jaxbp.charlm.sample", broken)
    with pytest.raises(ValueError, match="internal: a shape mismatch"):
        main(["sample", str(gpt_run)])
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "no/such/run"], "no such run folder"),
        (["sample", "."], "holds no finished run"),
        (["train", "--model", "gpt", "--dataset", "digits"], "trains on --dataset names"),
        (["train", "--dataset", "names"], "train it with --model gpt or --model lstm"),
        (["train", "--context", "8"], "--context applies to --model gpt or lstm only"),
        (["train", "--model", "lstm", "--heads", "2"], "apply to --model gpt only"),
        (["train", "--model", "gpt", "--width", "10", "--heads", "4"], "divisible by num_heads"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # "." is an empty folder
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--temperature", "0"], "--temperature: must be positive"),
        (["--temperature", "nan"], "--temperature: must be finite"),
        (["--count", "-2"], "--count: must be positive"),
    ],
)
def test_bad_values_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sample", ".", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and err.count("\n") == 1, err
