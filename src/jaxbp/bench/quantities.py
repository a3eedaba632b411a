"""Per-example, curvature and DP quantities, timed side by side: jaxbp's hand-written sweeps,
vmap(jax.grad) references, BackPACK and Opacus (torch) and jax-privacy (JAX) on the same network,
when installed.

Three groups, each one interleaved run holding its own bases, so every ratio is paired: the
first-order quantities and the curvature against the backprop gradient (torch: a plain forward
and backward), DP-SGD against a plain SGD step in each framework (jax-privacy's: optax's). The DP
group adds the clipped sum alone, sum_i min(1, C/||g_i||) g_i, against jax-privacy's
`clipped_grad` (settings and batch selection in jax_privacy_peer). Each row gives the quantity's
time as a ratio to its framework's base, the vmap(jax.grad) reference's time over jaxbp's, and
each peer's absolute time over jaxbp's, with peak memory (bytes): jax's compiled temp + output,
torch's peak of its CPU allocator's running total during one call (torch.profiler).
Per-example quantities need independent examples, so `cnn` runs without its BatchNorm. `gpt`
runs when named, without torch peers (a loss at every position); a row whose quantity refuses a
model (a `Tied` head, say) says so instead of failing the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp.backprop import backprop
from jaxbp.bench import _vmap_reference as reference
from jaxbp.bench._quantities_report import summarize, to_markdown
from jaxbp.bench._quantities_rows import (
    BASES,
    CLIP_NORM,
    DEFAULT_CONFIGS,
    GROUPS,
    JACOBIAN_ENTRIES,
    JAX_PEERS,
    LR,
    NOISE_MULTIPLIER,
    ROWS,
    TORCH_BASES,
    Row,
    check,
    jaxbp_function,
    problem,
)
from jaxbp.bench._timing import interleaved, ratio
from jaxbp.bench.mlp import SETTLE_SECONDS, Config
from jaxbp.bench.sequence import SequenceConfig
from jaxbp.bench.vision import VisionConfig

__all__ = ["ROWS", "GROUPS", "DEFAULT_CONFIGS", "Row", "check", "problem", "group_times",
           "run_config", "run", "to_markdown", "jaxbp_function"]  # fmt: skip


def _drop(out) -> None:
    """Wait for out and let it go: a 4 GB result must not stay alive while the next one runs."""
    jax.block_until_ready(out)


def _compiled(f: Callable, *args) -> tuple[Callable, int]:
    """(a zero-argument call of jit(f) on args, its compiled temp + output bytes)."""
    compiled = jax.jit(f).lower(*args).compile()
    return (lambda: _drop(compiled(*args))), _memory(compiled)


def _memory(compiled) -> int:
    stats = compiled.memory_analysis()
    return -1 if stats is None else int(stats.temp_size_in_bytes + stats.output_size_in_bytes)


def _stepped(engine: Callable, model, loss, params, x, y) -> tuple[Callable, int]:
    """An optax SGD step with engine (called with a fresh key each step), carried from call to
    call with its buffers donated: (the call, compiled temp + output bytes)."""
    opt = optax.sgd(LR)

    def step(params, opt_state, key, x, y):
        key, sub = jax.random.split(key)
        value, grads = engine(model, loss, params, x, y, key=sub)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, key, value

    carry = [jax.tree.map(jnp.copy, params), opt.init(params), jax.random.PRNGKey(1)]
    compiled = jax.jit(step, donate_argnums=(0, 1, 2)).lower(*carry, x, y).compile()

    def call():
        carry[0], carry[1], carry[2], value = compiled(*carry, x, y)
        _drop(value)

    return call, _memory(compiled)


def _plain(model, loss, params, x, y, *, key=None):
    return backprop(model, loss, params, x, y)


def jax_candidates(group: str, model, loss, params, x, y) -> tuple[dict, dict, dict]:
    """({name: call}, {name: bytes}, {name: why missing}) for one group: the base, jaxbp's
    quantities and the vmap(jax.grad) references."""
    fns: dict[str, tuple[Callable, int]] = {}
    missing: dict[str, str] = {}
    for name, build in _builders(group, model, loss, params, x, y).items():
        try:
            f = build()
        except NotImplementedError as error:  # gpt's Tied embedding, say: the row says so
            f = f"refused: {str(error)[:100]}"
        if f is None:
            missing[name] = "not in jaxbp.quantities yet"
        elif isinstance(f, str):
            missing[name] = f
        else:
            fns[name] = f
    return {k: v[0] for k, v in fns.items()}, {k: v[1] for k, v in fns.items()}, missing


def _builders(group: str, model, loss, params, x, y) -> dict[str, Callable]:
    """Each candidate's builder, returning (call, bytes) or None when jaxbp lacks it."""
    v = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(2), p.shape, p.dtype), params)
    key = jax.random.PRNGKey(3)
    refs = reference.functions(model, loss)
    ours = partial(_ours, model, loss, params, x, y)
    out: dict[str, Callable] = {}
    if group in ("first_order", "curvature"):
        out["backprop"] = partial(_compiled, partial(backprop, model, loss), params, x, y)
    if group == "first_order":
        for row in (r for r in ROWS if r.group == "first_order"):
            out[row.quantity] = partial(ours, row.quantity)
            out[row.reference] = partial(_compiled, refs[row.reference], params, x, y)
    if group == "curvature":
        out["diag_ggn"] = partial(ours, "diag_ggn")
        entries = len(x) * _outputs(model, params, x) * _size(params)
        if entries <= JACOBIAN_ENTRIES:
            out["jacobians"] = partial(_compiled, refs["jacobians"], params, x, y)
        else:  # wide: 512 x 10 x 1.86M; the row says so
            out["jacobians"] = lambda: f"skipped: {entries:.2g} Jacobian entries per call"
        out["diag_ggn_mc"] = partial(ours, "diag_ggn_mc", key)
        out["kfac_factors"] = partial(ours, "kfac_factors")
        out["kfac_factors_mc"] = partial(ours, "kfac_factors", key=key, samples=1)
        for name, ref in (("hvp", "jvp(grad)"), ("ggn_vp", "jvp + vjp")):
            out[name] = partial(ours, name, v)
            out[ref] = partial(_compiled, refs[ref], params, x, y, v)
    if group == "dp":
        step = partial(_stepped, model=model, loss=loss, params=params, x=x, y=y)
        dp = jaxbp_function("dp_sgd")
        out["sgd step"] = partial(step, _plain)
        # None while jaxbp has no dp_sgd: the row then says so
        out["dp_sgd step"] = lambda: dp and step(dp(CLIP_NORM, NOISE_MULTIPLIER))
        out["dp clip step"] = lambda: dp and step(dp(CLIP_NORM, 0.0))
        out["clipped sum"] = lambda: (
            dp and _compiled(partial(_clipped_sum, dp(CLIP_NORM, 0.0), model, loss), params, x, y)
        )
        out["vmap(grad) dp step"] = partial(
            step, reference.vmap_dp_sgd(CLIP_NORM, NOISE_MULTIPLIER)
        )
    return out


