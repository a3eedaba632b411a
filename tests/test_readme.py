"""README.md's code runs and prints what the README says it prints.

Every ```python block runs, in order, in one namespace (as a reader pastes them into one session),
in a fresh process. What a block prints is compared with the plain ``` block right after it (after
an optional line "prints"); a block followed by none must print nothing. Line by line, token by
token (whitespace-separated), exactly, except for the numbers that rounding moves on another CPU:

- a check report's errors (d.de-dd): at or above 1e-8 they must agree to one unit of their last
  printed digit (2 significant digits, rounded either way); below 1e-8 they are float64 roundoff
  of a correct leaf, which varies with the CPU's summation order, and need only stay below 1e-8,
  far under every tolerance. The marks beside them (ok, FAIL, !) compare exactly.
- a percentage on a line that says "accuracy": within 1 point. It ends a 30-epoch float32
  training run whose trajectory follows the CPU's summation order (a point is ~4 of the 360 test
  digits); a broken example is off by far more, or does not run at all.

Blocks not meant to run are listed in FRAGMENTS with the reason, and must fail to compile: fix one
and this test asks for it to be run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import SUBPROCESS_TIMEOUT_S

# Its module fixture is costly: one worker runs the whole module, so the fixture runs once.
pytestmark = pytest.mark.xdist_group("readme")

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TINY = 1e-8  # below this a check-report error is roundoff (float64 eps 2.2e-16 times its sums)
ACCURACY_POINTS = 1.0
# (section heading, why the block there is a fragment, not a program)
FRAGMENTS: dict[str, str] = {}
ERROR = re.compile(r"^\d\.\de[-+]\d\d$")  # how CheckReport prints an error
PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")


class Block(NamedTuple):
    section: str
    source: str
    expected: str  # what it must print ("" when the README shows no output)


def readme_blocks(text: str) -> list[Block]:
    """Each ```python block with its section and the plain ``` block shown right after it."""
    lines, blocks, section, i = text.splitlines(), [], "", 0
    while i < len(lines):
        if lines[i].startswith("## "):
            section = lines[i][3:].strip()
        if lines[i].strip() != "```python":
            i += 1
            continue
        end = lines.index("```", i + 1)
        source, i = "\n".join(lines[i + 1 : end]) + "\n", end + 1
        while i < len(lines) and not lines[i].strip():
            i += 1
        if i < len(lines) and lines[i].strip() == "prints":
            i += 1
        expected = ""
        if i < len(lines) and lines[i] == "```":
            end = lines.index("```", i + 1)
            expected, i = "\n".join(lines[i + 1 : end]), end + 1
        blocks.append(Block(section, source, expected))
    return blocks


BLOCKS = readme_blocks(README.read_text())
RUNNABLE = [b for b in BLOCKS if b.section not in FRAGMENTS]
MARK = "=====README BLOCK====="
DRIVER = textwrap.dedent(f"""
    import json, sys
    namespace = {{"__name__": "__main__"}}
    for source in json.load(open(sys.argv[1])):
        print({MARK!r}, flush=True)
        exec(compile(source, "README.md", "exec"), namespace)
""")


def same_token(got: str, want: str, line: str) -> bool:
    if got == want:
        return True
    if ERROR.match(want) and ERROR.match(got):
        g, w = float(got), float(want)
        if w < TINY:
            return g < TINY
        unit = 10.0 ** (int(want.split("e")[1]) - 1)  # one unit of the second significant digit
        return abs(g - w) <= unit * 1.001
    both = PERCENT.match(got), PERCENT.match(want)
    if "accuracy" in line and all(both):
        return abs(float(both[0][1]) - float(both[1][1])) <= ACCURACY_POINTS
    return False


def differences(got: str, want: str) -> list[str]:
    """Where `got` departs from `want` under the rules above; [] when it matches."""
    got_lines, want_lines = got.strip("\n").splitlines(), want.strip("\n").splitlines()
    if len(got_lines) != len(want_lines):
        return [f"{len(got_lines)} lines printed, the README shows {len(want_lines)}"]
    found = []
    for g, w in zip(got_lines, want_lines):
        gt, wt = g.split(), w.split()
        if len(gt) != len(wt) or not all(same_token(a, b, w) for a, b in zip(gt, wt)):
            found.append(f"printed {g!r}\n   README {w!r}")
    return found


@pytest.fixture(scope="module")
def printed(tmp_path_factory) -> list[str]:
    """What each runnable block printed, run in order in one fresh process."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / "blocks.json").write_text(json.dumps([b.source for b in RUNNABLE]))
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(folder / "blocks.json")],
        cwd=folder, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S,
    )  # fmt: skip
    outputs = done.stdout.split(MARK + "\n")[1:]
    assert done.returncode == 0, (
        f"README block {len(outputs)} ({RUNNABLE[len(outputs) - 1].section}) raised:\n"
        f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    )
    assert len(outputs) == len(RUNNABLE)
    return outputs


