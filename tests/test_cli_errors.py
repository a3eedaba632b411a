"""The CLI's error policy: the cli modules import one another without a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import jaxbp.cli
from jaxbp.cli import VERBS

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
