"""jaxbp train (not yet available)."""

HELP = "train (not yet available)"


def configure(parser):
    pass


def run(args):
    raise SystemExit("jaxbp train: not yet available")
