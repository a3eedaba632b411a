"""K-FAC on the deep autoencoder and a digits classifier: jaxbp's K-FAC against kfac-jax (the
same algorithm), Adam and SGD with momentum, on the same params, batches and step budget.

Two tasks on the bundled digits (1,437 training images of 64 pixels in [0, 1]):
- autoencoder: kfac-jax's classic benchmark, 64-1000-500-250-30-250-500-1000-64, tanh, linear
  code, logits out, jaxbp.binary_cross_entropy on the pixels (kfac_peer.AUTOENCODER);
- classifier: 64-256-256-10 tanh, softmax cross-entropy, accuracy on the 360 test digits.

Four optimisers, each on the same init params and the same batch order per seed: jaxbp.kfac
(one Monte Carlo Fisher column per step, samples=1), kfac-jax with estimation_mode
"fisher_gradients" (the same estimator, other draws) and the same learning rate, momentum,
damping, factor decay and inverse period, no burn-in (jaxbp.bench.kfac_peer.KfacPeer), Adam,
and SGD with momentum 0.9. Learning rates (and K-FAC's damping) are picked on seed 0 from small
grids by the mean training loss of the last SMOOTH steps of a TUNE_STEPS run; kfac-jax takes
jaxbp's pick. Then every optimiser runs on SEEDS seeds (init and batch order; K-FAC's draws).

Measured: per step, the batch's loss before the update (mean, min and max over seeds);
whether the two K-FAC curves agree within seed noise (the difference of their mean smoothed
curves over the standard error that the seed-to-seed spread gives it); steps to the
autoencoder's target loss (Adam's mean smoothed loss at the end of its budget); per-step time of
jaxbp K-FAC, kfac-jax, Adam and SGD on the autoencoder, interleaved in blocks of two inverse periods
(compilation excluded), with the paired ratio's median and 95% CI; XLA's planned memory of
each compiled step; and one layer's exact K-FAC factors (jaxbp.kfac_factors against kfac-jax's
"ggn_exact" after one step), float64.

Usage:
    python experiments/kfac.py --out experiments/results/kfac [--quick]

Writes results.json (config, grids and picks, curves, statistics, timing, memory, factors,
machine) and autoencoder.png, classifier.png (loss against steps and against seconds).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import parse_args, plt, save_figure, write_json

import jaxbp
from jaxbp import datasets
from jaxbp.bench import environment, interleaved, ratio
from jaxbp.train import make_step

try:  # kfac-jax is optional (the bench extra): without it the peer's rows are left out
    from jaxbp.bench.kfac_peer import KfacPeer, Net

    HAVE_KFAC_JAX = True
except ImportError:  # pragma: no cover
    HAVE_KFAC_JAX = False

# kfac-jax's classic benchmark with digits' 64 pixels (kfac_peer.AUTOENCODER): tanh after every
# hidden Dense but the 30-unit code, which is linear; logits out.
AUTOENCODER = (64, 1000, 500, 250, 30, 250, 500, 1000, 64)
AUTOENCODER_ACTIVATIONS = ("tanh", "tanh", "tanh", None, "tanh", "tanh", "tanh", None)

MOMENTUM = 0.9  # K-FAC's and SGD's
DECAY = 0.95  # the factors' running average (kfac-jax's curvature_ema default)
INVERSE_EVERY = 5  # kfac-jax's inverse_update_period default
SMOOTH = 10  # steps of the trailing mean a "smoothed" loss is (2 inverse periods)
SEEDS, QUICK_SEEDS = (0, 1, 2), (0, 1)


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    widths: tuple[int, ...]
    activations: tuple[str | None, ...]
    loss: str
    batch: int
    steps: int
    tune_steps: int
    grids: dict  # optimiser: tuple of (learning rate, damping or None)
    factor_layer: int  # the Dense whose factors are compared (its index in the serial)


def kfac_grid(lrs, dampings):
    return tuple((lr, d) for d in dampings for lr in lrs)


# Grids around where short probes trained (autoencoder, 40 steps: damping 0.01 and 0.1 diverge
# at lr >= 0.003; 1-10 train; 100 is slower). The loss sums 64 pixels per example, so the
# autoencoder's gradients are ~64x a mean's: small SGD and Adam rates.
# A first run's picks (150 steps) sat on its grids' edges (K-FAC lr 0.1 damping 3, SGD 1e-2,
# the classifier's at the largest rates): these grids are centred on them.
AE_GRIDS = {"kfac": kfac_grid((0.03, 0.1, 0.3), (1.0, 3.0, 10.0)),
            "adam": tuple((lr, None) for lr in (3e-4, 1e-3, 3e-3)),
            "sgd": tuple((lr, None) for lr in (3e-3, 1e-2, 3e-2))}  # fmt: skip
CLASSIFIER_GRIDS = {"kfac": kfac_grid((0.03, 0.1, 0.3), (1e-2, 1e-1, 1.0)),
                    "adam": tuple((lr, None) for lr in (3e-3, 1e-2, 3e-2)),
                    "sgd": tuple((lr, None) for lr in (0.03, 0.1, 0.3))}  # fmt: skip
TASKS = {
    "autoencoder": Task(
        "autoencoder",
        AUTOENCODER,
        AUTOENCODER_ACTIVATIONS,
        "binary_cross_entropy",
        batch=256,
        steps=500,
        tune_steps=100,
        grids=AE_GRIDS,
        factor_layer=0,
    ),
    "classifier": Task(
        "classifier",
        (64, 256, 256, 10),
        ("tanh", "tanh", None),
        "softmax_cross_entropy",
        batch=128,
        steps=150,
        tune_steps=150,
        grids=CLASSIFIER_GRIDS,
        factor_layer=2,
    ),
}
QUICK_TASKS = {
    "autoencoder": dataclasses.replace(
        TASKS["autoencoder"], widths=(64, 32, 8, 32, 64),
        activations=("tanh", None, "tanh", None), batch=64, steps=10, tune_steps=10,
        grids={"kfac": ((0.03, 1.0),), "adam": ((1e-3, None),), "sgd": ((1e-3, None),)},
    ),
    "classifier": dataclasses.replace(
        TASKS["classifier"], widths=(64, 32, 10), activations=("tanh", None), batch=64,
        steps=10, tune_steps=10, factor_layer=0,
        grids={"kfac": ((0.03, 0.1),), "adam": ((1e-2, None),), "sgd": ((0.1, None),)},
    ),
}  # fmt: skip
TIMING_REPS, QUICK_TIMING_REPS = 12, 2  # blocks per candidate (whole rotations of 3)


# ---------------------------------------------------------------------------------------------
# Running one optimiser


@dataclasses.dataclass(frozen=True)
class MLP:
    """The task's net in jaxbp (serial of Dense and activations; kfac_peer.Net's, so kfac-jax
    runs the same function over the same params) and its LeCun-normal init."""

    widths: tuple[int, ...]
    activations: tuple[str | None, ...]

    def jaxbp_model(self):
        layers = []
        for width, act in zip(self.widths[1:], self.activations):
            layers += [jaxbp.Dense(width)] + ([jaxbp.activation(act)] if act else [])
        return jaxbp.serial(*layers)

    def init(self, key, dtype=jnp.float32):
        return _init(self, key, dtype)

    def peer(self):
        return Net(self.widths, self.activations)


def batches_for(task: Task, seed: int, train_set, steps: int) -> list:
    """The seed's batch order: a fresh permutation per epoch (numpy, seeded), partial dropped."""
    x, labels = (np.asarray(a) for a in train_set)
    rng, out = np.random.default_rng(seed), []
    while len(out) < steps:
        order = rng.permutation(len(x))
        for start in range(0, len(x) - task.batch + 1, task.batch):
            i = order[start : start + task.batch]
            out.append((x[i], x[i] if task.loss == "binary_cross_entropy" else labels[i]))
    return out[:steps]


