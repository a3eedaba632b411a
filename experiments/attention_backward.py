"""Attention's backward: saved probabilities against probabilities recomputed from the log-sum-exp.

SelfAttention's backward needs p = softmax(q k^T / sqrt(d)), a (batch, H, T, T) array per layer.
recompute=False keeps p from the forward pass; recompute=True keeps only lse (batch, H, T) and
rebuilds p = exp(s - lse) from q and k in the backward (flash attention's trade: one more q k^T
for memory that grows as T, not T^2). This script trains nothing: for a GPT at a growing context
T it compiles one SGD step (jaxbp.backprop, then params -= lr grads) in each mode and reports

- the step time of each, measured interleaved (saved, recomputed, saved, ...) after warm-up, and
  the median of the paired ratios recomputed / saved;
- the compiled step's memory from XLA's own accounting (`compiled.memory_analysis()`: temporary
  buffers, the residuals among them) and the residuals' bytes from `jax.eval_shape`;
- that both modes give the same gradient, to float32 rounding.

Usage:
    python experiments/attention_backward.py --out experiments/results/attention_backward [--quick]

Writes results.json (per T and mode: step time, temporary and residual bytes; paired time
ratios; the two modes' largest gradient difference) and attention_backward.png (step time and
memory against T, both modes).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import parse_args, plt, save_figure, write_json

import jaxbp
from jaxbp.layers import gpt

CONTEXTS, QUICK_CONTEXTS = (32, 64, 128, 256, 512), (16, 32)  # T: p's T^2 overtakes the T terms
BATCH, QUICK_BATCH = 8, 4  # small: T = 512 keeps 8 x 4 x 512^2 floats (32 MB) of p per layer
LAYERS, FEATURES, HEADS = 2, 64, 4  # a small GPT: attention's share of the step stays visible
VOCAB = 28  # characters
REPEATS, QUICK_REPEATS = 15, 3  # interleaved timed samples per mode and T; medians reported
MIN_SAMPLE_S = 0.02  # each sample repeats the step until this long: timer noise stays below 1%
LR = 1e-2
SEED = 0
MODES = {"saved": False, "recomputed": True}


def make_step(recompute: bool, T: int):
    """A jitted SGD step with backprop's gradient, and the model and loss it trains."""
    model = gpt(VOCAB, T, num_layers=LAYERS, features=FEATURES, num_heads=HEADS,
                recompute=recompute)  # fmt: skip
    loss = jaxbp.softmax_cross_entropy

    @jax.jit
    def step(params, x, y):
        value, grads = jaxbp.backprop(model, loss, params, x, y)
        return jax.tree.map(lambda p, g: p - LR * g, params, grads), value, grads

    return model, step


def residual_bytes(model, params, x) -> int:
    """Bytes of everything the forward pass keeps for the backward (shapes only, no compute)."""
    residuals = jax.eval_shape(lambda p: model.forward(p, x)[1], params)
    return int(sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(residuals)))


def interleaved(calls: dict, repeats: int) -> dict[str, np.ndarray]:
    """Seconds per call of each, sampled in alternating order after one warm-up call each."""
    for call in calls.values():
        jax.block_until_ready(call())
    inner = {}
    for name, call in calls.items():  # calls per sample, so each lasts about MIN_SAMPLE_S
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        inner[name] = max(1, int(np.ceil(MIN_SAMPLE_S / (time.perf_counter() - t0))))
    samples = {name: [] for name in calls}
    for rep in range(repeats):
        for name in list(calls)[:: 1 if rep % 2 == 0 else -1]:
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                out = calls[name]()
            jax.block_until_ready(out)
            samples[name].append((time.perf_counter() - t0) / inner[name])
    return {name: np.asarray(s) for name, s in samples.items()}


def measure(T: int, batch: int, repeats: int) -> dict:
    kp, kx, ky = jax.random.split(jax.random.PRNGKey(SEED), 3)
    x = jax.random.randint(kx, (batch, T), 0, VOCAB)
    y = jax.random.randint(ky, (batch, T), 0, VOCAB)
    row, calls, grads = {}, {}, {}
    for name, recompute in MODES.items():
        model, step = make_step(recompute, T)
        _, params = model.init(kp, (T,))
        memory = step.lower(params, x, y).compile().memory_analysis()
        grads[name] = step(params, x, y)[2]
        calls[name] = lambda step=step, params=params: step(params, x, y)[1]
        row[name] = {
            "temp_bytes": int(memory.temp_size_in_bytes),
            "output_bytes": int(memory.output_size_in_bytes),
            "residual_bytes": residual_bytes(model, params, x),
        }
    times = interleaved(calls, repeats)
    for name in MODES:
        row[name]["step_s"] = float(np.median(times[name]))
    row["time_ratio_recomputed_over_saved"] = float(np.median(times["recomputed"] / times["saved"]))
    diffs = [
        float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
        for a, b in zip(jax.tree.leaves(grads["recomputed"]), jax.tree.leaves(grads["saved"]))
    ]
    row["max_rel_grad_diff"] = max(diffs)
    return row


def plot(results: dict, out) -> None:
    T = results["contexts"]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for name, marker, color in (("saved", "o", "C0"), ("recomputed", "s", "C1")):
        rows = [results["by_context"][str(t)][name] for t in T]
        style = {"marker": marker, "color": color}
        ax_t.plot(T, [1e3 * r["step_s"] for r in rows], **style, label=f"p {name}")
        ax_m.plot(T, [r["temp_bytes"] / 2**20 for r in rows], **style,
                  label=f"p {name}: XLA temp buffers")  # fmt: skip
        ax_m.plot(T, [r["residual_bytes"] / 2**20 for r in rows], **style, ls="--",
                  label=f"p {name}: residuals")  # fmt: skip
    for ax, what in ((ax_t, "SGD step time (ms)"), (ax_m, "memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context T")
        ax.set_ylabel(what)
        ax.legend(fontsize=8)
    ax_t.set_title(f"GPT {LAYERS} layers, {FEATURES} features, batch {results['batch']}")
    ax_m.set_title("compiled memory of the step")
    save_figure(fig, out, "attention_backward.png")


def main() -> None:
    args = parse_args(__doc__)
    contexts = QUICK_CONTEXTS if args.quick else CONTEXTS
    batch = QUICK_BATCH if args.quick else BATCH
    repeats = QUICK_REPEATS if args.quick else REPEATS
    results = {
        "contexts": list(contexts), "batch": batch, "layers": LAYERS, "features": FEATURES,
        "heads": HEADS, "backend": jax.default_backend(), "by_context": {},
    }  # fmt: skip
    for T in contexts:
        row = measure(T, batch, repeats)
        results["by_context"][str(T)] = row
        mib = {m: {k: row[m][k] / 2**20 for k in ("temp_bytes", "residual_bytes")} for m in MODES}
        print(
            f"T={T}: step saved {1e3 * row['saved']['step_s']:.2f} ms, recomputed "
            f"{1e3 * row['recomputed']['step_s']:.2f} ms (ratio "
            f"{row['time_ratio_recomputed_over_saved']:.3f}); temp "
            f"{mib['saved']['temp_bytes']:.1f} / {mib['recomputed']['temp_bytes']:.1f} MiB; "
            f"residuals {mib['saved']['residual_bytes']:.1f} / "
            f"{mib['recomputed']['residual_bytes']:.1f} MiB",
            flush=True,
        )
    write_json(args.out, "results.json", results)
    plot(results, args.out)
    print(f"wrote {args.out}/results.json and attention_backward.png")


if __name__ == "__main__":
    main()
