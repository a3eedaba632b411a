"""The documentation's code runs and prints what the page says it prints; the site builds.

Every page a reader sees (the README, `docs/`, `experiments/README.md`: `_docs.pages()`) is read
for its ```python blocks. A page's blocks run in order, in one namespace (as a reader pastes them
into one session), in a fresh process started in an empty folder. What a block prints is compared
with the plain ``` block right after it (after an optional line "prints"); a block followed by none
must print nothing. Line by line, token by token (whitespace-separated), exactly, except for the
numbers that rounding moves on another CPU:

- a check report's errors (d.de-dd): at or above 1e-8 they must agree to one unit of their last
  printed digit (2 significant digits, rounded either way); below 1e-8 they are float64 roundoff
  of a correct leaf, which varies with the CPU's summation order, and need only stay below 1e-8,
  far under every tolerance. The marks beside them (ok, FAIL, !) compare exactly.
- a percentage on a line that says "accuracy": within 1 point. It ends a float32 training run
  whose trajectory follows the CPU's summation order (a point is ~4 of the 360 test digits); a
  broken example is off by far more, or does not run at all.

Blocks not meant to run are listed in FRAGMENTS with the reason, and must fail to compile: fix one
and this test asks for it to be run.

Then the site: `mkdocs build --strict` (no warning) builds it when the docs extra is installed
(JAXBP_TEST_DOCS=1, which `.ci/run` sets, makes a missing extra fail instead of skip), every public
name the API reference promises is in the built site's inventory, and every image a page shows is
in the site.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import types
import zlib
from pathlib import Path
from typing import NamedTuple

import pytest
from _docs import DOCS, README, ROOT, pages
from conftest import SUBPROCESS_TIMEOUT_S

TINY = 1e-8  # below this a check-report error is roundoff (float64 eps 2.2e-16 times its sums)
ACCURACY_POINTS = 1.0
# (page relative to the repository, section heading) -> why the block there is a fragment
FRAGMENTS: dict[tuple[str, str], str] = {}
ERROR = re.compile(r"^\d\.\de[-+]\d\d$")  # how CheckReport prints an error
PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")


class Block(NamedTuple):
    page: str  # relative to the repository
    section: str
    source: str
    expected: str  # what it must print ("" when the page shows no output)


def page_blocks(page: str, text: str) -> list[Block]:
    """Each ```python block with its section and the plain ``` block shown right after it."""
    lines, blocks, section, i = text.splitlines(), [], "", 0
    while i < len(lines):
        if lines[i].startswith("#") and lines[i].lstrip("#").startswith(" "):
            section = lines[i].lstrip("#").strip()
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
        blocks.append(Block(page, section, source, expected))
    return blocks


BLOCKS = [b for p in pages() for b in page_blocks(str(p.relative_to(ROOT)), p.read_text())]
RUNNABLE = [b for b in BLOCKS if (b.page, b.section) not in FRAGMENTS]
PAGES_WITH_CODE = sorted({b.page for b in RUNNABLE})
# Pages whose blocks run long enough that LLVM's optimisations, which the suite turns off
# (conftest.py), pay for themselves: page -> why.
UNOPTIMIZED = "--xla_backend_optimization_level=0"
OPTIMIZED_PAGES = {
    "docs/guides/training.md": "3 epochs of a CNN: its convolutions run ~4x slower unoptimised",
}
MARK = "=====DOCS BLOCK====="
DRIVER = textwrap.dedent(f"""
    import json, sys
    namespace = {{"__name__": "__main__"}}
    page, sources = json.load(open(sys.argv[1]))
    for source in sources:
        print({MARK!r}, flush=True)
        exec(compile(source, page, "exec"), namespace)
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
        return [f"{len(got_lines)} lines printed, the page shows {len(want_lines)}:\n{got}"]
    found = []
    for g, w in zip(got_lines, want_lines):
        gt, wt = g.split(), w.split()
        if len(gt) != len(wt) or not all(same_token(a, b, w) for a, b in zip(gt, wt)):
            found.append(f"printed {g!r}\n   page {w!r}")
    return found


def test_the_blocks_are_found():
    """The parser sees the examples (a parser that found none would pass everything)."""
    shown = {(b.page, b.section) for b in RUNNABLE if b.expected}
    assert ("README.md", "In 15 lines") in shown, shown
    assert any(b.page == "docs/guides/check-rules.md" and "class Swish" in b.source for b in BLOCKS)
    assert any("check_vjp(" in b.source and not b.expected for b in RUNNABLE)
    assert len(PAGES_WITH_CODE) >= 10, PAGES_WITH_CODE


@pytest.mark.parametrize("page", PAGES_WITH_CODE)
def test_page_prints_what_it_shows(page, tmp_path):
    """The page's blocks, run in order in one fresh process: each prints what the page shows."""
    blocks = [b for b in RUNNABLE if b.page == page]
    (tmp_path / "blocks.json").write_text(json.dumps([page, [b.source for b in blocks]]))
    env = dict(os.environ)
    if page in OPTIMIZED_PAGES:  # the suite's other XLA flags stay; an empty XLA_FLAGS goes
        flags = [f for f in env.pop("XLA_FLAGS", "").split() if f != UNOPTIMIZED]
        env |= {"XLA_FLAGS": " ".join(flags)} if flags else {}
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path / "blocks.json")],
        cwd=tmp_path, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, env=env,
    )  # fmt: skip
    outputs = done.stdout.split(MARK + "\n")[1:]
    assert done.returncode == 0, (
        f"{page}: block {len(outputs)} (in '{blocks[len(outputs) - 1].section}') raised:\n"
        f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    )
    assert len(outputs) == len(blocks)
    problems = [
        f"{page}, block {i + 1} in '{block.section}':\n" + "\n".join(found)
        for i, (block, out) in enumerate(zip(blocks, outputs))
        if (found := differences(out, block.expected))
    ]
    assert not problems, "\n".join(problems)