def jaxbp_optimizer(name: str, model, lr: float, damping):
    if name == "kfac":
        return jaxbp.kfac(model, lr, damping=damping, momentum=MOMENTUM, decay=DECAY,
                          inverse_every=INVERSE_EVERY, samples=1)  # fmt: skip
    if name == "adam":
        return optax.adam(lr)
    return optax.sgd(lr, momentum=MOMENTUM)


def memory(compiled) -> dict:
    """XLA's plan for one compiled step, in bytes: temp + output (what the step allocates) and
    the peak argument + output + temp - aliased (donated buffers reused)."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    return {"temp": m.temp_size_in_bytes, "output": m.output_size_in_bytes,
            "argument": m.argument_size_in_bytes, "alias": m.alias_size_in_bytes,
            "temp_plus_output": m.temp_size_in_bytes + m.output_size_in_bytes,
            "peak": m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes}  # fmt: skip


@functools.partial(jax.jit, static_argnums=(0, 2))  # one compile per net, not eager ops per seed
def _init(net: MLP, key, dtype):
    _, params = net.jaxbp_model().init(key, (net.widths[0],))
    return jax.tree.map(lambda a: a.astype(dtype), params)


_WARM: set = set()  # the compiled steps run once already
_STEPS: dict = {}  # (task, optimiser, lr, damping): compiled once, shared by seeds and timing


def jaxbp_step(task, net, name, lr, damping, batch):
    """(optimiser, make_step's step compiled for the task's shapes, its planned memory).
    Compiled ahead, so no run or timing includes compilation."""
    memo = (task.name, name, lr, damping)
    if memo not in _STEPS:
        model, loss = net.jaxbp_model(), jaxbp.losses.get(task.loss)
        opt = jaxbp_optimizer(name, model, lr, damping)
        params = net.init(jax.random.PRNGKey(0))
        compiled = make_step(model, loss, opt).lower(params, opt.init(params), *batch).compile()
        _STEPS[memo] = opt, compiled, memory(compiled)
    return _STEPS[memo]


def jaxbp_start(opt, params, seed: int):
    """Fresh params (the step donates them) and opt state; K-FAC's draws from the seed's key,
    as jaxbp.kfac(..., seed=seed) would make them."""
    params = jax.tree.map(jnp.array, params)
    state = opt.init(params)
    if isinstance(opt, jaxbp.KFAC):
        state = state._replace(key=jax.random.key_data(jax.random.PRNGKey(seed)))
    return params, state


def peer_step(task, net, lr, damping, batch):
    """(KfacPeer, its step compiled for the task's shapes, the compiled step's memory)."""
    memo = (task.name, "kfac_jax", lr, damping)
    if memo not in _STEPS:
        peer = KfacPeer(net.peer(), task.loss, learning_rate=lr, momentum=MOMENTUM,
                        damping=damping, curvature_ema=DECAY, inverse_period=INVERSE_EVERY,
                        estimation_mode="fisher_gradients")  # fmt: skip
        params = net.init(jax.random.PRNGKey(0))
        compiled, _ = peer.compile(params, peer.init(params, jax.random.PRNGKey(0), batch), batch)
        _STEPS[memo] = peer, compiled, memory(compiled)
    return _STEPS[memo]


def peer_start(peer, params, seed: int, batch):
    """Fresh params and kfac-jax's state, and the key its steps split (as KfacPeer.run does)."""
    key = jax.random.PRNGKey(seed)
    params = jax.tree.map(jnp.array, params)
    return params, peer.init(params, key, batch), key


