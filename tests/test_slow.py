"""The documentation's training runs, run as it shows them, asserted at the bounds it states.

Opt-in: `pytest -m slow` (the default `pytest` deselects them; 1 min 17 s on 2 idle cores,
2026-12-06, most of it the cnn and the GPT's baselines). Each run is the page's command in a
subprocess with XLA's default optimisation (conftest.py turns LLVM's optimisations off for the
suite; the pages' figures were printed with them on, so the flag is taken out here). The
bounds sit below the figures measured, by the margin the page states beside each: another CPU
orders float32 sums differently, and training then ends a test example or two away."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

TIMEOUT_S = 1800  # a hang guard: each run takes a minute or two, and may share 2 busy cores
SUITE_FLAG = "--xla_backend_optimization_level=0"  # what conftest.py adds for the fast suite


def jaxbp_train(*args: str, out) -> str:
    """`jaxbp train ARGS --out OUT` with the environment the documented runs had: its stdout."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if f != SUITE_FLAG]
    env = {**os.environ, "XLA_FLAGS": " ".join(flags), "MPLBACKEND": "Agg"}
    command = [sys.executable, "-m", "jaxbp", "train", *args, "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stderr[-3000:]}"
    print(done.stdout)  # shown with -s or -rA: the figures this run printed
    return done.stdout


def printed_accuracy(stdout: str) -> float:
    found = re.search(r"test accuracy ([\d.]+)%", stdout)
    assert found, stdout[-2000:]
    return float(found.group(1))


# The accuracy bounds sit two test digits (of 360) below the worst run measured here over seeds
# and instruction sets (README, docs/guides/training.md): another CPU's float32 sums move a run
# like another seed does.


def test_default_train_reaches_its_stated_bound(tmp_path):
    """README: `jaxbp train` printed 97.22% (97.22-97.50% over seeds 0-5, and under AVX2 and
    SSE4.2); the bound asserted, 96.6%, is 12 wrong of 360."""
    accuracy = printed_accuracy(jaxbp_train(out=tmp_path / "train"))
    assert accuracy >= 96.6, accuracy


def test_cnn_preset_reaches_its_stated_bound(tmp_path):
    """docs/guides/training.md: `jaxbp train --model cnn` (60 epochs, peak lr 3e-3) printed
    98.89% (98.33-98.89% over seeds 0-3, and under AVX2 and SSE4.2); the bound asserted, 97.7%,
    is 8 wrong of 360. Its goal, 98.5%, is met here without a margin (the same page)."""
    stdout = jaxbp_train("--model", "cnn", out=tmp_path / "cnn")
    assert "adamw lr 0.003" in stdout and "done: 60 epochs" in stdout, stdout[-2000:]
    assert printed_accuracy(stdout) >= 97.7, printed_accuracy(stdout)


def test_gpt_beats_its_baselines_under_the_stated_bound(tmp_path):
    """docs/guides/sequences.md: `jaxbp train --model gpt` printed gpt 2.1282, mlp 2.1775,
    bigram 2.5386 nats per validation character; the bound asserted is 2.15, and the GPT must
    beat both baselines."""
    stdout = jaxbp_train("--model", "gpt", out=tmp_path / "gpt")
    found = re.search(r"validation nats/char on [\d,]+ characters: gpt ([\d.]+), mlp ([\d.]+), "
                      r"bigram ([\d.]+)", stdout)  # fmt: skip
    assert found, stdout[-2000:]
    gpt, mlp, bigram = map(float, found.groups())
    assert gpt <= 2.15, gpt
    assert gpt < mlp < bigram, (gpt, mlp, bigram)
