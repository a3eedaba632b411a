"""Run the full benchmark and write benchmarks/results/{results.json,results.md}.

usage: python benchmarks/run.py [--quick] [--configs seed digits wide deep] [--out DIR]

The same as `jaxbp bench`. For a NumPy peer at full speed, run it with OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE unset (some machines set them to dodge old OpenBLAS bugs; they slow numpy):
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/run.py
"""

import sys

from jaxbp.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
