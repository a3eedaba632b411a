"""GPT-2 124M's speed levers, each timed against what jaxbp does.

Paired and interleaved in one process; prints medians and paired ratios (< 1: faster).

    python benchmarks/gpt2_levers.py head      # the head's three products, vocab 50,257 and 50,304
    python benchmarks/gpt2_levers.py adamw     # optax.adamw against one fused pass per leaf
    python benchmarks/gpt2_levers.py layouts   # weight-gradient layouts, in the whole step
    python benchmarks/gpt2_levers.py gelu      # Gelu's backward with and without its barrier

Each takes one to three minutes on 2 cores; --reps sets the samples per candidate.
"""

from __future__ import annotations

import argparse
import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxbp.bench._timing import interleaved, ratio
from jaxbp.bench.gpt2 import ADAMW, CONFIGS
from jaxbp.train import make_step

N, C = 256, 768  # the gpt2 config's tokens (4 x 64) and features


def report(t: dict, base: str) -> None:
    for name, v in t.items():
        r = ratio(v, t[base])
        print(
            f"  {name:34s} {np.median(v) * 1e3:8.1f} ms   / {base}: {r['median']:.3f} "
            f"[{r['ci95_low']:.3f}-{r['ci95_high']:.3f}]"
        )


def head(reps: int) -> None:
    """The tied head's products at vocab 50,257 and at llm.c's padded 50,304, all in one
    rotation: the logits x @ table^T, dx = dlogits @ table, and the table's gradient
    dlogits^T x (which jaxbp's step computes straight into the table's layout, XLA folding
    Tied's transpose into the product), with two other layouts of it."""
    products = {
        "logits x @ table^T": lambda x, d, t: x @ t.T,
        "dx = dlogits @ table": lambda x, d, t: d @ t,
        "dtable += dlogits^T x": lambda x, d, t: t + d.T @ x,
        "dtable += (copy(x^T) dlogits)^T": lambda x, d, t: (
            t + (lax.optimization_barrier(x.T) @ d).T
        ),
        "dtable += copy(dlogits^T) x": lambda x, d, t: t + lax.optimization_barrier(d.T) @ x,
    }
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    calls = {}
    for vocab in (50257, 50304):
        x, table = jax.random.normal(k[0], (N, C)), jax.random.normal(k[2], (vocab, C))
        d = jax.random.normal(k[1], (N, vocab))
        for name, f in products.items():
            calls[f"{vocab}: {name}"] = functools.partial(jax.jit(f), x, d, table)
    a, b = (jax.random.normal(k[i], (2048, 2048)) for i in (0, 1))
    calls["bare 2048^3 matmul"] = functools.partial(jax.jit(lambda a, b: a @ b), a, b)
    t = interleaved(calls, reps=reps, warmup=2)
    peak = 2 * 2048**3 / np.median(t["bare 2048^3 matmul"])
    flops = 2 * N * C * 50257
    print(f"each product {flops / 1e9:.1f} GFLOP: {flops / peak * 1e3:.0f} ms at the bare "
          f"matmul's {peak / 1e9:.0f} GFLOP/s")  # fmt: skip
    report(t, "50257: logits x @ table^T")
    print("padded over unpadded, product by product (paired):")
    for name in products:
        r = ratio(t[f"50304: {name}"], t[f"50257: {name}"])
        print(f"  {name:34s} {r['median']:.3f} [{r['ci95_low']:.3f}-{r['ci95_high']:.3f}]")


