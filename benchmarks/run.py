"""Run the full benchmark: the same as `jaxbp bench`, with the same options.

usage: python benchmarks/run.py [--quick] [--configs seed digits wide deep cnn resnet]
                                [--out DIR] [--overwrite]

It writes results.json and results.md to --out (default runs/bench, git-ignored) and never
replaces results already there without --overwrite. To refresh the committed results, ask:
    python benchmarks/run.py --out benchmarks/results --overwrite
For a NumPy peer at full speed, run it with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (some
machines set them to dodge old OpenBLAS bugs; they slow numpy):
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/run.py --out DIR
"""

import sys

from jaxbp.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
