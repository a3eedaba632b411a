"""Every figure in experiments/README.md's experiment tables and the sequence guide's, and every
figure of the benchmarks page's tables (docs/benchmarks.md), equals the committed results file
it comes from, at the rounding printed.

Each table row is cut into its numbers; the row's entry below lists them in order, each either a
figure with the place in results.json it comes from, or a bare string: a setting, a size or a
label, not a result (a model's widths, "1/4", "ln 10"). A number the entry does not list, or
one that differs from its file by more than half a unit of its last printed digit, fails, naming
the figure, the row and the file. Reads text only: well under a second.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEQUENCES_PAGE = ROOT / "docs" / "guides" / "sequences.md"
BENCHMARKS_PAGE = ROOT / "docs" / "benchmarks.md"
EXPERIMENTS_README = ROOT / "experiments" / "README.md"
EXPERIMENT_RESULTS = ROOT / "experiments" / "results"
BENCH_RESULTS = ROOT / "benchmarks" / "results"

# A number as the pages print one: 10^-8.5 (a log10), 24,384, 6.7e-5, 0.2370; not the digit of
# a name (W1, v1, f_B'). An optional unit says how a time is scaled.
NUMBER = re.compile(
    r"(?<![\w.'^])(10\^[-+]?\d+(?:\.\d+)?|\d{1,3}(?:,\d{3})+(?!\d)|\d+(?:\.\d+)?(?:e[-+]?\d+)?)"
    r"(?: ?(us|ms|s)\b)?"
)
TIME_UNITS = {"us": 1e6, "ms": 1e3, "s": 1.0}


def numbers(text: str) -> list[tuple[str, str]]:
    """The (number, unit) pairs of a piece of page text, in order."""
    return NUMBER.findall(text)


def value_of(token: str) -> tuple[float, float]:
    """The printed number and half a unit of its last digit (its rounding)."""
    text = token.removeprefix("10^").replace(",", "")
    mantissa, _, exponent = text.partition("e")
    decimals = len(mantissa.partition(".")[2])
    half = 0.5 * 10.0 ** (int(exponent or 0) - decimals)
    return float(text), half


def agrees(token: str, unit: str, value: float) -> bool:
    """The figure as printed is `value` rounded to the printed digits (a time in seconds, scaled
    to the printed unit)."""
    printed, half = value_of(token)
    value *= TIME_UNITS.get(unit, 1.0)
    return math.isfinite(value) and abs(value - printed) <= half * (1 + 1e-9) + 1e-12 * abs(value)


def tables(path: Path) -> list[tuple[str, int, list[list[str]]]]:
    """(section heading, the table's index in its section, its rows with the header first) for
    every markdown table of a file."""
    found, section, rows = [], "", None
    for line in [*path.read_text().splitlines(), ""]:
        if line.startswith("|"):
            if rows is None:
                rows = []
                found.append((section, sum(s == section for s, _, _ in found), rows))
            if not line.startswith("| ---"):
                rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        rows = None
        if line.startswith("#"):
            section = line.lstrip("#").strip()
    return found


def label(cell: str) -> str:
    """A row's name: the backticked name of `[`depth`](depth.py)`, or the words before a '('."""
    named = re.search(r"`([^`]+)`", cell)
    return named.group(1) if named else cell.split(" (")[0].strip()


@cache
def results(name: str) -> dict:
    return json.loads((EXPERIMENT_RESULTS / name / "results.json").read_text())


@cache
def bench(relative: str) -> dict:
    return json.loads((BENCH_RESULTS / relative).read_text())


def at(path: str, scale: float = 1.0) -> Callable[[dict], float]:
    """The value at a /-separated path of a results tree (list indices may be negative)."""

    def get(tree):
        for part in path.split("/"):
            tree = tree[int(part)] if isinstance(tree, list) else tree[part]
        return tree if scale == 1.0 else scale * tree

    get.path = path
    return get


def pct(path: str) -> Callable[[dict], float]:
    return at(path, 100.0)


def mib(path: str) -> Callable[[dict], float]:
    return at(path, 1 / 2**20)


def count(path: str) -> Callable[[dict], float]:
    return lambda tree: len(at(path)(tree))


def ends(paths: list[str], pick: Callable, index: int) -> Callable[[dict], float]:
    """min or max over several curves of their value at one index (first or last epoch)."""
    return lambda tree: pick(at(p)(tree)[index] for p in paths)


# ---- experiments: one entry per table row, keyed by (file, section, first cell) ---------------

FA = "models/mlp/engines/feedback_alignment"
DFA = "models/mlp/engines/direct_feedback_alignment"
BP = "models/mlp/engines/backprop"
RFA = "models/residual_mlp/engines/feedback_alignment"
RDFA = "models/residual_mlp/engines/direct_feedback_alignment"
RBP = "models/residual_mlp/engines/backprop"
MLP_HIDDEN = [f"{e}/angles_mean/{w}" for e in (FA, DFA) for w in ("W1", "W2")]
RES_HIDDEN = [f"{e}/angles_mean/W{i}" for e in (RFA, RDFA) for i in range(1, 6)]
ARCH_64_256 = ["64", "256", "256", "10"]


def depth_row(family: str) -> list:
    """Test accuracy, mean (min-max) at each depth, in percent."""
    return [
        (None, pct(f"{family}/{d}/test_accuracy/{s}")) for d in (8, 20, 32, 56)
        for s in ("mean", "min", "max")
    ]  # fmt: skip


def depth_loss_row(family: str) -> list:
    loss = [(None, at(f"{family}/{d}/train_loss/mean")) for d in (8, 20, 32, 56)]
    delta = [(None, at(f"{family}/{d}/log10_delta_ratio_first_over_last")) for d in (8, 20, 32, 56)]
    return loss + delta


def seed_mean(path: str, key: str | None = None, scale: float = 1.0) -> Callable[[dict], float]:
    """The mean over seeds of a per-seed list (or of one key of a list of dicts)."""

    def get(tree):
        values = at(path)(tree)
        values = [v[key] for v in values] if key else values
        return scale * sum(values) / len(values)

    get.path = path + (f"/*/{key}" if key else "") + " (mean over seeds)"
    return get


KFAC_NAMES = ("kfac", "kfac_jax", "adam", "sgd")
AE_TIMING = "autoencoder/timing"


def vanishing_row(act: str) -> list:
    return [
        (None, at(f"{act}/measured_delta_factor")),
        (None, at(f"{act}/predicted_factor_rms_fprime")),
        (None, at(f"{act}/measured_over_predicted")),
        (None, at(f"{act}/mean_fprime")),
        (None, at(f"{act}/measured_weight_grad_factor")),
        (None, at(f"{act}/log10_first_layer_grad_norm_per_depth/0")),
        (None, at(f"{act}/log10_first_layer_grad_norm_per_depth/-1")),
    ]


def precision_row(name: str) -> list:
    e = f"errors/{name}"
    return [
        (None, at(f"{e}/largest")), (None, at(f"{e}/median")),
        (None, at(f"{e}/largest_at_depth")), (None, at(f"{e}/largest_at_width")),
    ]  # fmt: skip


def timing_row(batch: int) -> list:
    t = f"timing/{batch}"
    return [
        str(batch), (None, at(f"{t}/vmap_median_s")), (None, at(f"{t}/loop_median_s")),
        (None, at(f"{t}/speedup")), (None, at(f"{t}/batch_median_s")),
    ]  # fmt: skip


def fa_row(engine: str, hidden: bool) -> list:
    first = [
        (None, pct(f"{engine}/final_accuracy")), (None, pct(f"{engine}/best_accuracy")),
        (None, pct(f"{engine}/accuracy_mean/0")),
    ]  # fmt: skip
    if not hidden:  # backprop's angles: 0 (a sanity check)
        return first + [(None, at(f"{engine}/angles_mean/{w}/-1")) for w in ("W1", "W2", "W3")]
    angles = []
    for w in ("W1", "W2"):
        angles += [
            (None, at(f"{engine}/angles_mean/{w}/0")),
            (None, at(f"{engine}/angles_mean/{w}/-1")),
        ]
    return first + angles + [(None, at(f"{engine}/angles_mean/W3/-1"))]


def residual_fa_row(engine: str) -> list:
    inits = [f"{engine}/angles_mean/W{i}" for i in range(1, 6)]
    return [
        (None, pct(f"{engine}/final_accuracy")), (None, pct(f"{engine}/best_accuracy")),
        (None, pct(f"{engine}/accuracy_mean/0")),
        (None, ends(inits, min, 0)), (None, ends(inits, max, 0)),
    ] + [(None, at(f"{p}/-1")) for p in inits]  # fmt: skip


# The depth experiment's accuracies at 8 and 56 layers (4 kinds; "10" is the chance level) and
# the first layer's delta over the last's at 56: the pages state them in this order.
DEPTH_FIGURES = [
    (None, pct("plain/8/test_accuracy/mean")), (None, pct("plain/56/test_accuracy/mean")),
    (None, pct("plain_bn/8/test_accuracy/mean")),
    (None, pct("plain_bn/56/test_accuracy/mean")), "10",
    (None, pct("residual/8/test_accuracy/mean")),
    (None, pct("residual/56/test_accuracy/mean")),
    (None, pct("residual_bn/8/test_accuracy/mean")),
    (None, pct("residual_bn/56/test_accuracy/mean")), (None, at("depths/-1")),
    (None, at("plain/56/log10_delta_ratio_first_over_last")),
    (None, at("plain_bn/56/log10_delta_ratio_first_over_last")),
    (None, at("residual/56/log10_delta_ratio_first_over_last")),
]  # fmt: skip

# fmt: off
# An entry is the row's numbers in order: a bare string is not a result; (token, getter) is a
# figure (token None: whatever the page prints there, checked against the getter).
EXPERIMENTS: dict[tuple[str, str, int, str], tuple[str, list]] = {
    # experiments/README.md, the results table
    ("experiments", "Results", 0, "seed_example"): ("seed_example", [
        "2", "2", "1", (None, at("config/seed")), (None, at("config/learning_rate")),
        (None, at("solved_from_step")), "4", "0.5", (None, at("trajectory/cost/0")),
        (None, at("final_cost")), (None, at("config/steps")),
        (None, at("trajectory/mean_fB_prime/0")), (None, at("trajectory/mean_fB_prime/-1")),
        (None, at("dC_dv1_factor_product_vs_backprop_max_abs_diff")),
        (None, at("seed_sweep/n_solved")), (None, count("seed_sweep/seeds")),
        (None, lambda r: r["seed_sweep"]["solved_from_step"].index(None)),
        (None, at("seed_sweep/final_cost/5")), "0.5",
    ]),
    ("experiments", "Results", 0, "vanishing_gradients"): ("vanishing_gradients", [
        "1", "4", (None, at("depths/-1")), (None, at("sigmoid/measured_delta_factor")),
        (None, at("sigmoid/predicted_factor_rms_fprime")),
        (None, at("sigmoid/measured_over_predicted")), (None, at("sigmoid/mean_fprime")),
        (None, at("sigmoid/log10_first_layer_grad_norm_per_depth/0")), (None, at("depths/0")),
        (None, at("sigmoid/log10_first_layer_grad_norm_per_depth/-1")), (None, at("depths/-1")),
        (None, at("tanh/measured_delta_factor")), (None, at("tanh/predicted_factor_rms_fprime")),
        (None, at("relu/measured_delta_factor")), (None, at("relu/predicted_factor_rms_fprime")),
    ]),
    ("experiments", "Results", 0, "gradient_precision"): ("gradient_precision", [
        (None, at("config/depths/0")), (None, at("config/depths/-1")),
        (None, at("config/widths/0")), (None, at("config/widths/-1")),
        (None, at("errors/float64: backprop vs jax.grad/largest")),
        (None, at("errors/float32: backprop vs jax.grad/largest")),
        (None, at("errors/float32 backprop vs float64 truth/largest")),
        (None, at("errors/float32 backprop vs float64 truth/median")),
        (None, at("errors/float32 jax.grad vs float64 truth/largest")),
        (None, at("errors/float32 jax.grad vs float64 truth/median")),
        (None, at("float32_error_ratio_backprop_over_jax_grad")),
    ]),
    ("experiments", "Results", 0, "per_example_gradients"): ("per_example_gradients", [
        "64", (None, at("config/hidden")), "10", (None, at("config/epochs")),
        (None, pct("test_accuracy")), (None, at("vmap_vs_loop/max_diff_over_scale")),
        (None, at("config/agreement_bound")), (None, at("vmap_vs_loop/max_abs_diff")),
        "512",  # AVX-512
        (None, at("vmap_vs_vmap_jax_grad/max_diff_over_scale")),
        (None, at("vmap_vs_vmap_jax_grad/max_abs_diff")),
        (None, at("timing/32/speedup")), "32", (None, at("timing/128/speedup")), "128",
        (None, at("timing/512/speedup")), "512", "512",
        (None, at("timing/512/vmap_median_s")), (None, at("timing/512/batch_median_s")),
        (None, at("norms/correct_median")), (None, at("norms/misclassified_median")),
        (None, at("norms/misclassified_count")),
    ]),
    ("experiments", "Results", 0, "feedback_alignment"): ("feedback_alignment", [
        (None, ends(MLP_HIDDEN, min, -1)), (None, ends(MLP_HIDDEN, max, -1)),
        *ARCH_64_256, "1e-3", (None, at("config/epochs")), (None, at("config/seeds")),
        (None, pct(f"{BP}/final_accuracy")), (None, pct(f"{FA}/final_accuracy")),
        (None, pct(f"{DFA}/final_accuracy")), (None, pct(f"{RBP}/final_accuracy")),
        (None, pct(f"{RFA}/final_accuracy")), (None, pct(f"{RDFA}/final_accuracy")),
        (None, at("config/epochs")),
        (None, at(f"{FA}/angles_mean/W1/0")), (None, at(f"{FA}/angles_mean/W1/-1")),
        (None, at(f"{FA}/angles_mean/W2/0")), (None, at(f"{FA}/angles_mean/W2/-1")),
        (None, at(f"{DFA}/angles_mean/W1/0")), (None, at(f"{DFA}/angles_mean/W1/-1")),
        (None, at(f"{DFA}/angles_mean/W2/0")), (None, at(f"{DFA}/angles_mean/W2/-1")),
        (None, at(f"{FA}/angles_mean/W3/-1")), "5",
    ]),
    ("experiments", "Results", 0, "depth"): ("depth", [
        "2016", (None, at("config/width")), "1e-3", (None, at("config/epochs")),
        (None, at("config/seeds")), (None, at("depths/0")), (None, at("depths/-1")),
        *DEPTH_FIGURES,
        (None, at("residual_bn/56/log10_delta_ratio_first_over_last")),
    ]),
    ("experiments", "Results", 0, "char_models"): ("char_models", [
        (None, at("characters/validation")),
        (None, at("table/bigram/validation")), (None, at("table/bigram/test")), "3", "200",
        (None, at("table/mlp/validation")), (None, at("table/mlp/test")),
        "2", "64", "4", (None, at("config/context")), (None, at("config/epochs")),
        (None, at("table/gpt/validation")), (None, at("table/gpt/test")),
        "128", (None, at("config/epochs")),
        (None, at("table/lstm/validation")), (None, at("table/lstm/test")),
        "25,600",  # training names: 80% of the 32,000
        "12",
    ]),
    ("experiments", "Results", 0, "attention_backward"): ("attention_backward", [
        (None, at("layers")), (None, at("features")), (None, at("batch")),
        *[(None, at(f"by_context/{t}/time_ratio_recomputed_over_saved"))
          for t in (32, 64, 128, 256, 512)],
        *[(None, at(f"contexts/{i}")) for i in range(5)],
        (None, mib("by_context/32/saved/residual_bytes")),
        (None, mib("by_context/32/recomputed/residual_bytes")), "32",
        (None, mib("by_context/512/saved/residual_bytes")),
        (None, mib("by_context/512/recomputed/residual_bytes")), "512",
        (None, mib("by_context/512/saved/temp_bytes")), "512",
    ]),  # fmt: skip
    ("experiments", "Results", 0, "dp_sgd"): ("dp_sgd", [
        "64", (None, at("config/hidden")), "10", (None, at("config/expected_batch")),
        (None, at("config/clip_norm")), (None, at("config/epochs")), (None, at("config/delta")),
        (None, count("config/seeds")),
        (None, pct("private/1/test_accuracy")), (None, at("private/1/epsilon")),
        (None, at("private/1/sigma")),
        (None, pct("private/2/test_accuracy")), (None, at("private/2/epsilon")),
        (None, pct("private/4/test_accuracy")), (None, at("private/4/epsilon")),
        (None, pct("private/8/test_accuracy")), (None, at("private/8/epsilon")),
        (None, pct("no_privacy/test_accuracy")),
        *[(None, pct(f"private/{e}/clipped_at_end")) for e in (1, 2, 4, 8)],
    ]),
    ("experiments", "Results", 0, "curvature"): ("curvature", [
        "64", (None, at("config/small_hidden")), "10", (None, at("diagonal/init/params")),
        (None, at("diagonal/init/hvp_vs_jax_hessian_max_rel_error")),
        (None, at("diagonal/init/ggn_hessian_correlation")),
        (None, at("diagonal/trained/ggn_hessian_correlation")),
        (None, at("diagonal/init/negative_hessian_entries")),
        (None, at("diagonal/trained/negative_hessian_entries")),
        (None, at("diagonal/init/mc_rel_error/0")), (None, at("diagonal/init/mc_rel_error/-1")),
        (None, at("diagonal/init/mc_samples/0")), (None, at("diagonal/init/mc_samples/-1")),
        (None, at("config/epochs")),
        *[(None, pct(f"training/{o}/selected/test_accuracy/-1"))
          for o in ("adam", "sgd", "diag_ggn", "diag_ggn_mc")],
        *[(None, at(f"training/{o}/selected/test_loss/-1"))
          for o in ("adam", "sgd", "diag_ggn", "diag_ggn_mc")],
    ]),  # fmt: skip
    ("experiments", "Results", 0, "kfac"): ("kfac", [
        (None, at("config/tasks/autoencoder/steps")), (None, count("config/seeds")),
        (None, at("autoencoder/seed_noise/median_abs_z")),
        (None, at("autoencoder/steps_to_target/target")),
        *[(None, at(f"autoencoder/steps_to_target/{o}/median")) for o in KFAC_NAMES[:3]],
        (None, at("autoencoder/steps_to_target/adam_over_kfac")),
        *[(None, at(f"{AE_TIMING}/ratio_jaxbp_over_kfac_jax/{k}"))
          for k in ("median", "ci95_low", "ci95_high")],
        *[(None, mib(f"{AE_TIMING}/memory_bytes/{o}/temp_plus_output"))
          for o in ("jaxbp_kfac", "kfac_jax")],
        (None, at("autoencoder/factors/G/max_rel_diff")),
        (None, at("config/tasks/classifier/steps")),
        *[(None, seed_mean(f"classifier/runs/{o}/final_smoothed_loss_per_seed"))
          for o in KFAC_NAMES],
        *[(None, seed_mean(f"classifier/runs/{o}/test", "test_accuracy", 100.0))
          for o in KFAC_NAMES],
    ]),  # fmt: skip
    # experiments/README.md, each experiment's own tables
    ("experiments", "vanishing_gradients", 0, "activation"): ("vanishing_gradients", [
        (None, at("depths/0")), (None, at("depths/-1")),
    ]),
    **{
        ("experiments", "vanishing_gradients", 0, a): ("vanishing_gradients", vanishing_row(a))
        for a in ("sigmoid", "tanh", "relu")
    },
    **{
        ("experiments", "gradient_precision", 0, name): ("gradient_precision", precision_row(name))
        for name in (
            "float64: backprop vs jax.grad", "float32: backprop vs jax.grad",
            "float32 backprop vs float64 truth", "float32 jax.grad vs float64 truth",
        )
    },  # fmt: skip
    **{
        ("experiments", "per_example_gradients", 0, str(b)): (
            "per_example_gradients", timing_row(b),
        ) for b in (32, 128, 512)
    },
    ("experiments", "feedback_alignment", 0, "engine"): ("feedback_alignment", ["1"]),
    ("experiments", "feedback_alignment", 0, "backprop"): ("feedback_alignment", fa_row(BP, False)),
    ("experiments", "feedback_alignment", 0, "FA"): ("feedback_alignment", fa_row(FA, True)),
    ("experiments", "feedback_alignment", 0, "DFA"): ("feedback_alignment", fa_row(DFA, True)),
    ("experiments", "feedback_alignment", 1, "engine"): ("feedback_alignment", ["1"]),
    ("experiments", "feedback_alignment", 1, "backprop"): (
        "feedback_alignment", fa_row(RBP, False)[:4],
    ),  # fmt: skip
    ("experiments", "feedback_alignment", 1, "FA"): ("feedback_alignment", residual_fa_row(RFA)),
    ("experiments", "feedback_alignment", 1, "DFA"): (
        "feedback_alignment", residual_fa_row(RDFA),
    ),  # fmt: skip
    ("experiments", "depth", 0, "family"): ("depth", [(None, at(f"depths/{i}")) for i in range(4)]),
    ("experiments", "depth", 1, "family"): (
        "depth", [(None, at(f"depths/{i % 4}")) for i in range(8)],
    ),  # fmt: skip
    **{("experiments", "depth", 0, f): ("depth", depth_row(f)) for f in (
        "plain", "plain_bn", "residual", "residual_bn")},  # fmt: skip
    **{("experiments", "depth", 1, f): ("depth", depth_loss_row(f)) for f in (
        "plain", "plain_bn", "residual", "residual_bn")},  # fmt: skip
    # docs/guides/sequences.md, the character models' table
    ("sequences", "Training, and sampling", 0, "bigram"): ("char_models", [
        (None, at("table/bigram/validation")), (None, at("table/bigram/test")),
        (None, at("table/bigram/parameters")),
    ]),
    ("sequences", "Training, and sampling", 0, "makemore MLP"): ("char_models", [
        "3", "200", (None, at("table/mlp/validation")), (None, at("table/mlp/test")),
        (None, at("table/mlp/parameters")),
    ]),
    ("sequences", "Training, and sampling", 0, "GPT"): ("char_models", [
        "2", "64", "4", (None, at("config/context")), (None, at("table/gpt/validation")),
        (None, at("table/gpt/test")), (None, at("table/gpt/parameters")),
    ]),
    ("sequences", "Training, and sampling", 0, "LSTM"): ("char_models", [
        "64", "128", (None, at("table/lstm/validation")), (None, at("table/lstm/test")),
        (None, at("table/lstm/parameters")),
    ]),
}
# fmt: on


# The docs pages with experiment tables besides experiments/README.md: {key: page}.
DOC_PAGES = {"sequences": SEQUENCES_PAGE}


def experiment_rows():
    """Every table row with a number in experiments/README.md, and in the docs pages' (DOC_PAGES)
    character-model tables: (its key in EXPERIMENTS, its text)."""
    rows = []
    for section, index, table in tables(EXPERIMENTS_README):
        rows += [(("experiments", section, index, label(r[0])), r) for r in table]
    for name, page in DOC_PAGES.items():
        for section, index, table in tables(page):
            rows += [((name, section, index, label(r[0])), r) for r in table]
    return [(key, " | ".join(cells)) for key, cells in rows if numbers(" | ".join(cells))]


def check_row(where: str, text: str, entry: list, tree: dict, source: str) -> list[str]:
    """What is wrong with one row: a number the entry does not list, or a figure that is not its
    file's value at the printed rounding."""
    got = numbers(text)
    want = [e if isinstance(e, str) else e[0] for e in entry]
    if len(got) != len(entry):
        return [
            f"{where}: prints {len(got)} numbers {[t for t, _ in got]}, the test lists "
            f"{len(entry)} {want}: list each new figure with its place in {source}"
        ]
    problems = []
    for (token, unit), item in zip(got, entry):
        if isinstance(item, str):  # a setting or a label, given as printed
            if token != item:
                problems.append(f"{where}: prints {token} where the test lists {item}")
            continue
        value = float(item[1](tree))
        if not agrees(token, unit, value):
            path = getattr(item[1], "path", "a value derived from it")
            problems.append(
                f"{where}: figure {token}{' ' + unit if unit else ''} is not {source}'s "
                f"{path} = {value:.6g} at the printed rounding"
            )
    return problems


def test_every_experiment_row_is_listed():
    rows = {key for key, _ in experiment_rows()}
    assert len(rows) > 40, f"only {len(rows)} rows found: has a table moved?"
    unlisted, gone = sorted(rows - EXPERIMENTS.keys()), sorted(EXPERIMENTS.keys() - rows)
    assert not unlisted, f"rows with figures the test does not list: {unlisted}"
    assert not gone, f"listed rows the pages no longer have: {gone}"


def test_experiment_figures_equal_their_results():
    problems = []
    for key, text in experiment_rows():
        if key not in EXPERIMENTS:
            continue  # test_every_experiment_row_is_listed names it
        name, entry = EXPERIMENTS[key]
        source = f"experiments/results/{name}/results.json"
        problems += check_row(
            f"{key[0]} [{key[1]}] row {key[3]!r}", text, entry, results(name), source
        )
    assert not problems, "\n".join(problems)


def test_the_readme_gpt_plateau_is_its_results():
    """The GPT "flattened by epoch 12, 2.1288 -> 2.1283": the committed curve's last two epochs."""
    text = SEQUENCES_PAGE.read_text()
    found = re.search(r"flattened by epoch (\d+), ([\d.]+) -> ([\d.]+)", text)
    assert found, "the sequence guide's sentence on the GPT's last epochs is gone"
    curve = results("char_models")["validation_curves"]["gpt"]
    assert int(found.group(1)) == len(curve)
    assert agrees(found.group(2), "", curve[-2]) and agrees(found.group(3), "", curve[-1]), (
        found.group(0),
        curve[-2:],
    )


# ---- benchmarks: each table's columns, from the results file it names ---------------------------

FIVE = ("median", "ci95_low", "ci95_high", "q25", "q75")  # "0.975 [0.973-0.978] (0.931-1.017)"
THREE = FIVE[:3]  # "0.780 [0.769-0.792]"


def ratio(path: str, parts=FIVE) -> list[Callable]:
    return [at(f"{path}/{p}") for p in parts]


MLP_GRADIENT = [
    at("gradient/backprop_s"), at("gradient/jax_grad_s"), *ratio("gradient/ratio"),
    at("gradient/samples"), *ratio("gradient/null_ratio"), *ratio("step/ratio"),
    at("gradient/compile_backprop_s"), at("gradient/compile_jax_grad_s"),
]  # fmt: skip
MLP_EPOCH = [
    at("epoch/scan_step_s"), at("epoch/loop_step_s"), *ratio("epoch/ratio"),
    at("epoch/numpy_step_s"), *ratio("epoch/numpy_over_scan"), at("peers/torch_s"),
    *ratio("peers/torch_over_jaxbp"),
]  # fmt: skip
MLP_ROOFLINE = [
    at("roofline/step_s"), at("roofline/bare_matmul_s"),
    *ratio("roofline/fraction_of_roofline"), at("roofline/matmul_gflops"),
]  # fmt: skip
SEQUENCE = [
    at("gradient/backprop_s"), at("gradient/jax_grad_s"), *ratio("gradient/ratio", THREE),
    *ratio("gradient/null_ratio", THREE), *ratio("step/ratio", THREE), at("peers/jaxbp_s"),
    *ratio("peers/torch_over_jaxbp", THREE), *ratio("peers/torch_compile_over_jaxbp", THREE),
]  # fmt: skip
NN_LSTM = ratio("peers/nn_lstm_over_jaxbp", THREE)  # the lstm row only
VISION_GRADIENT = [
    at("gradient/backprop_s"), at("gradient/jax_grad_s"), *ratio("gradient/ratio", THREE),
    at("gradient/samples"), *ratio("gradient/null_ratio", THREE), *ratio("step/ratio", THREE),
]  # fmt: skip
VISION_PEERS = [
    at("peers/jaxbp_s"), at("peers/torch_s"), *ratio("peers/torch_over_jaxbp", THREE),
    at("peers/torch_compile_s"), *ratio("peers/torch_compile_over_jaxbp", THREE),
]  # fmt: skip
GPT2_ENGINES = [
    at("gradient/backprop_s"), *ratio("gradient/ratio", THREE),
    *ratio("gradient/null_ratio", THREE),
    lambda r: 100 * r["gradient"]["backprop_gflops"] / r["step"]["matmul_gflops"],
    at("step/backprop_s"), *ratio("step/ratio", THREE), *ratio("step/null_ratio", THREE),
    pct("step/backprop_roofline/median"), pct("step/backprop_roofline/ci95_low"),
    pct("step/backprop_roofline/ci95_high"), at("step/matmul_gflops"),
    *ratio("peers/torch_over_jaxbp", THREE), *ratio("peers/torch_compile_over_jaxbp", THREE),
]  # fmt: skip
GPT2_MEMORY = [
    mib(f"memory/{scheduler}/{kind}/peak_bytes")
    for scheduler in ("default", "memory_scheduler") for kind in ("saved_p", "recompute")
]  # fmt: skip
GPT2_PROFILE = [
    *(at(f"profile/op_s/{group}") for group in (
        "head matmuls (forward, backward)", "softmax cross-entropy",
        "embedding scatter + tied sum", "blocks (attention, MLP)",
        "embeddings forward, final LayerNorm", "AdamW (optax)", "copies and ops without a scope",
    )),
    at("profile/wall_s"),
]  # fmt: skip
# fmt: off
# The benchmarks page's tables by their header: the file and the columns, or why no committed
# file holds them (the page cites the command that prints them beside the table).
BENCH_TABLES = {
    ("config", "backprop grad", "jax.grad", "backprop / jax.grad", "backprop is",
     "null: jax.grad / itself", "train step ratio", "compile bp / jax.grad"): (
        "results.json", MLP_GRADIENT,
    ),
    ("config", "jaxbp step in compiled epoch", "loop of jitted steps", "scan / loop",
     "NumPy by hand", "NumPy / epoch step", "PyTorch eager", "PyTorch / jitted step"): (
        "results.json", MLP_EPOCH,
    ),
    ("config", "train step", "its bare matmuls", "fraction of roofline", "matmul GFLOP/s"): (
        "results.json", MLP_ROOFLINE,
    ),
    ("config", "backprop grad", "jax.grad", "backprop / jax.grad", "null", "train step ratio",
     "jaxbp step", "PyTorch eager / jaxbp", "torch.compile / jaxbp", "nn.LSTM / jaxbp"): (
        "sequence/results.json", SEQUENCE,
    ),
    ("config", "quantity", "jaxbp / its base", "vmap(jax.grad) / jaxbp",
     "peer / jaxbp (absolute time)"): ("quantities/quantities.json", None),  # quantity_row
    ("dW product (batch, in, out)", "x.T @ dy", "copy(x.T) @ dy", "(dy.T @ x).T"): (
        None, "printed by python benchmarks/weight_grad_layouts.py, which the page cites",
    ),
    ("config", "backprop grad", "jax.grad", "backprop / jax.grad", "backprop is",
     "null: jax.grad / itself", "train step ratio"): ("vision/results.json", VISION_GRADIENT),
    ("config", "jaxbp step", "PyTorch eager", "eager / jaxbp", "torch.compile",
     "compiled / jaxbp"): ("vision/results.json", VISION_PEERS),
    ("config", "backprop gradient", "backprop / jax.grad", "null", "gradient roofline",
     "AdamW step",
     "step: backprop / jax.grad", "step null", "step roofline", "PyTorch eager / jaxbp",
     "torch.compile / jaxbp"): ("gpt2/results.json", GPT2_ENGINES),
    ("config", "peak, p saved", "peak, recompute", "memory scheduler: p saved",
     "memory scheduler: recompute"): ("gpt2/results.json", GPT2_MEMORY),
    ("config", "head matmuls", "cross-entropy", "embedding scatter + tied sum", "blocks",
     "embeddings, final LayerNorm", "AdamW", "copies, no scope", "traced step"): (
        "gpt2/results.json", GPT2_PROFILE,
    ),
}
# fmt: on
QUANTITY_NAMES = {"DP-SGD step": "dp_sgd step"}
PEER_NAMES = {"Opacus": "Opacus hooks", "ghost clipping": "Opacus ghost"}


def bench_tables():
    """(header, its entry in BENCH_TABLES, body rows) for every table of the Benchmarks section."""
    found = []
    for _, _, table in tables(BENCHMARKS_PAGE):
        header = tuple(table[0])
        found.append((header, BENCH_TABLES.get(header), table[1:]))
    return found


def quantity_row(cells: list[str], config: dict) -> list[Callable]:
    """`quantity` | over its base [(clipping alone X)] | vmap(jax.grad) over jaxbp | peers over
    jaxbp: the getters in the order the page prints them."""
    name = QUANTITY_NAMES.get(cells[1], cells[1].strip("`"))
    rows = {r["quantity"]: r for g in config["groups"].values() for r in g["rows"]}
    row = rows[name]
    get = [lambda _, r=row, p=p: r["over_base"][p] for p in THREE]
    if "clipping alone" in cells[2]:
        get.append(lambda _: rows["dp clip step"]["over_base"]["median"])
    if cells[3]:
        get += [lambda _, r=row, p=p: r["reference"]["over_jaxbp"][p] for p in THREE]
    for peer in filter(None, (p.strip() for p in cells[4].split(","))):
        peer = PEER_NAMES.get(re.sub(r" [\d.]+ \[.*", "", peer), re.sub(r" [\d.]+ \[.*", "", peer))
        get += [lambda _, r=row, n=peer, p=p: r["peers"][n]["over_jaxbp"][p] for p in THREE]
    return get


def test_every_benchmark_table_is_known():
    found = bench_tables()
    headers = [h for h, _, _ in found]
    assert len(headers) == len(BENCH_TABLES) and set(headers) == set(BENCH_TABLES), (
        "a benchmark table is new or its header changed: list it in BENCH_TABLES",
        set(headers) ^ set(BENCH_TABLES),
    )
    for header, _, rows in found:
        assert all(len(r) == len(header) for r in rows), header


def test_benchmark_figures_equal_their_results():
    problems = []
    for header, (relative, columns), rows in bench_tables():
        if relative is None:
            continue  # columns says why: printed by the command the page cites beside it
        data = bench(relative)["configs"]
        source = f"benchmarks/results/{relative}"
        for cells in rows:
            name, _, described = cells[0].partition(": ")
            config = data[name]
            if described:  # "digits: 64-128-128-10 relu, ...": the config the file measured
                assert described == config["config"], (described, config["config"], source)
            get = columns if columns is not None else quantity_row(cells, config)
            get = get + NN_LSTM if "nn_lstm_over_jaxbp" in config.get("peers", {}) else get
            text = " | ".join(cells[1:] if columns is not None else cells[2:])
            if "faster" in text or "within the null" in text or "slower" in text:
                problems += check_verdict(name, cells, config)
            entry = [(None, g) for g in get]
            where = f"docs/benchmarks.md table {header[1]!r} row {' '.join(cells[:2])!r}"
            problems += check_row(where, text, entry, config, source)
    assert not problems, "\n".join(problems)


def check_verdict(name: str, cells: list[str], config: dict) -> list[str]:
    """The verdict "faster" only when the ratio's interval clears 1 and the null's interval."""
    r, null = config["gradient"]["ratio"], config["gradient"]["null_ratio"]
    if r["ci95_high"] < min(1.0, null["ci95_low"]):
        want = "faster"
    elif r["ci95_low"] > max(1.0, null["ci95_high"]):
        want = "slower"
    else:
        want = "within the null"
    said = cells[4].split(" (")[0]
    wrong = f"docs/benchmarks.md {name}: says {said!r}, its intervals say {want!r}"
    return [] if said == want else [wrong]


def test_benchmark_machine_lines_name_their_runs():
    """The environment each benchmark paragraph states is the one its results file recorded."""
    text = BENCHMARKS_PAGE.read_text()
    env = bench("results.json")["environment"]
    line = (
        f"Python {env['python']}, jax {env['jax']}, jaxlib {env['jaxlib']}, "
        f"numpy {env['numpy']}, torch {env['torch']}; {env['date']}."
    )
    assert line in text, line
    sequence = bench("sequence/results.json")["environment"]
    torch = sequence["torch"].split("+")[0]
    assert f"{sequence['date']}, torch {torch}; `benchmarks/results/sequence/`" in text
    vision = bench("vision/results.json")["environment"]
    torch = vision["torch"].split("+")[0]
    flat = " ".join(text.split())  # the page's line breaks fall anywhere
    assert f"{vision['date']}, torch {torch}; `benchmarks/results/vision/`" in flat
    gpt2 = bench("gpt2/results.json")["environment"]
    torch = gpt2["torch"].split("+")[0]
    assert f"{gpt2['date']}, torch {torch}; `benchmarks/results/gpt2/`" in flat
    quantities = bench("quantities/quantities.json")["environment"]
    assert f"cnn wide`, {quantities['date']}," in text