def adamw(reps: int) -> None:
    """optax.adamw (jaxbp's step) against one fused pass per leaf (m, v and p from one
    expression), on 124M params, both donated."""
    _, _, params, _, _, _ = CONFIGS["gpt2"].problem()
    grads = jax.tree.map(lambda p: 0.01 * p + 1e-3, params)
    opt = optax.adamw(**ADAMW)
    lr, b1, b2, eps, wd = (ADAMW[k] for k in ("learning_rate", "b1", "b2", "eps", "weight_decay"))

    def optax_step(p, s, g):
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s

    def fused_step(p, s, g):
        count, m, v = s
        count = count + 1
        c1, c2 = (1 - b ** count.astype(jnp.float32) for b in (b1, b2))
        out = []
        for pi, mi, vi, gi in zip(*(jax.tree.leaves(t) for t in (p, m, v, g))):
            mi = b1 * mi + (1 - b1) * gi
            vi = b2 * vi + (1 - b2) * gi * gi
            out.append((pi - lr * ((mi / c1) / (jnp.sqrt(vi / c2) + eps) + wd * pi), mi, vi))
        tree = jax.tree.structure(p)
        p, m, v = (jax.tree.unflatten(tree, [o[i] for o in out]) for i in range(3))
        return p, (count, m, v)

    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731 - donation consumes buffers
    zeros = jax.tree.map(jnp.zeros_like, params)
    states = {
        "optax.adamw": [jax.jit(optax_step, donate_argnums=(0, 1)), copy(params),
                        opt.init(params)],
        "fused pass": [jax.jit(fused_step, donate_argnums=(0, 1)), copy(params),
                       (jnp.zeros([], jnp.int32), zeros, copy(zeros))],
    }  # fmt: skip

    def call(entry):
        entry[1], entry[2] = entry[0](entry[1], entry[2], grads)
        return entry[1][0]["table"]

    t = interleaved({n: (lambda e=e: call(e)) for n, e in states.items()}, reps=reps, warmup=2)
    report(t, "optax.adamw")


def _steps(patches: dict) -> dict:
    """The gpt2 config's backprop AdamW step, compiled once under each patch (a context)."""
    config = CONFIGS["gpt2"]
    model, loss, params, _, x, y = config.problem()
    opt = optax.adamw(**ADAMW)
    fns = {}
    for name, patch in patches.items():
        with patch():
            step = make_step(model, loss, opt, "backprop")
            state = [jax.tree.map(jnp.copy, params), opt.init(params)]
            compiled = step.lower(*state, x, y).compile()

        def call(c=compiled, s=state):
            s[0], s[1], value = c(s[0], s[1], x, y)
            return value

        fns[name] = call
    return fns


def _patched(obj, name, value):
    @contextlib.contextmanager
    def patch():
        old = getattr(obj, name)
        setattr(obj, name, value)
        try:
            yield
        finally:
            setattr(obj, name, old)

    return patch


def layouts(reps: int) -> None:
    """jaxbp's weight-gradient layouts (_matmul.cpu_layout) against always copying x^T
    ("large") and against x^T dy as written ("plain"), in the whole step."""
    import jaxbp._matmul as M

    def large(b, i, o):
        small = o <= M.NARROW and b * i >= M.NARROW_MIN_ROWS_X_IN
        return "narrow" if small else "plain" if b * i * o < M.LARGE else "large"

    def plain(b, i, o):
        return "narrow" if o <= M.NARROW and b * i >= M.NARROW_MIN_ROWS_X_IN else "plain"

    fns = _steps({"jaxbp's layouts": contextlib.nullcontext,
                  "large products: copy x^T": _patched(M, "cpu_layout", large),
                  "x^T dy as written": _patched(M, "cpu_layout", plain)})  # fmt: skip
    report(interleaved(fns, reps=reps, warmup=2), "jaxbp's layouts")


def gelu(reps: int) -> None:
    """Gelu's backward behind its barrier (jaxbp) against the shared-tanh form, in the step."""
    from jaxbp.layers import activations

    shared = activations._Elementwise.backward
    fns = _steps({"barrier (jaxbp)": contextlib.nullcontext,
                  "tanh shared with the forward": _patched(activations.Gelu, "backward",
                                                           shared)})  # fmt: skip
    report(interleaved(fns, reps=reps, warmup=2), "barrier (jaxbp)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lever", choices=("head", "adamw", "layouts", "gelu"))
    parser.add_argument("--reps", type=int, default=12, help="samples per candidate")
    args = parser.parse_args()
    {"head": head, "adamw": adamw, "layouts": layouts, "gelu": gelu}[args.lever](args.reps)


if __name__ == "__main__":
    main()
