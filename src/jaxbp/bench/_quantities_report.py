"""The quantity benchmark's results as Markdown: one table per group, and the issue's goals."""

from __future__ import annotations

from jaxbp.bench._report import _header, _t

TITLES = {
    "first_order": "First-order quantities (base: the backprop gradient; torch: a plain backward)",
    "curvature": "Curvature (base: the backprop gradient; torch: a plain backward)",
    "dp": "DP-SGD steps, optax/torch SGD, and the clipped sum alone (base: a plain SGD step in "
    "each framework; jax-privacy's: jaxbp's optax step)",
}


def _ratio(r: dict | None) -> str:
    """Median [95% confidence interval] of a paired ratio."""
    if not r:
        return ""
    return f"{r['median']:.2f} [{r['ci95_low']:.2f}-{r['ci95_high']:.2f}]"


def _mb(n: int | None) -> str:
    if n is None or n < 0:
        return ""
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.1f} kB"


def _cells(entry: dict, memory: dict, name: str, over_jaxbp: bool) -> list[str]:
    if "missing" in entry:
        return [entry["missing"], "", ""] + ([""] if over_jaxbp else [])
    cells = [_t(entry["s"]), _ratio(entry.get("over_base")) or "1"]
    cells += [_ratio(entry.get("over_jaxbp"))] if over_jaxbp else []
    return cells + [_mb(memory.get(name))]


def summarize(group: dict) -> str:
    """One progress line: each quantity's time over its base, peers' over jaxbp's."""
    parts = []
    for row in group["rows"][1:]:
        over = row.get("over_base")
        text = f"{row['quantity']} {over['median']:.2f}x" if over else f"{row['quantity']} n/a"
        peers = [
            f"{p} {e['over_jaxbp']['median']:.1f}x" for p, e in row["peers"].items()
            if "over_jaxbp" in e
        ]  # fmt: skip
        parts.append(text + (f" ({', '.join(peers)})" if peers else ""))
    return "; ".join(parts)


def table(group: str, configs: dict) -> str:
    lines = [
        f"**{TITLES[group]}**",
        "",
        _header(
            "config",
            "quantity",
            "jaxbp",
            "/ base",
            "memory",
            "vmap(jax.grad) reference",
            "time",
            "/ base",
            "ref / jaxbp",
            "memory",
            "peer",
            "time",
            "/ its base",
            "peer / jaxbp",
            "memory",
        ),  # fmt: skip
    ]
    for name, result in configs.items():
        g = result["groups"].get(group)
        if g is None:
            continue
        memory = g["memory_bytes"]
        for row in g["rows"]:
            q = row["quantity"]
            ref = row.get("reference")
            ref_cells = [ref["name"], *_cells(ref, memory, ref["name"], True)] if ref else [""] * 5
            peers = list(row["peers"].items()) or [(None, None)]
            for i, (peer, entry) in enumerate(peers):
                first = [name, q, *_cells(row, memory, q, False), *ref_cells] if i == 0 else (
                    [name, q] + [""] * 8
                )  # fmt: skip
                peer_cells = [peer, *_cells(entry, memory, peer, True)] if peer else [""] * 5
                lines.append("| " + " | ".join(first + peer_cells) + " |")
    return "\n".join(lines)


def goals(configs: dict) -> list[str]:
    """The issue's targets, each with the measured median and its interval."""
    out = []
    for name, result in configs.items():
        rows = {r["quantity"]: r for g in result["groups"].values() for r in g["rows"]}
        dp, clip = rows.get("dp_sgd step", {}), rows.get("dp clip step", {})
        norms = rows.get("per_example_norms", {})
        checks = [
            ("per_example_norms <= 1.1x backprop", norms.get("over_base"), 1.1, "<="),
            ("clipping + norms step <= 1.1x SGD step", clip.get("over_base"), 1.1, "<="),
            ("DP-SGD step, noise included, <= 1.3x SGD step", dp.get("over_base"), 1.3, "<="),
        ]
        if name == "wide":
            for q in ("per_example_norms", "dp_sgd step"):
                ref = rows.get(q, {}).get("reference", {})
                checks.append((f"vmap(jax.grad) / {q} >= 10", ref.get("over_jaxbp"), 10, ">="))
            peer = rows.get("clipped sum", {}).get("peers", {}).get("jax-privacy clipped_grad", {})
            text = "jax-privacy clipped_grad / clipped sum >= 10"
            checks.append((text, peer.get("over_jaxbp"), 10, ">="))
        for q, row in rows.items():
            for peer, entry in row.get("peers", {}).items():
                if q not in ("backprop", "sgd step"):
                    checks.append((f"{peer} / {q} > 1", entry.get("over_jaxbp"), 1.0, ">"))
        for text, r, target, op in checks:
            out.append(f"- {name}: {text}: {_verdict(r, target, op)}")
        if "noise_share" in dp:
            out.append(f"- {name}: the noise's share of the DP-SGD step: {dp['noise_share']:.1%}")
    return out


def _jax_privacy_settings() -> str:
    from jaxbp.bench import jax_privacy_peer as jp

    sizes = ", ".join(f"{k} {v or 'none (one vmap)'}" for k, v in jp.MICROBATCH_SIZES.items())
    return (
        "jax-privacy 2.0's `clipped_grad`, jitted, at the microbatch size that timed fastest on "
        f"each config ({sizes}), nan_safe={jp.NAN_SAFE} (jaxbp does not sanitise NaNs either); "
        "its DP step: `CyclicPoissonSampling` of expected size the batch from "
        f"{jp.POOL} x batch examples, truncated and padded to the batch "
        "(`split_and_pad_global_batch`, padding rows flagged `is_padding_example`), "
        "`gaussian_privatizer` noise, optax SGD; the draws made before timing. Why: "
        "`jaxbp/bench/jax_privacy_peer.py`."
    )


def _verdict(r: dict | None, target: float, op: str) -> str:
    if not r:
        return "not measured"
    m = r["median"]
    met = m <= target if op == "<=" else (m >= target if op == ">=" else m > target)
    return f"{'met' if met else 'NOT met'} ({_ratio(r)})"


def to_markdown(results: dict) -> str:
    env = results["environment"]
    lines = [
        f"Machine: {env['cpus']} CPU cores ({env['machine']}, {env['device']}), "
        f"jax {env['jax']}, torch {env['torch'] or 'not installed'}; {env['date']}"
        f"{' (quick run)' if results['quick'] else ''}. Ratios: median [95% confidence "
        "interval] of paired samples, every candidate of a table's config interleaved in one "
        "run in rotating order, so the noise of a shared machine hits them alike. Memory: jax, "
        "the compiled program's temp + output bytes; torch, the peak of the CPU allocator's "
        "running total during one call (torch.profiler, profile_memory=True).",
    ]
    for rerun in results.get("reruns", []):  # groups measured again later, merged in
        env = rerun["environment"]
        lines[0] += (
            f" The {', '.join(rerun['groups'])} group of {', '.join(rerun['configs'])}: a later "
            f"run, `{rerun['command']}`, jax {env['jax']}, torch {env['torch'] or 'not installed'}"
            f"; {env['date']}{'; ' + rerun['note'] if rerun.get('note') else ''}."
        )
    for group in TITLES:
        lines += ["", table(group, results["configs"])]
        if group == "dp":
            lines += ["", _jax_privacy_settings()]
    lines += ["", "**Goals**", "", *goals(results["configs"])]
    return "\n".join(lines)
