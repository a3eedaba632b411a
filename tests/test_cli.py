"""The `jaxbp` command as a first-time user meets it: help, version, no verb, bad numbers."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from conftest import SUBPROCESS_TIMEOUT_S

from jaxbp.cli import VERBS, build_parser, main, number


def _console_script() -> str:
    """The `jaxbp` that `pip install` put beside this Python, else the one on PATH."""
    beside = Path(sys.executable).parent / "jaxbp"
    found = str(beside) if beside.exists() else shutil.which("jaxbp")
    assert found, "the jaxbp console script is not installed"
    return found


def _run(*command, timeout=SUBPROCESS_TIMEOUT_S):
    return subprocess.run(
        list(command), capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
    )


@pytest.mark.parametrize(
    "command",
    [
        ["SCRIPT", "--help"],
        ["SCRIPT", "-h"],
        [sys.executable, "-m", "jaxbp", "--help"],
        [sys.executable, "-m", "jaxbp.cli", "--help"],
    ],
    ids=["jaxbp --help", "jaxbp -h", "python -m jaxbp", "python -m jaxbp.cli"],
)
def test_top_level_help_lists_every_verb(command):
    command = [_console_script() if part == "SCRIPT" else part for part in command]
    result = _run(*command)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith("usage: jaxbp")
    for verb in VERBS:
        assert f"    {verb} " in result.stdout  # the verb and its one-line help
    assert "~97% test accuracy" in result.stdout


def test_bare_jaxbp_lists_the_verbs_and_exits_2():
    result = _run(_console_script())
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert all(f"    {verb} " in result.stderr for verb in VERBS)
    assert result.stderr.strip().splitlines()[-1] == "jaxbp: error: give a verb, e.g. `jaxbp train`"


def test_version_in_a_real_process():
    result = _run(_console_script(), "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"jaxbp {metadata.version('jaxbp')}"


def _verb_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (verbs,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {"jaxbp": parser, **verbs.choices}


@pytest.mark.parametrize("name", ["jaxbp", *VERBS])
def test_every_help_formats(name):
    # argparse %-formats each help string: a bare % (say "97%") raises only when help is shown.
    text = _verb_parsers()[name].format_help()
    assert text.startswith(f"usage: {'jaxbp' if name == 'jaxbp' else 'jaxbp ' + name}")


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_help_in_process(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: jaxbp {verb}")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nosuchverb"], "invalid choice: 'nosuchverb'"),
        (["--no-such-option"], "one of train, sample, check, explain, bench"),
        (["train", "--lr", "nan"], "argument --lr: must be finite, got nan"),
        (["train", "--lr", "inf"], "argument --lr: must be finite, got inf"),
        (["train", "--lr", "0"], "argument --lr: must be positive, got 0"),
        (["train", "--weight-decay", "nan"], "argument --weight-decay: must be finite"),
        (["train", "--weight-decay", "-1"], "argument --weight-decay: must be >= 0, got -1"),
        (["train", "--epochs", "1.5"], "argument --epochs: expected an integer, got '1.5'"),
        (["train", "--resume", "--overwrite"], "not allowed with argument --resume"),
        (["check", "--seed", "-1"], "argument --seed: must be >= 0, got -1"),
        (["check", "--batch-size", "0"], "argument --batch-size: must be positive, got 0"),
        (["explain", "--weights", "nan", *"12345678"], "argument --weights: must be finite"),
        (["bench", "--model", "4:3,2:relu"], "must be IN:LAYERS:ACTIVATION:LOSS:BATCH"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # were a check missing, the default --out would land here
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("jaxbp") and list(tmp_path.iterdir()) == []


def test_number_accepts_what_it_should():
    assert number(float)("1e-3") == 1e-3
    assert number(float, zero=True)("0") == 0.0
    assert number(float, negative=True)("-2.5") == -2.5
    assert number(int)("7") == 7
    with pytest.raises(argparse.ArgumentTypeError, match="finite"):
        number(float, negative=True)("-inf")