def test_the_readme_blocks_are_found():
    """The parser sees the examples (a parser that found none would pass everything)."""
    shown = {b.section for b in RUNNABLE if b.expected}
    assert {"In 15 lines", "Checking your own backward rules"} <= shown, shown
    assert any("check_vjp(" in b.source and not b.expected for b in RUNNABLE)


@pytest.mark.parametrize("index", range(len(RUNNABLE)), ids=[b.section for b in RUNNABLE])
def test_block_prints_what_the_readme_shows(printed, index):
    block = RUNNABLE[index]
    found = differences(printed[index], block.expected)
    assert not found, f"README block in '{block.section}':\n" + "\n".join(found)


def test_fragments_are_listed_and_do_not_compile():
    fragments = [b for b in BLOCKS if b.section in FRAGMENTS]
    assert {b.section for b in fragments} == set(FRAGMENTS), "a listed fragment is gone"
    for block in fragments:
        with pytest.raises(SyntaxError):  # once it compiles, take it off FRAGMENTS: it runs then
            compile(block.source, "README.md", "exec")


SWISH = """\
Swish on x(8, 4) [float64]: FAILED
  leaf   shape   dtype    vjp err    fd err     dot err
  ['b']  (4,)    float64  1.8e-16    4.8e-11    1.6e-16    ok
  x      (8, 4)  float64  7.7e-03 !  1.9e-03 !  1.9e-03 !  FAIL
test accuracy 96.1%"""


@pytest.mark.parametrize(
    "change, passes",
    [(("1.8e-16", "3.1e-15"), True),  # roundoff: another CPU
     (("4.8e-11", "9.0e-10"), True),
     (("7.7e-03", "7.8e-03"), True),  # one unit of the last digit: rounding either way
     (("96.1%", "95.3%"), True),  # training on another CPU
     (("1.8e-16", "2.0e-08"), False),  # a correct leaf's error is no longer roundoff
     (("7.7e-03", "7.9e-03"), False),
     (("7.7e-03", "7.7e-04"), False),
     (("1.9e-03 !  FAIL", "1.9e-03    FAIL"), False),  # a mark lost
     (("ok", "FAIL"), False),
     (("(8, 4)", "(8, 5)"), False),
     (("96.1%", "94.9%"), False),
     (("test accuracy", "test loss"), False)],
)  # fmt: skip
def test_the_comparison_allows_rounding_and_nothing_else(change, passes):
    assert (differences(SWISH.replace(*change, 1), SWISH) == []) == passes


def test_the_readmes_swish_with_its_fix_passes_every_row():
    """The README says that with `dy * (s + params["b"] * x * ds)` every row passes: its own
    Swish block, with that one change, checked at five seeds."""
    (block,) = [b for b in BLOCKS if "class Swish" in b.source]
    wrong = "dy * (s + x * ds)"
    assert block.source.count(wrong) == 1 and "print(check_layer(Swish(), (4,)))" in block.source
    fixed = block.source.replace(wrong, 'dy * (s + params["b"] * x * ds)')
    fixed = fixed.replace("print(check_layer(Swish(), (4,)))", "")
    namespace: dict = {"__name__": "readme_swish"}
    exec(compile(fixed, "README", "exec"), namespace)
    for seed in range(5):
        report = namespace["check_layer"](namespace["Swish"](), (4,), key=seed)
        assert report.ok, report
