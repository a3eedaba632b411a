"""The `jaxbp` command: one verb per module in this package, and the error policy they share.

Each verb module defines HELP (one line), `configure(parser)` and `run(args) -> int`.
Bad arguments and bad input exit with status 2 and a one-line message, never a traceback; a bug
inside jaxbp is not dressed as bad input: its traceback shows and the exit status is 1
(see `jaxbp.cli._common`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib import metadata

from jaxbp.cli._common import VERBS, UsageError, number, reason

__all__ = ["VERBS", "UsageError", "build_parser", "main", "number"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage too; one line is the policy
        if self.prog == "jaxbp" and "required: VERB" in message:
            message += f" (one of {', '.join(VERBS)}; see jaxbp --help)"
        self.exit(2, f"{self.prog}: error: {message}\n")


def _version() -> str:
    try:
        return metadata.version("jaxbp")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jaxbp",
        description="Backpropagation by hand in JAX, refereed by jax.grad.",
        epilog="Run `jaxbp VERB --help` for a verb's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"jaxbp {_version()}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    verbs.required = True
    for name in VERBS:
        module = importlib.import_module(f"jaxbp.cli.{name}")
        sub = verbs.add_parser(
            name,
            help=module.HELP.replace("%", "%%"),  # argparse %-formats every help string
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.configure(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # a first-time user typing `jaxbp`: show what there is to do
        parser.print_help(sys.stderr)
        print("\njaxbp: error: give a verb, e.g. `jaxbp train`", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    # Only a UsageError is the user's. An OSError is too where it comes from a path the user
    # named; each verb turns those into UsageError where it reads or writes that path. Any other
    # OSError (a disk that fills mid-run, a file of jaxbp's own) is neither bad input nor to be
    # hidden, so it goes on, with every other exception, to Python: a traceback and exit 1.
    try:
        return int(args.run(args) or 0)
    except UsageError as error:
        print(f"jaxbp {args.verb}: error: {reason(error)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `jaxbp check | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"jaxbp {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