def call(step, params, state, batch, key):
    """kfac-jax's step takes (params, state, key, batch); make_step's (params, state, x, y)."""
    return step(params, state, *batch) if key is None else step(params, state, key, batch)


def run_steps(step, params, state, batches, key=None) -> dict:
    """One step per batch: the loss before each update and each step's wall time (waited for).
    With a key (kfac-jax), it is split per step as KfacPeer.run splits it."""
    if id(step) not in _WARM:  # the first call of an executable also sets it up: not a step
        jax.block_until_ready(call(step, *jax.tree.map(jnp.array, (params, state)),
                                   batches[0], key))  # fmt: skip
        _WARM.add(id(step))
    losses, seconds = np.zeros(len(batches)), np.zeros(len(batches))
    for t, batch in enumerate(batches):
        t0 = time.perf_counter()
        sub = None
        if key is not None:
            key, sub = jax.random.split(key)
        params, state, value = call(step, params, state, batch, sub)
        losses[t] = float(value)  # waits for the step
        seconds[t] = time.perf_counter() - t0
    return {"loss": losses, "seconds": seconds, "params": params}


_RUNS: dict = {}  # (task, optimiser, lr, damping, seed, steps): its run, done once


def run(task, net, name, lr, damping, seed, train_set, steps) -> dict:
    """One optimiser's run from the seed's init on the seed's batches (memoised: a tuning run on
    seed 0 as long as the final runs is the final run of seed 0)."""
    memo = (task.name, name, lr, damping, seed, steps)
    if memo not in _RUNS:
        _RUNS[memo] = _run(task, net, name, lr, damping, seed, train_set, steps)
    return _RUNS[memo]