def test_fragments_are_listed_and_do_not_compile():
    fragments = [b for b in BLOCKS if (b.page, b.section) in FRAGMENTS]
    assert {(b.page, b.section) for b in fragments} == set(FRAGMENTS), "a listed fragment is gone"
    for block in fragments:
        with pytest.raises(SyntaxError):  # once it compiles, take it off FRAGMENTS: it runs then
            compile(block.source, block.page, "exec")


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


def test_the_swish_with_its_fix_passes_every_row():
    """The guide says that with `dy * (s + params["b"] * x * ds)` every row passes: its own
    Swish block, with that one change, checked at five seeds."""
    (block,) = [b for b in BLOCKS if "class Swish" in b.source]
    wrong = "dy * (s + x * ds)"
    assert block.source.count(wrong) == 1 and "print(check_layer(Swish(), (4,)))" in block.source
    fixed = block.source.replace(wrong, 'dy * (s + params["b"] * x * ds)')
    fixed = fixed.replace("print(check_layer(Swish(), (4,)))", "")
    namespace: dict = {"__name__": "docs_swish"}
    exec(compile(fixed, block.page, "exec"), namespace)
    for seed in range(5):
        report = namespace["check_layer"](namespace["Swish"](), (4,), key=seed)
        assert report.ok, report


def test_the_readme_is_short_and_opens_with_the_two_commands():
    """A newcomer reads it to the end: at most ~10 kB, the set-up commands first."""
    text = README.read_text()
    assert len(text.encode()) <= 10_500, len(text.encode())
    first = text.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert first == [
        "pip install -e . && jaxbp train",
        'pip install -e ".[test]" && pytest',
    ], first


# ---- the site ----------------------------------------------------------------------------------

HAVE_MKDOCS = all(importlib.util.find_spec(m) for m in ("mkdocs", "material", "mkdocstrings"))
needs_docs = pytest.mark.skipif(
    not HAVE_MKDOCS and os.environ.get("JAXBP_TEST_DOCS") != "1",
    reason='the docs extra is not installed (pip install -e ".[docs]")',
)
# The modules whose every public name the API reference documents (the list, and the
# rest of the package's public modules).
API_MODULES = [
    "jaxbp", "jaxbp.layers", "jaxbp.losses", "jaxbp.check", "jaxbp.train", "jaxbp.quantities",
    "jaxbp.optimizers", "jaxbp.privacy", "jaxbp.datasets", "jaxbp.signals", "jaxbp.feedback",
    "jaxbp.walk", "jaxbp.protocols", "jaxbp.checkpoint", "jaxbp.charlm", "jaxbp.explain",
]  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once with --strict: any warning fails the build."""
    folder = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)],
        cwd=ROOT, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert done.returncode == 0 and not warnings, done.stderr[-4000:]
    return folder


def inventory(site: Path) -> set[str]:
    """The names in the site's objects.inv (Sphinx's format: four header lines, then zlib)."""
    raw = (site / "objects.inv").read_bytes()
    body = zlib.decompress(raw.split(b"\n", 4)[4]).decode()
    return {line.split(" ", 1)[0] for line in body.splitlines() if line}


@needs_docs
@pytest.mark.xdist_group("docs_site")  # one worker builds the site once for both
def test_the_site_builds_strict_and_documents_every_public_name(site):
    names = inventory(site)
    documented = {id(_resolve(n)) for n in names if n.startswith("jaxbp")}
    missing = []
    for module_name in API_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if f"{module_name}.{name}" in names:
                continue
            # a re-export (jaxbp.Dense is jaxbp.layers.Dense) counts where it is documented;
            # constants (ints, strings) only at their own name, as their ids are not theirs
            own = isinstance(obj, types.ModuleType | type) or callable(obj)
            if not (own and id(obj) in documented):
                missing.append(f"{module_name}.{name}")
    assert not missing, f"public names the API reference does not document: {missing}"


def _resolve(dotted: str):
    """The object a documented name stands for (None when it is not importable as written)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part, None)
        return obj
    return None


@needs_docs
@pytest.mark.xdist_group("docs_site")
def test_every_page_is_in_the_site_with_its_images(site):
    """Each page under docs/ is in the nav (mkdocs --strict reports one left out only at INFO)
    and built, and every image a built page shows is a file of the site."""
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:\n", 1)[1].split("\n\n", 1)[0]
    pages_built = {p.relative_to(DOCS).with_suffix("") for p in DOCS.rglob("*.md")}
    for page in [*pages_built, Path("experiments/index")]:
        if page.parts[0] == "assets":
            continue
        assert f" {page}.md\n" in nav + "\n", f"docs/{page}.md is not in mkdocs.yml's nav"
        folder = site / (page.parent if page.name == "index" else page)
        assert (folder / "index.html").is_file(), f"docs/{page}.md was not built"
    shown = 0
    for html in site.rglob("*.html"):
        for src in re.findall(r'<img[^>]* src="([^"]+)"', html.read_text()):
            if src.startswith(("http:", "https:", "data:")):
                continue
            assert (html.parent / src).resolve().is_file(), f"{html}: image {src} is missing"
            shown += 1
    assert shown >= 15, f"only {shown} images in the whole site"