def _clipped_sum(engine, model, loss, params, x, y):
    """sum_i min(1, C/||g_i||) g_i: the engine's clipped mean (no noise) times the batch."""
    return jax.tree.map(lambda g: g * len(x), engine(model, loss, params, x, y)[1])


def _jax_peers(group: str, config, model, loss, params, x, y) -> tuple[dict, dict, dict]:
    """jax-privacy's calls for group, at its fastest microbatch size on config: ({name: call},
    {name: bytes}, {name: why missing})."""
    names = [p for row in ROWS if row.group == group for p in row.peers if p in JAX_PEERS]
    if not names:
        return {}, {}, {}
    from jaxbp.bench import jax_privacy_peer as jp

    why = jp.missing()
    if why:
        return {}, {}, dict.fromkeys(names, why)
    options = {"clip_norm": CLIP_NORM, "noise_multiplier": NOISE_MULTIPLIER, "lr": LR}
    options["microbatch_size"] = jp.MICROBATCH_SIZES.get(config.name, jp.MICROBATCH_SIZE)
    built = jp.candidates(model, loss, params, x, y, **options)
    return {k: v[0] for k, v in built.items()}, {k: v[1] for k, v in built.items()}, {}


def _size(params) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(params))


def _outputs(model, params, x) -> int:
    return jax.eval_shape(lambda p: model.apply(p, x[:1]), params).size


def _ours(model, loss, params, x, y, name, *extra, **options):
    """jaxbp's `name` compiled; x and y are arguments, never constants XLA could fold."""
    f = jaxbp_function(name)
    if f is None:
        return None
    return _compiled(partial(f, model, loss, **options), params, x, y, *extra)