def _run(task, net, name, lr, damping, seed, train_set, steps) -> dict:
    params = net.init(jax.random.PRNGKey(seed))
    batches = [tuple(map(jnp.asarray, b)) for b in batches_for(task, seed, train_set, steps)]
    if name == "kfac_jax":
        peer, step, _ = peer_step(task, net, lr, damping, batches[0])
        p, state, key = peer_start(peer, params, seed, batches[0])
        return run_steps(step, p, state, batches, key)
    opt, step, _ = jaxbp_step(task, net, name, lr, damping, batches[0])
    return run_steps(step, *jaxbp_start(opt, params, seed), batches)


def smoothed(loss) -> np.ndarray:
    """Trailing mean over SMOOTH steps (fewer at the start); NaN once a run has diverged."""
    loss = np.asarray(loss, float)
    c = np.cumsum(np.where(np.isfinite(loss), loss, np.nan))
    n = np.arange(1, len(loss) + 1)
    out = c.copy()
    out[SMOOTH:] = c[SMOOTH:] - c[:-SMOOTH]
    return out / np.minimum(n, SMOOTH)


def final(loss) -> float:
    v = smoothed(loss)[-1]
    return float(v) if np.isfinite(v) else float("inf")


# ---------------------------------------------------------------------------------------------
# Tuning, seeds, statistics


def tune(task, net, train_set) -> dict:
    """Each jaxbp-run optimiser's grid on seed 0, TUNE_STEPS steps; the pick has the lowest
    final smoothed loss. kfac-jax is not tuned: it takes jaxbp K-FAC's pick."""
    out = {}
    for name, grid in task.grids.items():
        rows = []
        for lr, damping in grid:
            r = run(task, net, name, lr, damping, 0, train_set, task.tune_steps)
            rows.append({"lr": lr, "damping": damping, "final_loss": final(r["loss"])})
            print(f"  tune {task.name} {name} lr {lr:g} damping {damping}: {final(r['loss']):.4g}")
        best = min(rows, key=lambda r: r["final_loss"])
        edge = {"lr": [lr for lr, _ in grid], "damping": [d for _, d in grid if d is not None]}
        at_edge = [
            k for k, v in edge.items() if v and best[k] in (min(v), max(v)) and len(set(v)) > 1
        ]
        out[name] = {"grid": rows, "pick": {"lr": best["lr"], "damping": best["damping"]},
                     "pick_at_grid_edge": at_edge}  # fmt: skip
    return out


def seed_runs(task, net, picks, train_set, test_set, seeds) -> dict:
    """Every optimiser at its pick on every seed: per-seed curves, per-step mean/min/max."""
    names = ["kfac", *(["kfac_jax"] if HAVE_KFAC_JAX else []), "adam", "sgd"]
    out = {}
    for name in names:
        pick = picks["kfac" if name == "kfac_jax" else name]
        runs = [run(task, net, name, pick["lr"], pick["damping"], s, train_set, task.steps)
                for s in seeds]  # fmt: skip
        loss = np.stack([r["loss"] for r in runs])
        seconds = np.stack([r["seconds"] for r in runs])
        out[name] = {
            "lr": pick["lr"], "damping": pick["damping"],
            "loss_per_seed": loss, "mean": loss.mean(0), "min": loss.min(0), "max": loss.max(0),
            "smoothed_mean": np.mean([smoothed(v) for v in loss], 0),
            "cumulative_seconds_mean": np.cumsum(seconds, 1).mean(0),
            "median_step_seconds": float(np.median(seconds[:, 1:])),
            # K-FAC refreshes its inverses on steps 0, k, 2k, ...: those cost the most
            "median_step_seconds_inverse_steps": float(np.median(seconds[:, ::INVERSE_EVERY])),
            "final_smoothed_loss_per_seed": [final(v) for v in loss],
            "test": [evaluate(task, net, r["params"], test_set) for r in runs],
        }  # fmt: skip
        print(f"  {task.name} {name}: final smoothed {out[name]['final_smoothed_loss_per_seed']}")
    return out


