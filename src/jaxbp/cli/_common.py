"""What every verb shares: the names of the verbs, the error that means bad input, and `number`.
A leaf: it imports nothing from jaxbp.cli, so every verb and helper may import it."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

VERBS = ("train", "sample", "check", "explain", "bench")


class UsageError(Exception):
    """A problem with what the user asked for: reported in one line, exit status 2."""


def number(kind: type, *, zero: bool = False, negative: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite `kind` (int or float), positive unless `zero` or `negative`
    allow those."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text}")
        if not negative and (value < 0 or (value == 0 and not zero)):
            bound = ">= 0" if zero else "positive"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse
