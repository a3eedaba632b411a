"""The CLI's error policy: bad input exits 2 in one line; a bug inside jaxbp is not dressed as
bad input but propagates (a traceback, exit 1); the cli modules import one another without a
cycle."""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import SUBPROCESS_TIMEOUT_S

import jaxbp.cli
from jaxbp.cli import VERBS, main
from jaxbp.layers import Dense

TINY = ["--layers", "4", "--batch-size", "16", "--epochs", "1", "--no-progress"]
GPT = {"model": "gpt", "dataset": "names", "context": 8, "width": 16, "depth": 1, "heads": 2}
NOT_AN_NPZ = b"\x80\x04not an archive"


def _exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exit_info:  # argparse's own refusals
        return exit_info.code


def _raise(error: BaseException):
    def broken(*args, **kwargs):
        raise error

    return broken


# ---------------------------------------------------------------------------------------------
# Bad input: exit 2, one line, no traceback


@pytest.fixture
def folders(tmp_path) -> dict[str, Path]:
    """Run folders as a user may hand them over: each with a checkpoint that is not one."""
    configs = {
        "broken": None,  # a train run: its checkpoint corrupt
        "gpt": GPT,
        "gpt_no_heads": {k: v for k, v in GPT.items() if k != "heads"},
        "gpt_bad_json": "{model: gpt",
    }
    for name, config in configs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "checkpoint.npz").write_bytes(NOT_AN_NPZ)
        if config is not None:
            text = config if isinstance(config, str) else json.dumps(config)
            (tmp_path / name / "config.json").write_text(text)
    return {"tmp": tmp_path, **{name: tmp_path / name for name in configs}}


BAD_INPUT = [  # (argv, what the one line says); {name}: a path from `folders`
    (["train", "--dataset", "{tmp}/missing.csv"], "dataset file not found: {tmp}/missing.csv"),
    (["train", "--dataset", "{tmp}"], "unsupported file type"),
    (["train", "--activation", "rectifier"], "unknown activation 'rectifier'"),
    (["train", "--model", "nosuch"], "--model: unknown model 'nosuch'"),
    (["train", "--resume", "--out", "{broken}"],
     "--resume: the run in {broken}: {broken}/checkpoint.npz: not a readable"),
    (["sample", "{tmp}/missing"], "{tmp}/missing: no such run folder"),
    (["sample", "{gpt}"], "{gpt}/checkpoint.npz: not a readable"),
    (["sample", "{gpt_no_heads}"], "{gpt_no_heads}/config.json: missing 'heads'"),
    (["sample", "{gpt_bad_json}"], "{gpt_bad_json}/config.json: Expecting property name"),
    (["check", "no_such_module_xyz:Layer"], "cannot import 'no_such_module_xyz'"),
    (["check", "--targets", "bogus", "jaxbp.losses:mse"], "--targets must be one of auto,"),
    (["explain", "--plot", "/proc/jaxbp-cannot-write/x.png"],
     "cannot write to the folder of --plot /proc/jaxbp-cannot-write: No such file"),
    (["bench", "--out", "/proc/jaxbp-cannot-write"], "cannot write to output folder"),
    (["bench", "--model", "4:3,2:relu:mse"], "--model: model spec '4:3,2:relu:mse' must be"),
]  # fmt: skip


def test_every_verb_has_a_bad_input_case():
    assert {argv[0] for argv, _ in BAD_INPUT} == set(VERBS)


@pytest.mark.parametrize("argv, message", BAD_INPUT)
def test_bad_input_exits_2_in_one_line(argv, message, folders, monkeypatch, capsys):
    monkeypatch.chdir(folders["tmp"])  # a check gone missing would write runs/ here
    argv = [a.format(**folders) for a in argv] + (TINY if argv[0] == "train" else [])
    code = _exit_code(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"jaxbp {argv[0]}: error: ") and err.count("\n") == 1, err
    assert message.format(**folders) in err and "Traceback" not in err, err
    assert not (folders["tmp"] / "runs").exists()


USER_LAYER = '''
from jaxbp import layers as L

class WantsPairs(L.Layer):
    """y = x1 x2 of a pair x; dy/dx = (x2, x1)."""
    def init(self, key, input_shape):
        return tuple(input_shape[:-1]), ()
    def forward(self, params, x, *, key=None):
        if x.shape[-1] != 2:
            raise ValueError(f"WantsPairs takes pairs, got {x.shape[-1]} features")
        return x[..., 0] * x[..., 1], x
    def backward(self, params, x, dy):
        return (), dy[..., None] * x[..., ::-1]
'''