def evaluate(task, net, params, test_set) -> dict:
    x, y = (jnp.asarray(a) for a in test_set)
    logits = net.jaxbp_model().apply(params, x)
    target = x if task.loss == "binary_cross_entropy" else y
    out = {"test_loss": float(jaxbp.losses.get(task.loss).apply(logits, target))}
    if task.loss == "softmax_cross_entropy":
        out["test_accuracy"] = float(jnp.mean(jnp.argmax(logits, -1) == y))
    return out


def seed_noise(runs: dict) -> dict:
    """Do the two K-FAC curves differ by more than seed noise? Per step, the difference of the
    mean smoothed curves (jaxbp - kfac-jax) over its standard error sqrt(s_j^2 + s_k^2) / sqrt(n)
    (s: the between-seed standard deviation of each implementation's smoothed curve): |z| is
    ~N(0, 1)-sized where they agree. Steps before the first full smoothing window are skipped."""
    if "kfac_jax" not in runs:
        return {}
    j, k = (np.stack([smoothed(v) for v in runs[n]["loss_per_seed"]]) for n in ("kfac", "kfac_jax"))
    n = len(j)
    diff = j.mean(0) - k.mean(0)
    se = np.sqrt((j.std(0, ddof=1) ** 2 + k.std(0, ddof=1) ** 2) / n)
    z = (diff / se)[SMOOTH - 1 :]
    spread = (np.maximum(j.max(0), k.max(0)) - np.minimum(j.min(0), k.min(0)))[SMOOTH - 1 :]
    fj, fk = np.asarray([final(v) for v in runs["kfac"]["loss_per_seed"]]), np.asarray(
        [final(v) for v in runs["kfac_jax"]["loss_per_seed"]])  # fmt: skip
    return {
        "z_per_step": z, "median_abs_z": float(np.median(np.abs(z))),
        "fraction_abs_z_above_2": float(np.mean(np.abs(z) > 2)),
        "mean_rel_diff": float(np.mean(np.abs(diff / k.mean(0))[SMOOTH - 1 :])),
        "max_abs_diff_over_seed_range": float(np.max(np.abs(diff[SMOOTH - 1 :]) / spread)),
        "final_jaxbp": fj, "final_kfac_jax": fk,
        "final_diff_over_se": float((fj.mean() - fk.mean())
                                    / np.sqrt((fj.var(ddof=1) + fk.var(ddof=1)) / n)),
    }  # fmt: skip


def steps_to_target(runs: dict) -> dict:
    """Target: Adam's mean (over seeds) smoothed loss at the end of its budget. For each
    optimiser and seed, the first step (1-based) whose smoothed loss is at or below it."""
    target = float(np.mean(runs["adam"]["final_smoothed_loss_per_seed"]))
    out = {"target": target, "definition": "Adam's final smoothed loss, mean over seeds"}
    for name, r in runs.items():
        hits = []
        for loss in r["loss_per_seed"]:
            below = np.nonzero(smoothed(loss) <= target)[0]
            hits.append(int(below[0]) + 1 if len(below) else None)
        reached = [h for h in hits if h is not None]
        out[name] = {"per_seed": hits, "median": float(np.median(reached)) if reached else None}
    if out["kfac"]["median"] and out["adam"]["median"]:
        out["adam_over_kfac"] = out["adam"]["median"] / out["kfac"]["median"]
    return out


# ---------------------------------------------------------------------------------------------
# Time and memory per step, side by side


