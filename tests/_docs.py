"""The documentation as the tests read it: the README, the site's pages under docs/, and
experiments/README.md (the site's Experiments page). A test of a claim reads the page that makes
it, or all of them when the claim may sit on any (`documentation()`)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
EXPERIMENTS_README = ROOT / "experiments" / "README.md"


def pages() -> list[Path]:
    """Every Markdown page a reader sees: the README, docs/ (not its vendored assets), and the
    experiments' write-up."""
    site = sorted(p for p in DOCS.rglob("*.md") if "assets" not in p.relative_to(DOCS).parts)
    return [README, *site, EXPERIMENTS_README]


def documentation() -> str:
    """All pages' text, one after another."""
    return "\n\n".join(p.read_text() for p in pages())


def flat(text: str) -> str:
    """Text with its line breaks and runs of spaces made single spaces (sentences wrap anywhere)."""
    return " ".join(text.split())
