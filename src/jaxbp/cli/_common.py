"""What every verb shares: the error that means bad input, `bad_input` to raise it, and `number`.
A leaf: it imports nothing from jaxbp.cli, so every verb and helper may import it.

The policy: bad arguments and bad input (a flag's value, the user's data file, module, run folder
or output folder) reach main as UsageError, which prints one line and exits 2. A verb raises it,
or turns the library's refusal of the user's input into it with `bad_input`, at the one call that
hands that input over. Anything else is a bug of jaxbp: main lets it through, so Python prints its
traceback and exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path

VERBS = ("train", "sample", "check", "explain", "bench")


class UsageError(Exception):
    """A problem with what the user asked for: reported in one line, exit status 2."""


@contextlib.contextmanager
def bad_input(
    what: str | None = None, errors: tuple[type[Exception], ...] = (ValueError, TypeError)
) -> Iterator[None]:
    """Around a call that hands the library the user's `what` (a flag, a file): the `errors` it
    raises are its refusals of that input, reported as a UsageError that begins with `what`."""
    try:
        yield
    except errors as error:
        raise UsageError(f"{what}: {reason(error)}" if what else reason(error)) from error


def reason(error: BaseException) -> str:
    """An exception in one line; an OSError as "path: No such file or directory"."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror if error.filename is None else f"{error.filename}: {error.strerror}"
    if isinstance(error, KeyError) and len(error.args) == 1:  # str() gives only the key's repr
        return f"missing {error.args[0]!r}"
    return " ".join(str(error).split()) or type(error).__name__


def require_writable(folder: Path, what: str) -> None:
    """Make `folder` and write a file in it now: one that cannot be written is refused before the
    work whose results it would hold (`what` names it: "output folder")."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".jaxbp-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UsageError(f"cannot write to {what} {folder}: {error.strerror or error}") from None


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