def stepper(step, params, state, batches, extra=None):
    """A block of 2 * INVERSE_EVERY steps of a compiled step, its params and state carried from
    block to block (each block refreshes the inverses exactly twice)."""
    carry = {"p": params, "s": state, "t": 0}

    def block():
        for _ in range(2 * INVERSE_EVERY):
            batch = batches[carry["t"] % len(batches)]
            args = (carry["p"], carry["s"], *(extra(carry["t"]) if extra else ()))
            if extra:  # kfac-jax: (params, state, key, (x, y))
                carry["p"], carry["s"], value = step(*args, batch)
            else:  # make_step: (params, opt_state, x, y)
                carry["p"], carry["s"], value = step(*args, *batch)
            carry["t"] += 1
        return carry["p"], value

    return block


def timing(task, net, picks, train_set, reps: int) -> dict:
    """Per-step seconds of jaxbp K-FAC, kfac-jax (same inverse period), Adam and SGD, interleaved in
    rotating order, in blocks of 2 inverse periods, after warm-up; median per step, the paired
    ratio jaxbp / kfac-jax (median, 95% CI), and each compiled step's planned memory."""
    params = net.init(jax.random.PRNGKey(0))
    batches = [tuple(map(jnp.asarray, b)) for b in batches_for(task, 0, train_set, 20)]
    k = picks["kfac"]
    fns, mem = {}, {}
    for name, label in (("kfac", "jaxbp_kfac"), ("adam", "adam"), ("sgd", "sgd")):
        damping = picks[name]["damping"]
        opt, step, mem[label] = jaxbp_step(task, net, name, picks[name]["lr"], damping, batches[0])
        fns[label] = stepper(step, *jaxbp_start(opt, params, 0), batches)
    if HAVE_KFAC_JAX:
        peer, step, mem["kfac_jax"] = peer_step(task, net, k["lr"], k["damping"], batches[0])
        p, state, key = peer_start(peer, params, 0, batches[0])
        keys = jax.random.split(key, 4096)
        fns["kfac_jax"] = stepper(step, p, state, batches, lambda t: (keys[t % len(keys)],))
    per_block = interleaved(fns, reps=reps, warmup=1, min_sample=0.0)
    per_step = {n: v / (2 * INVERSE_EVERY) for n, v in per_block.items()}
    out = {"block_steps": 2 * INVERSE_EVERY, "blocks": len(per_step["adam"]),
           "median_step_seconds": {n: float(np.median(v)) for n, v in per_step.items()},
           "memory_bytes": mem}  # fmt: skip
    if task == TASKS.get(task.name):  # --quick: not the second process's compile
        out["memory_bytes_memory_scheduler"] = memory_under_memory_scheduler(task, picks)
    if HAVE_KFAC_JAX:
        out["ratio_jaxbp_over_kfac_jax"] = ratio(per_step["jaxbp_kfac"], per_step["kfac_jax"])
    out["ratio_jaxbp_kfac_over_adam"] = ratio(per_step["jaxbp_kfac"], per_step["adam"])
    return out


