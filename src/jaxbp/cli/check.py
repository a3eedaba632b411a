"""jaxbp check (not yet available)."""

HELP = "check (not yet available)"


def configure(parser):
    pass


def run(args):
    raise SystemExit("jaxbp check: not yet available")
