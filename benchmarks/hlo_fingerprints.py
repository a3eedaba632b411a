"""Fingerprints of the compiled programs the benchmarks time: gradient, step, DP step, norms.

Two checkouts print the same fingerprints exactly when XLA compiled the same programs (optimized
HLO with source locations stripped), so their benchmark ratios carry over without a re-run.
Configs: the MLPs (seed, digits, wide, deep), cnn (BatchNorm's state carried), the small GPT,
tied and untied, and the LSTM; programs: backprop's and jax.grad's gradient, an optax step
(stateless models), and where every layer has per-example rules, a DP-SGD step and the
per-example norms. Usage:

    python benchmarks/hlo_fingerprints.py                                # this checkout
    PYTHONPATH=OTHER_CHECKOUT/src python benchmarks/hlo_fingerprints.py  # another one
"""

from __future__ import annotations

import hashlib
import re

import jax
import optax

import jaxbp
from jaxbp.bench import CONFIGS
from jaxbp.train import make_step

try:
    from jaxbp.bench.mlp import _problem
except ImportError:  # a checkout from before the bench became a package (150eaa1, say)
    from jaxbp.bench import _problem

NAMES = ("seed", "digits", "wide", "deep", "cnn", "gpt", "gpt_tied", "lstm")
PER_EXAMPLE = ("digits", "wide", "gpt", "gpt_tied")  # DP step and norms: the bench's DP configs


def fingerprint(compiled) -> str:
    """The optimized HLO without source locations, which differ between checkouts."""
    text = re.sub(r", metadata=\{[^}]*\}", "", compiled.as_text())
    lines = [line for line in text.splitlines() if not re.match(r'^\d+ ["{]', line)]
    text = re.sub(r",? ?stack_frame_id=\d+", "", "\n".join(lines))
    return hashlib.md5(text.encode()).hexdigest()[:12]


def problem(name: str):
    """(model, loss, params, state or None, x, y) of a bench config."""
    if name == "gpt_tied":
        from jaxbp.bench.sequence import SequenceConfig

        gpt = CONFIGS["gpt"]
        options = (*gpt.options, ("tie_weights", True))
        config = SequenceConfig(name, gpt.builder, options, gpt.context, gpt.batch)
        return config.problem()
    config = CONFIGS[name]
    if hasattr(config, "problem"):
        return config.problem()
    model, loss, params, x, y = _problem(config)[:5]
    return model, loss, params, None, x, y


def programs(name: str) -> dict:
    model, loss, params, state, x, y = problem(name)
    kw = {} if not jax.tree.leaves(state) else {"state": state}
    out = {
        engine: jax.jit(lambda p, e=engine: getattr(jaxbp, e)(model, loss, p, x, y, **kw))
        .lower(params)
        .compile()
        for engine in ("backprop", "autodiff")
    }
    if not kw:
        opt = optax.adam(1e-3)
        out["step"] = make_step(model, loss, opt).lower(params, opt.init(params), x, y).compile()
    if name in PER_EXAMPLE and hasattr(jaxbp, "dp_sgd"):  # older checkouts have neither
        dp, key = jaxbp.dp_sgd(1.0, 1.0, delta=None), jax.random.PRNGKey(0)
        out["dp"] = jax.jit(lambda p: dp(model, loss, p, x, y, key=key)).lower(params).compile()
        norms = jax.jit(lambda p: jaxbp.per_example_norms(model, loss, p, x, y))
        out["norms"] = norms.lower(params).compile()
    return out


def main() -> None:
    for name in NAMES:
        if name.removesuffix("_tied") not in CONFIGS:
            print(f"{name:9} not in this checkout")
            continue
        shown = "  ".join(f"{k} {fingerprint(c)}" for k, c in programs(name).items())
        print(f"{name:9} {shown}")


if __name__ == "__main__":
    main()
