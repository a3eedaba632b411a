"""jaxbp bench (not yet available)."""

HELP = "bench (not yet available)"


def configure(parser):
    pass


def run(args):
    raise SystemExit("jaxbp bench: not yet available")