# XLA:CPU plans memory under its default, concurrency-optimised scheduler; this flag (read at
# start-up, so a fresh process) makes it minimise memory instead (jaxbp.bench.gpt2 reports both).
MEMORY_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def memory_under_memory_scheduler(task: Task, picks: dict) -> dict:
    """The two K-FAC steps' planned memory under the memory-minimising scheduler: this script
    again, in a process started with the flag, compiling both steps and printing their plans."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} {MEMORY_SCHEDULER_FLAG}".strip()
    ask = json.dumps({"task": task.name, "lr": picks["kfac"]["lr"],
                      "damping": picks["kfac"]["damping"]})  # fmt: skip
    env = {**os.environ, "XLA_FLAGS": flags, "JAXBP_KFAC_MEMORY": ask}
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run([sys.executable, __file__, "--out", scratch], env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"the memory-scheduler process failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _print_memory(ask: dict, train_set) -> None:
    """The child of memory_under_memory_scheduler: both K-FAC steps compiled, plans printed."""
    task = TASKS[ask["task"]]
    net = MLP(task.widths, task.activations)
    batch = tuple(map(jnp.asarray, batches_for(task, 0, train_set, 1)[0]))
    out = {
        "flag": MEMORY_SCHEDULER_FLAG,
        "jaxbp_kfac": jaxbp_step(task, net, "kfac", ask["lr"], ask["damping"], batch)[2],
    }
    if HAVE_KFAC_JAX:
        out["kfac_jax"] = peer_step(task, net, ask["lr"], ask["damping"], batch)[2]
    print(json.dumps(out))


# ---------------------------------------------------------------------------------------------
# The factors of one layer


def factors(task, net, train_set) -> dict:
    """One Dense layer's exact factors, float64: jaxbp.kfac_factors against kfac-jax's running
    factors after one "ggn_exact" step (weight 1: that step's estimate). Max |a - b| / max |b|."""
    if not HAVE_KFAC_JAX:
        return {}
    with jax.enable_x64(True):
        params = net.init(jax.random.PRNGKey(0), jnp.float64)
        x, y = batches_for(task, 0, train_set, 1)[0]
        x = x.astype(np.float64)
        y = x if task.loss == "binary_cross_entropy" else y
        model, loss = net.jaxbp_model(), jaxbp.losses.get(task.loss)
        path = (task.factor_layer,)
        ours = jax.jit(lambda p: jaxbp.kfac_factors(model, loss, p, x, y)[path])(params)
        peer = KfacPeer(net.peer(), task.loss, learning_rate=1e-3, momentum=MOMENTUM, damping=1.0,
                        estimation_mode="ggn_exact")  # fmt: skip
        state = peer.run(params, [(x, y)], 1, key=jax.random.PRNGKey(0))["state"]
        theirs = peer.factors(state, path)
        out = {"layer": task.factor_layer, "dtype": "float64"}
        for f in "AG":
            a, b = np.asarray(ours[f]), np.asarray(theirs[f])
            out[f] = {"shape": list(a.shape),
                      "max_rel_diff": float(np.max(np.abs(a - b)) / np.max(np.abs(b)))}  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
# Figures and main

LABELS = {"kfac": "jaxbp K-FAC", "kfac_jax": "kfac-jax", "adam": "Adam", "sgd": "SGD, momentum 0.9"}
COLORS = {"kfac": "C0", "kfac_jax": "C3", "adam": "C2", "sgd": "C7"}


def plot(task: Task, runs: dict, target, step_seconds, seeds, out, floor=None) -> None:
    """Loss against steps and against seconds: the mean over seeds of the smoothed loss, and
    (for the two K-FACs) the band between the seeds' smoothed min and max. Seconds: steps times
    the interleaved per-step time where measured (step_seconds: the autoencoder's, side by
    side, so load that changed between the runs does not tilt the comparison), else the runs'
    own cumulative wall time. floor: the autoencoder's least possible loss (its pixels' entropy),
    subtracted so that a log axis shows how far each run is from it."""
    shift = floor or 0.0
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in runs.items():
        steps = np.arange(1, len(r["mean"]) + 1)
        timed = {"kfac": "jaxbp_kfac"}.get(name, name)
        seconds = (steps * step_seconds[timed] if step_seconds
                   else np.asarray(r["cumulative_seconds_mean"]))  # fmt: skip
        per_seed = np.stack([smoothed(v) for v in r["loss_per_seed"]])
        label = f"{LABELS[name]} (lr {r['lr']:g}" + (
            f", damping {r['damping']:g})" if r["damping"] is not None else ")"
        )
        for ax, x in zip(axes, (steps, seconds)):
            ax.plot(x, np.asarray(r["smoothed_mean"]) - shift, color=COLORS[name], label=label,
                    lw=1.4)  # fmt: skip
            if name in ("kfac", "kfac_jax"):
                ax.fill_between(x, per_seed.min(0) - shift, per_seed.max(0) - shift,
                                color=COLORS[name], alpha=0.2, lw=0)  # fmt: skip
    seconds_label = ("seconds (steps x per-step time measured interleaved)" if step_seconds
              else "seconds (wall time of the runs, mean over seeds)")  # fmt: skip
    for ax, xlabel in zip(axes, ("step", seconds_label)):
        if target is not None:
            ax.axhline(target - shift, color="k", ls="--", lw=0.8,
                       label="target (Adam's final loss)")  # fmt: skip
        ylabel = f"training loss, mean of last {SMOOTH} batches"
        if floor:
            ylabel = f"{ylabel},\nminus its floor {floor:.2f} (the pixels' entropy)"
        ax.set(xlabel=xlabel, ylabel=ylabel, yscale="log")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    widths = "-".join(map(str, task.widths))
    fig.suptitle(f"{task.name}: digits, {widths}, batch {task.batch}, {len(seeds)} seeds "
                 "(bands: K-FAC min-max over seeds)", fontsize=10)  # fmt: skip
    save_figure(fig, out, f"{task.name}.png")


def strip(runs: dict) -> dict:
    """The JSON's copy of the runs: per-seed curves kept, the derived per-step arrays too."""
    return {n: {k: v for k, v in r.items()} for n, r in runs.items()}


def pixel_entropy(train_set) -> float:
    """The autoencoder's floor: binary cross-entropy against targets in [0, 1] is at least their
    entropy, sum_j -(x log x + (1 - x) log(1 - x)) per image (nats), reached at sigmoid(z) = x;
    its mean over the training images."""
    x = np.asarray(train_set[0], np.float64)
    inside = (x > 0) & (x < 1)
    xs = np.where(inside, x, 0.5)
    h = np.where(inside, -(xs * np.log(xs) + (1 - xs) * np.log1p(-xs)), 0.0)
    return float(h.sum(1).mean())


def main() -> None:
    args = parse_args(__doc__)
    train_set, test_set = datasets.load("digits")
    if "JAXBP_KFAC_MEMORY" in os.environ:  # the child of memory_under_memory_scheduler
        return _print_memory(json.loads(os.environ["JAXBP_KFAC_MEMORY"]), train_set)
    tasks = QUICK_TASKS if args.quick else TASKS
    seeds = QUICK_SEEDS if args.quick else SEEDS
    results: dict[str, Any] = {"config": {
        "quick": args.quick, "seeds": list(seeds), "momentum": MOMENTUM, "decay": DECAY,
        "inverse_every": INVERSE_EVERY, "smooth_steps": SMOOTH, "kfac_samples": 1,
        "kfac_jax_estimation_mode": "fisher_gradients", "kfac_jax": HAVE_KFAC_JAX,
        "tasks": {n: dataclasses.asdict(t) for n, t in tasks.items()}}}  # fmt: skip
    start = time.perf_counter()
    for name, task in tasks.items():
        t0 = time.perf_counter()
        net = MLP(task.widths, task.activations)
        tuned = tune(task, net, train_set)
        picks = {n: t["pick"] for n, t in tuned.items()}
        runs = seed_runs(task, net, picks, train_set, test_set, seeds)
        r = {"tuning": tuned, "runs": runs, "seed_noise": seed_noise(runs)}
        target, floor = None, None
        if name == "autoencoder":
            r["floor"] = floor = pixel_entropy(train_set)
            r["steps_to_target"] = s2t = steps_to_target(runs)
            target = s2t["target"]
            reps = QUICK_TIMING_REPS if args.quick else TIMING_REPS
            r["timing"] = timing(task, net, picks, train_set, reps)
        if not args.quick or name == "classifier":  # quick: 10 outputs' ggn_exact, not 64
            r["factors"] = factors(task, net, train_set)
        r["seconds"] = time.perf_counter() - t0
        step_seconds = r["timing"]["median_step_seconds"] if "timing" in r else None
        plot(task, runs, target, step_seconds, seeds, args.out, floor)
        results[name] = r
        print(f"{name}: {r['seconds']:.0f} s; seed noise {r['seed_noise'].get('median_abs_z')}")
    results["seconds"] = time.perf_counter() - start
    results["environment"] = environment()
    results["environment"]["shared_machine"] = True  # timings: other jobs shared the CPUs
    write_json(args.out, "results.json", results)


if __name__ == "__main__":
    main()
