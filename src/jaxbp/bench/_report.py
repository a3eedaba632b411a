"""The benchmark's results as Markdown tables (the JSON holds every number)."""

from __future__ import annotations


def _t(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _r(r: dict) -> str:
    """Median, its 95% confidence interval in brackets, the interquartile range in parentheses."""
    ci = f" [{r['ci95_low']:.3f}-{r['ci95_high']:.3f}]" if "ci95_low" in r else ""
    return f"{r['median']:.3f}{ci} ({r['q25']:.3f}-{r['q75']:.3f})"


def verdict(r: dict, null: dict) -> str:
    """What a ratio a/b says about a: its 95% interval must clear both 1 and the null's interval.

    The null (b against a second compilation of itself) shows how far apart two copies of one
    program land, which the interval of independent samples alone does not cover.
    """
    if r["ci95_high"] < min(1.0, null["ci95_low"]):
        return "faster"
    if r["ci95_low"] > max(1.0, null["ci95_high"]):
        return "slower"
    return "within the null"


def _header(*names: str) -> str:
    return "| " + " | ".join(names) + " |\n|" + " --- |" * len(names)


def summarize(phase: str, r: dict) -> str:
    """One line on one finished measurement, for progress while the benchmark runs."""
    if phase == "gradient":
        g, null = r["ratio"], r["null_ratio"]
        return f"backprop / jax.grad {_r(g)}, {verdict(g, null)}; null {_r(null)}"
    if phase == "step":
        return f"train step backprop / jax.grad {_r(r['ratio'])}"
    if phase == "epoch":
        return (
            f"{_t(r['scan_step_s'])} per step in a compiled epoch; "
            f"NumPy by hand {_t(r['numpy_step_s'])}, NumPy / epoch {_r(r['numpy_over_scan'])}"
        )
    if phase == "peers":
        times = {k.removesuffix("_s"): v for k, v in r.items() if k.endswith("_s")}
        missing = [f"{name} {why}" for name, why in r.get("missing", {}).items()]
        return ", ".join([f"{name} {_t(seconds)}" for name, seconds in times.items()] + missing)
    if phase == "roofline":
        gflops = r["matmul_gflops"]
        return f"{_r(r['fraction_of_roofline'])} of the bare matmuls ({gflops:.1f} GFLOP/s)"
    raise ValueError(f"unknown benchmark phase {phase!r}")


def to_markdown(results: dict) -> str:
    env = results["environment"]
    torch = env["torch"] or "not installed"
    lines = [
        f"Machine: {env['cpus']} CPU cores ({env['machine']}, {env['device']}), "
        f"Python {env['python']}, jax {env['jax']}, jaxlib {env['jaxlib']}, numpy {env['numpy']}, "
        f"torch {torch}; {env['date']}{' (quick run)' if results['quick'] else ''}. "
        "Ratios: median [its 95% confidence interval] (interquartile range) of paired, "
        "interleaved samples; the null column times jax.grad against a second, separately "
        "compiled copy of itself, so it shows how far apart two identical programs land here.",
        "",
        _header(
            "config",
            "backprop grad",
            "jax.grad",
            "backprop / jax.grad",
            "backprop is",
            "null: jax.grad / itself",
            "train step ratio",
            "compile bp / jax.grad",
        ),
    ]
    for name, r in results["configs"].items():
        g, s = r["gradient"], r["step"]
        lines.append(
            f"| {name}: {r['config']} | {_t(g['backprop_s'])} | {_t(g['jax_grad_s'])} | "
            f"{_r(g['ratio'])} | {verdict(g['ratio'], g['null_ratio'])} ({g['samples']} samples) | "
            f"{_r(g['null_ratio'])} | "
            f"{_r(s['ratio'])} | {_t(g['compile_backprop_s'])} / {_t(g['compile_jax_grad_s'])} |"
        )
    mlps = {n: r for n, r in results["configs"].items() if "epoch" in r}
    if mlps:
        lines += [
            "",
            _header(
                "config",
                "jaxbp step in compiled epoch",
                "loop of jitted steps",
                "scan / loop",
                "NumPy by hand",
                "NumPy / epoch step",
                "PyTorch eager",
                "PyTorch / jitted step",
            ),
        ]
        for name, r in mlps.items():
            e, p = r["epoch"], r["peers"]
            torch = (
                f"{_t(p['torch_s'])} | {_r(p['torch_over_jaxbp'])}"
                if "torch_s" in p
                else "n/a | n/a"
            )
            lines.append(
                f"| {name} | {_t(e['scan_step_s'])} | {_t(e['loop_step_s'])} | {_r(e['ratio'])} | "
                f"{_t(e['numpy_step_s'])} | {_r(e['numpy_over_scan'])} | {torch} |"
            )
    convnets = {
        n: r
        for n, r in results["configs"].items()
        if "epoch" not in r and "jax_grad_s" not in r.get("peers", {})
    }
    if convnets:
        lines += ["", _vision_peers(convnets)]
    roof = {n: r["roofline"] for n, r in results["configs"].items() if "roofline" in r}
    if roof:
        lines += [
            "",
            _header(
                "config", "train step", "its bare matmuls", "fraction of roofline", "matmul GFLOP/s"
            ),
        ]
        for name, r in roof.items():
            lines.append(
                f"| {name} | {_t(r['step_s'])} | {_t(r['bare_matmul_s'])} | "
                f"{_r(r['fraction_of_roofline'])} | {r['matmul_gflops']:.1f} |"
            )
    return "\n".join(lines)


def _vision_peers(configs: dict) -> str:
    """The jitted jaxbp step (backprop) against PyTorch eager and torch.compile, same network."""
    lines = [
        _header(
            "config",
            "jaxbp step",
            "PyTorch eager",
            "eager / jaxbp",
            "torch.compile",
            "compiled / jaxbp",
        )  # fmt: skip
    ]
    for name, r in configs.items():
        cells = [
            name,
            _t(r["peers"]["jaxbp_s"]),
            *peer_cells(r["peers"], ("torch", "torch_compile")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def peer_cells(p: dict, peers) -> list[str]:
    """Each peer's time and its ratio to jaxbp, or why it did not run ("n/a" when unsaid)."""
    cells = []
    for peer in peers:
        if f"{peer}_s" in p:
            cells += [_t(p[f"{peer}_s"]), _r(p[f"{peer}_over_jaxbp"])]
        else:
            cells += [p.get("missing", {}).get(peer, "n/a"), "n/a"]
    return cells
