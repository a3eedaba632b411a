"""The bundled surnames as character streams: the vocabulary, and windows for next-char models.

Why a module: `datasets.load("names")`, the baselines in `jaxbp.charlm` and `jaxbp sample` must
agree on one vocabulary and one way of cutting a split into examples.

A split is one stream of ids, "." + "name1." + "name2." + ..., in the order of its file (shuffled
once by scripts/build_names.py). Windows of context + 1 ids start every `context` ids; x is a
window's first `context` ids and y its last `context`, so each y[i, t] is the character after
x[i, t] and every character of the split is predicted exactly once, except the last
(N mod context) of its N, which fill no whole window. "." counts as a character (makemore's
convention): the mean cross-entropy over y is nats per character, end of name included.
"""

from __future__ import annotations

import dataclasses
import functools
from importlib import resources

import numpy as np

SPLITS = ("train", "validation", "test")
END = "."  # separates names: the first id of every stream, and the last character of each name
DEFAULT_CONTEXT = 32  # ~4 names at 6.6 letters + "." each


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Characters <-> integer ids: id i is chars[i]; id 0 is END, "."."""

    chars: str

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """int32 ids of `text`, shape (len(text),); a character outside the vocabulary raises."""
        index = {c: i for i, c in enumerate(self.chars)}
        unknown = sorted(set(text) - set(index))
        if unknown:
            raise ValueError(f"characters not in the vocabulary {self.chars!r}: {unknown}")
        return np.array([index[c] for c in text], np.int32)

    def decode(self, ids) -> str:
        """The characters of integer ids (any shape, read in order); an id out of range raises."""
        flat = np.asarray(ids).ravel()
        if flat.size and (flat.min() < 0 or flat.max() >= self.size):
            raise ValueError(f"ids must lie in 0..{self.size - 1}, got {flat.min()}..{flat.max()}")
        return "".join(self.chars[i] for i in flat.tolist())


def read(split: str) -> list[str]:
    """The names of one split, in stream order."""
    if split not in SPLITS:
        raise ValueError(f"names: split must be one of {', '.join(SPLITS)}, got {split!r}")
    ref = resources.files("jaxbp").joinpath(f"data/names_{split}.txt")
    return ref.read_text(encoding="ascii").split()


@functools.cache
def vocabulary() -> Vocabulary:
    """END, then every letter of the training names, sorted: ".abc...z", 27 characters."""
    return Vocabulary(END + "".join(sorted(set("".join(read("train"))))))


def stream(split: str) -> np.ndarray:
    """int32 ids of "." + "name1." + "name2." + ... for one split."""
    return vocabulary().encode(END + "".join(name + END for name in read(split)))


def windows(ids: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """x, y: (n, context) int32, n = (len(ids) - 1) // context; y is x shifted by one."""
    _check_context(context)
    n = (len(ids) - 1) // context
    if n < 1:
        raise ValueError(f"names: context {context} is longer than the stream ({len(ids)} ids)")
    starts = np.arange(n)[:, None] * context + np.arange(context + 1)
    cut = ids[starts]
    return cut[:, :-1], cut[:, 1:]


def load(*, split: str = "validation", context: int = DEFAULT_CONTEXT):
    """((x_train, y_train), (x_eval, y_eval)): windows of the train split and of `split`
    ("validation" by default, or "test")."""
    if split not in SPLITS[1:]:
        raise ValueError(f"names: split must be 'validation' or 'test', got {split!r}")
    return windows(stream("train"), context), windows(stream(split), context)


def _check_context(context) -> None:
    if not isinstance(context, (int, np.integer)) or isinstance(context, bool):
        raise TypeError(f"names: context must be an int, got {context!r}")
    if context < 1:
        raise ValueError(f"names: context must be positive, got {context}")
