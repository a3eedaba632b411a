"""`jaxbp train --model gpt|lstm` on the bundled names, then `jaxbp sample`; bad input exits 2."""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections import Counter

import jax
import numpy as np
import pytest

from jaxbp import charlm, datasets
from jaxbp.cli import main
from jaxbp.layers import char_rnn

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


# An LSTM of 16 units over windows of 8, one epoch in batches of 1024 (24 steps), and its
# baselines: makemore's MLP for one epoch (of its 10) in batches of 1024, so it takes seconds.
LSTM = ["--context", "8", "--width", "16", "--epochs", "1", "--batch-size", "1024"]
LSTM += ["--no-progress"]


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory):
    """The run's folder and what it printed."""
    out, printed = tmp_path_factory.mktemp("lstm") / "run", io.StringIO()
    with pytest.MonkeyPatch.context() as monkeypatch, contextlib.redirect_stdout(printed):
        monkeypatch.setitem(charlm.MLP_DEFAULTS, "epochs", 1)
        monkeypatch.setitem(charlm.MLP_DEFAULTS, "batch_size", 1024)
        assert main(["train", "--model", "lstm", *LSTM, "--out", str(out)]) == 0
    return out, printed.getvalue()


def _bigram_nats(train, validation) -> float:
    """A bigram with add-one smoothing, counted in plain Python: -mean log p(next | this)."""
    pairs = Counter(zip(np.ravel(train[0]).tolist(), np.ravel(train[1]).tolist()))
    vocab = datasets.vocabulary("names").size
    rows = Counter()
    for (a, _), n in pairs.items():
        rows[a] += n
    this, following = np.ravel(validation[0]).tolist(), np.ravel(validation[1]).tolist()
    total = sum(math.log((pairs[a, b] + 1) / (rows[a] + vocab)) for a, b in zip(this, following))
    return -total / len(this)


def test_train_lstm_reports_nats_per_character_beside_its_baselines(lstm_run):
    run, out = lstm_run
    config = json.loads((run / "config.json").read_text())
    assert (config["model"], config["width"], config["context"], config["lr"]) == (
        "lstm",
        16,
        8,
        6e-3,
    )
    vocab = datasets.vocabulary("names").size
    _, params = jax.eval_shape(
        lambda k: char_rnn(vocab, hidden=16).init(k, (8,)), jax.random.PRNGKey(0)
    )
    size = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
    assert f"model lstm (embedding 64, 16 hidden units; {size:,} parameters)" in out
    (line,) = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert (
        f"epoch 1/1: train {line['loss']:.4f}, validation {line['eval_loss']:.4f} nats/char" in out
    )
    # The report's line, and baselines.json with the same three numbers.
    numbers = json.loads((run / "baselines.json").read_text())
    train, validation = datasets.load("names", context=8)
    assert numbers["characters"] == np.size(validation[1])
    nats = numbers["validation_nats_per_char"]
    assert list(nats) == ["lstm", "mlp", "bigram"]
    shown = ", ".join(f"{k} {v:.4f}" for k, v in nats.items())
    assert f"validation nats/char on {np.size(validation[1]):,} characters: {shown}" in out
    assert nats["lstm"] == line["eval_loss"]
    # float64 sums of ~24,000 logs in another order: ~1e-15 relative.
    assert nats["bigram"] == pytest.approx(_bigram_nats(train, validation), rel=1e-12)
    # One epoch of the MLP learns more than the uniform 27 characters (ln 27 = 3.30 nats).
    assert 0 < nats["mlp"] < math.log(27)


def test_sample_from_an_lstm_cuts_names_at_max_length(lstm_run, capsys):
    run, _ = lstm_run
    assert main(["sample", str(run), "--count", "20", "--seed", "5"]) == 0
    names = capsys.readouterr().out.splitlines()
    assert main(["sample", str(run), "--count", "20", "--seed", "5", "--max-length", "3"]) == 0
    short = capsys.readouterr().out.splitlines()
    assert len(names) == 20 and all(set(n) <= set("abcdefghijklmnopqrstuvwxyz") for n in names)
    # The same draws, cut: a name is the first 3 characters of the one drawn without the cut.
    assert short == [n[:3] for n in names] and max(map(len, names)) > 3


def test_temperature_changes_the_names_drawn_with_the_same_seed(lstm_run, capsys):
    run, _ = lstm_run

    def names(temperature):
        args = ["--count", "8", "--seed", "2", "--temperature", temperature]
        assert main(["sample", str(run), *args]) == 0
        return capsys.readouterr().out.splitlines()

    one, half = names("1"), names("0.5")
    assert len(one) == len(half) == 8 and one != half
    assert names("0.5") == half
    # Near 0 every draw is the most likely character: all 8 names are the same one.
    assert len(set(names("0.001"))) == 1


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
