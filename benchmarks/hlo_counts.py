"""Count what XLA compiles the gradient of each convolutional config into, per engine.

    python benchmarks/hlo_counts.py [--configs cnn resnet]

For backprop and jax.grad (jaxbp.autodiff), jitted as `jaxbp bench` times them: the convolutions
in the optimized HLO (each with its operand shapes, window and dimension numbers, so that two
programs with the same multiset of convolutions print the same fingerprint) and the fusions.
Counts depend on XLA's version and the machine's backend; the command prints what this one does.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import re

import jax

from jaxbp.bench.vision import CONFIGS, gradient_fn

CONVOLUTION = re.compile(r"= (\S+) convolution\(([^)]*)\), (.*)$")


def _counts(hlo: str) -> tuple[collections.Counter, int]:
    """The multiset of convolutions (result type, operand types, window and dimension numbers;
    operand names and metadata left out) and the number of fusion instructions."""
    convolutions = collections.Counter()
    fusions = 0
    for line in hlo.splitlines():
        if " fusion(" in line and "=" in line:
            fusions += 1
        found = CONVOLUTION.search(line.split(", metadata=")[0])
        if found:
            operands = re.sub(r"%\S+", "", found[2])
            convolutions[(found[1], operands, found[3])] += 1
    return convolutions, fusions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["cnn", "resnet"], choices=list(CONFIGS))
    args = parser.parse_args()
    for name in args.configs:
        model, loss, params, state, x, y = CONFIGS[name].problem()
        seen = {}
        for grad in ("backprop", "autodiff"):
            compiled = jax.jit(gradient_fn(model, loss, grad)).lower(params, state, x, y).compile()
            seen[grad] = _counts(compiled.as_text())
        for grad, (convolutions, fusions) in seen.items():
            digest = hashlib.sha256(repr(sorted(convolutions.items())).encode()).hexdigest()[:12]
            print(
                f"{name} {grad}: {sum(convolutions.values())} convolutions "
                f"(fingerprint {digest}), {fusions} fusions"
            )
        same = seen["backprop"][0] == seen["autodiff"][0]
        print(f"{name}: the same convolutions in both: {'yes' if same else 'no'}")


if __name__ == "__main__":
    main()
