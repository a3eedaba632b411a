"""Draw names from a character model that `jaxbp train --model gpt` (or lstm) trained.

Reads RUN_DIR/config.json to rebuild the network and RUN_DIR/checkpoint.npz for its parameters,
then draws --count names, one character at a time from softmax(logits / --temperature), each
until its end character ".". The same --seed gives the same names. Below 1, --temperature
sharpens the distribution (more common spellings), above 1 flattens it (stranger ones).

examples:
  jaxbp train --model gpt --out runs/gpt
  jaxbp sample runs/gpt
  jaxbp sample runs/gpt --count 20 --temperature 0.7 --seed 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxbp.cli._common import number

HELP = "draw names from a character model trained by `jaxbp train --model gpt` (or lstm)"


def configure(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("run_dir", type=Path, metavar="RUN_DIR", help="a folder `jaxbp train --model gpt` wrote")
    add("--count", type=number(int), default=10, help="how many names (default 10)")
    add(
        "--temperature",
        type=number(float),
        default=1.0,
        help="divides the logits; > 0 (default 1: the model's own distribution)",
    )
    add("--seed", type=int, default=0, help="seeds the draws (default 0)")
    add("--max-length", type=number(int), default=32, help="cut a name at this many characters")


def run(args: argparse.Namespace) -> int:
    from jaxbp.cli._sequence import load_run, sample

    model, params, config = load_run(args.run_dir)
    for name in sample(model, params, config, args):
        print(name)
    return 0
