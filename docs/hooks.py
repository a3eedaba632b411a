"""mkdocs hooks: the committed experiment write-up and figures become part of the site.

`experiments/README.md` is the Experiments page (at experiments/, so its relative links to
`results/...` and to each script resolve), and every PNG under `experiments/results/` and
`benchmarks/results/` is copied in at the same path, so pages link the committed files themselves
instead of copies that could drift from them.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
# (the repository's file or folder, the glob under it, the path it takes in the site)
EXTRA = [
    ("experiments/README.md", None, "experiments/index.md"),
    ("experiments", "*.py", "experiments"),
    ("experiments/results", "**/*.png", "experiments/results"),
    ("benchmarks/results", "**/*.png", "benchmarks/results"),
]


def on_files(files: Files, config) -> Files:
    for source, pattern, target in EXTRA:
        found = [ROOT / source] if pattern is None else sorted((ROOT / source).glob(pattern))
        for path in found:
            uri = target if pattern is None else f"{target}/{path.relative_to(ROOT / source)}"
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
