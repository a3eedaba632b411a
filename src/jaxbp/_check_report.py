"""What `jaxbp.check` hands back: one row per leaf, a readable table, a JSON form, an assertion."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

__all__ = ["Tolerances", "Row", "CheckReport", "TOLERANCES", "summary_table", "jsonable"]

# The three references, in column order: name in the table, and what each column measures.
COLUMNS = {
    "vjp": "||hand - jax.vjp|| / ||jax.vjp||, over the leaf",
    "fd": "central differences of <ct, f> along random directions u: error / (|u| |grad|)",
    "dot": "<J u, ct> by jax.jvp against <u, J^T ct> by the hand rule, error / (|u| |grad|)",
}


class Tolerances(NamedTuple):
    """Largest relative error each reference accepts."""

    vjp: float
    fd: float
    dot: float


# The reasons for each number are in the docstring of jaxbp.check.
TOLERANCES = {
    "float64": Tolerances(vjp=1e-10, fd=1e-6, dot=1e-10),
    "float32": Tolerances(vjp=1e-4, fd=1e-4, dot=1e-4),
}
"""The default tolerances by dtype: a row passes when each error is at or below its bound."""


@dataclasses.dataclass(frozen=True)
class Row:
    """One parameter leaf or input: its errors against each reference, or what is wrong with it."""

    name: str
    shape: tuple[int, ...] | None
    dtype: str | None
    errors: dict[str, float | None]
    problem: str | None = None

    def failures(self, tol: Tolerances) -> list[str]:
        bad = [k for k, e in self.errors.items() if e is not None and not e <= getattr(tol, k)]
        return (["structure"] if self.problem else []) + bad


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """The verdict of one check: `ok`, a table (`str`), `to_dict`/`to_json`, `raise_if_failed`."""

    title: str
    dtype: str
    tolerances: Tolerances
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()  # what failed outside the rows
    legend: tuple[str, ...] = ()  # how rows were drawn, printed under the table: never a failure

    @property
    def ok(self) -> bool:
        return not self.notes and not any(row.failures(self.tolerances) for row in self.rows)

    def __bool__(self) -> bool:
        return self.ok

    def worst(self) -> dict[str, float | None]:
        """Largest error in each column, over the rows (None where no row has a number)."""
        out = {}
        for col in COLUMNS:
            values = [r.errors[col] for r in self.rows if r.errors.get(col) is not None]
            out[col] = max(values, key=lambda v: math.inf if v != v else v) if values else None
        return out

    def __str__(self) -> str:
        status = "ok" if self.ok else "FAILED"
        tol = ", ".join(f"{k} <= {v:.0e}" for k, v in self.tolerances._asdict().items())
        head = ["leaf", "shape", "dtype", "vjp err", "fd err", "dot err", ""]
        body = [_cells(row, self.tolerances) for row in self.rows]
        lines = [f"{self.title} [{self.dtype}]: {status}", *_table([head, *body])]
        lines += [f"  {line}" for line in self.legend]
        lines += [f"  ! {note}" for note in self.notes]
        lines.append(f"  tolerances: {tol}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "ok": self.ok,
            "dtype": self.dtype,
            "tolerances": self.tolerances._asdict(),
            "columns": COLUMNS,
            "rows": [
                {**dataclasses.asdict(r), "ok": not r.failures(self.tolerances)} for r in self.rows
            ],
            "notes": list(self.notes),
            "legend": list(self.legend),
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(jsonable(self.to_dict()), **kwargs)

    def raise_if_failed(self) -> CheckReport:
        """Raise AssertionError carrying the table when the check failed; else return self."""
        if not self.ok:
            raise AssertionError("\n" + str(self))
        return self

    assert_ok = raise_if_failed


def _cells(row: Row, tol: Tolerances) -> list[str]:
    bad = row.failures(tol)
    shape = "" if row.shape is None else str(tuple(row.shape))
    errs = [_fmt(row.errors.get(k), k in bad) for k in COLUMNS]
    verdict = f"FAIL: {row.problem}" if row.problem else ("FAIL" if bad else "ok")
    return [row.name, shape, row.dtype or "", *errs, verdict]


def _fmt(value: float | None, bad: bool) -> str:
    text = "-" if value is None else f"{value:.1e}"
    return text + (" !" if bad else "")


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def jsonable(tree: Any) -> Any:
    """The tree with NaN and infinities as strings (JSON has neither) and tuples as lists."""
    if isinstance(tree, dict):
        return {k: jsonable(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [jsonable(v) for v in tree]
    if isinstance(tree, float) and not math.isfinite(tree):
        return str(tree)
    return tree


_WIDTH = 64  # of a title in the summary; the full title heads the report's own table


def summary_table(reports: Sequence[CheckReport]) -> str:
    """One line per report: its title, its worst error against each reference, and its verdict."""
    head = ["check", "vjp err", "fd err", "dot err", ""]
    body = []
    for rep in reports:
        worst = rep.worst()
        bad = {k for r in rep.rows for k in r.failures(rep.tolerances)}
        title = rep.title if len(rep.title) <= _WIDTH else rep.title[: _WIDTH - 3] + "..."
        body.append([title, *(_fmt(worst[k], k in bad) for k in COLUMNS)])
        body[-1].append("ok" if rep.ok else "FAIL")
    return "\n".join(_table([head, *body]))