def _torch_candidates(group: str, config, model, params, x, y, shape) -> tuple[dict, dict]:
    """BackPACK's or Opacus's calls for group with their peak bytes, or why each is missing."""
    peers = (p for row in ROWS if row.group == group for p in row.peers if p not in JAX_PEERS)
    names = [TORCH_BASES[group], *peers]
    if isinstance(config, SequenceConfig):
        return {}, dict.fromkeys(names, "no torch peer for a sequence model here")
    if config.loss != "softmax_cross_entropy":
        return {}, dict.fromkeys(names, "peers run softmax_cross_entropy only")
    try:
        from jaxbp.bench import torch_quantities as tq
    except ImportError:
        return {}, dict.fromkeys(names, "torch not installed")
    try:
        net = tq.network(model, params, shape)
    except ValueError as error:
        return {}, dict.fromkeys(names, f"no torch network: {error}")
    xt, yt = tq.inputs(x, y)
    options = {"clip_norm": CLIP_NORM, "noise_multiplier": NOISE_MULTIPLIER, "lr": LR}
    fns, missing = tq.candidates(group, net, xt, yt, **options)
    return {name: (fn, partial(tq.peak_bytes, fn)) for name, fn in fns.items()}, missing


def group_times(group: str, config, *, reps: int, quick: bool = False) -> dict:
    """One interleaved run of group's candidates in both frameworks, and its rows of ratios."""
    model, loss, params, x, y, shape = problem(config)
    fns, memory, missing = jax_candidates(group, model, loss, params, x, y)
    jax_peers, jax_memory, jax_missing = _jax_peers(group, config, model, loss, params, x, y)
    fns, memory, missing = fns | jax_peers, memory | jax_memory, missing | jax_missing
    peers, torch_missing = _torch_candidates(group, config, model, params, x, y, shape)
    t = interleaved(
        fns | {name: fn for name, (fn, _) in peers.items()}, reps=reps, warmup=1 if quick else 2,
        settle=SETTLE_SECONDS if peers and not quick else 0.0,
    )  # fmt: skip
    memory |= {name: peak() for name, (_, peak) in peers.items()}
    return {
        "samples": len(next(iter(t.values()))),
        "times_s": {name: float(np.median(v)) for name, v in t.items()},
        "memory_bytes": memory,
        "missing": missing | torch_missing,
        "rows": rows(group, t, missing | torch_missing),
    }


def rows(group: str, t: dict[str, np.ndarray], missing: dict[str, str]) -> list[dict]:
    """Per quantity: its time over its base, the reference's and each peer's over jaxbp's, each
    peer's over its own framework's base (a JAX peer's: jaxbp's); paired ratios (median, 95% CI,
    IQR)."""
    base, torch_base = BASES[group], TORCH_BASES[group]
    out = []
    for row in (Row(group, base, None, (torch_base,)), *(r for r in ROWS if r.group == group)):
        q = row.quantity
        entry: dict = {"quantity": q, **_timed(t, missing, q, base, None)}
        if row.reference:
            timed = _timed(t, missing, row.reference, base, q)
            entry["reference"] = {"name": row.reference, **timed}
        entry["peers"] = {
            p: _timed(t, missing, p, base if p in JAX_PEERS else torch_base, q) for p in row.peers
        }
        out.append(entry)
    if "dp_sgd step" in t and "dp clip step" in t:  # the noise's share of the DP step
        dp = next(entry for entry in out if entry["quantity"] == "dp_sgd step")
        dp["noise_share"] = 1 - ratio(t["dp clip step"], t["dp_sgd step"])["median"]
    return out


def _timed(t, missing, name, base, jaxbp) -> dict:
    if name not in t:
        return {"missing": missing.get(name, "not run")}
    entry = {"s": float(np.median(t[name]))}
    if base in t and name != base:
        entry["over_base"] = ratio(t[name], t[base])
    if jaxbp is not None and jaxbp in t:
        entry["over_jaxbp"] = ratio(t[name], t[jaxbp])
    return entry


def run_config(
    config: Config | VisionConfig, *, quick: bool = False, groups: tuple[str, ...] = GROUPS,
    report: Callable[[str], None] = lambda line: None,
) -> dict:  # fmt: skip
    """Each group on one config; `report` gets a line as each group finishes."""
    check(config)
    result: dict = {"config": config.describe(), "groups": {}}
    for group in groups:
        t0 = time.perf_counter()
        result["groups"][group] = group_times(group, config, reps=3 if quick else 11, quick=quick)
        seconds = time.perf_counter() - t0
        report(f"  {group}: {summarize(result['groups'][group])} ({seconds:.0f} s)")
    return result


def run(
    configs: list, *, quick: bool = False, groups: tuple[str, ...] = GROUPS,
    report: Callable[[str], None] = print,
) -> dict:  # fmt: skip
    """run_config on each config (every one checked first), with the machine it ran on."""
    from jaxbp import bench

    for config in configs:
        check(config)
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown quantity groups {sorted(unknown)}; valid: {', '.join(GROUPS)}")
    results = {"environment": bench.environment(), "quick": quick, "configs": {}}
    for config in configs:
        report(f"quantities on {config.name}: {config.describe()} ...")
        results["configs"][config.name] = run_config(
            config, quick=quick, groups=groups, report=report
        )
    return results