def test_a_user_layer_that_raises_is_bad_input_named_by_its_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "user_layer_for_errors.py").write_text(USER_LAYER)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    target = "user_layer_for_errors:WantsPairs"
    assert main(["check", target, "--input-shape", "2"]) == 0  # its rule is right, on pairs
    capsys.readouterr()
    assert main(["check", target, "--input-shape", "3"]) == 2
    err = capsys.readouterr().err
    line = next(i for i, s in enumerate(USER_LAYER.splitlines(), 1) if "raise ValueError" in s)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{target} on input shape (3,) (user_layer_for_errors.py, line {line}): " in err
    assert "ValueError: WantsPairs takes pairs, got 3 features" in err


# ---------------------------------------------------------------------------------------------
# A bug inside jaxbp propagates out of main, its type intact


BUGS = [  # (argv, the library function the verb calls that is made to raise)
    (["train", "--dataset", "moons", "--out", "{tmp}/run", *TINY], (Dense, "backward")),
    (["check"], ("jaxbp.check.check_layer",)),
    (["explain"], ("jaxbp.explain.walkthrough",)),
    (["bench", "--quick", "--configs", "seed", "--out", "{tmp}/bench"], ("jaxbp.bench.run",)),
]


@pytest.mark.parametrize("error", [ValueError, TypeError])
@pytest.mark.parametrize("argv, function", BUGS, ids=[argv[0] for argv, _ in BUGS])
def test_a_bug_propagates_out_of_main(argv, function, error, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(*function, _raise(error("internal: a shape mismatch")))
    with pytest.raises(error, match="internal: a shape mismatch"):
        main([a.format(tmp=tmp_path) for a in argv])
    assert "error:" not in capsys.readouterr().err  # nothing said to be the user's fault


def test_an_os_error_off_the_users_paths_is_not_bad_input(monkeypatch):
    monkeypatch.setattr("jaxbp.explain.walkthrough", _raise(FileNotFoundError(2, "gone", "x")))
    with pytest.raises(FileNotFoundError):
        main(["explain"])


def test_an_interrupt_exits_130(monkeypatch, capsys):
    monkeypatch.setattr("jaxbp.explain.walkthrough", _raise(KeyboardInterrupt()))
    assert main(["explain"]) == 130
    assert capsys.readouterr().err == "jaxbp explain: interrupted\n"


def test_a_broken_pipe_exits_0_quietly(monkeypatch):
    monkeypatch.setattr("jaxbp.explain.walkthrough", _raise(BrokenPipeError()))
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert main(["explain"]) == 0
    assert stderr.closed  # so that Python's own flush at exit has nothing to complain into


BUG_IN_A_PROCESS = textwrap.dedent(
    """
    import sys
    import jaxbp.explain
    from jaxbp.cli import main

    def walkthrough(*args, **kwargs):
        raise ValueError("internal: a shape mismatch")

    jaxbp.explain.walkthrough = walkthrough
    sys.exit(main(["explain"]))
    """
)


def test_a_bug_in_a_real_process_shows_its_traceback_and_exits_1():
    result = subprocess.run(
        [sys.executable, "-c", BUG_IN_A_PROCESS],
        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert result.stderr.rstrip().endswith("ValueError: internal: a shape mismatch")
    assert "error:" not in result.stderr


# ---------------------------------------------------------------------------------------------
# The import graph of jaxbp.cli


def _cli_imports() -> dict[str, set[str]]:
    """Each module of jaxbp/cli and those of jaxbp/cli it imports, at the top or in a function
    ("__init__": jaxbp.cli itself, which imports each verb by name, with importlib)."""
    modules = {path.stem: path for path in Path(jaxbp.cli.__file__).parent.glob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module == "jaxbp.cli":
                imported |= {f"jaxbp.cli.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
        heads = {
            target.removeprefix("jaxbp.cli").lstrip(".").split(".")[0]
            for target in imported
            if target == "jaxbp.cli" or target.startswith("jaxbp.cli.")
        }
        graph[name] = {head if head in modules else "__init__" for head in heads} - {name}
    graph["__init__"] |= set(VERBS)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of `graph`, the modules along it; [] if there is none."""
    done, path = set(), []

    def visit(node):
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return []
        path.append(node)
        for child in sorted(graph.get(node, ())):
            if found := visit(child):
                return found
        path.pop()
        done.add(node)
        return []

    for start in sorted(graph):
        if found := visit(start):
            return found
    return []


def test_the_cli_modules_import_one_another_without_a_cycle():
    graph = _cli_imports()
    assert {"_run_folder", "_train_options"} <= graph["_train_run"]  # it sees top-level imports
    assert "_train_run" in graph["train"]  # ... and those inside a function
    assert graph["_common"] == set(), "the shared pieces import nothing from jaxbp.cli"
    assert _cycle(graph) == [], " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
