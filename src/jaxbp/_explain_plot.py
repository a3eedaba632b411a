"""`jaxbp explain --plot`: the network on one example, forward values above each unit and edge and
backward values below, the factors of dL/dv1 and dL/dw11 numbered where they live; under it, the
two products as equations, and each gradient's batch mean beside jax.grad's number.

Every label is its own Text with a gid naming what it shows (`o[0][0]`, `dW[1][0][0]`,
`mean-v1`), so the SVG (text kept as text) can be read back and checked. Lengths are in points.
"""

from __future__ import annotations

import os
from pathlib import Path

from jaxbp._explain_graph import Numbers
from jaxbp._explain_layout import (
    ACT,
    BWD,
    FONT,
    FWD,
    LIGHT,
    Board,
    LayoutError,
    Names,
    chains,
    fmt,
    marks_for,
    place_edge_labels,
)

__all__ = ["check_path", "draw", "figure"]

R = 11  # node radius
ROW = 104  # vertical distance between units of a layer
LINE = 11.5  # one label line
LOSS_GAP = 190  # from the outputs to the cost
LEFT, RIGHT = 70, 100  # room for the inputs' labels, and the cost's
EQ_ROW = 62
BARS = 175


def draw(nums: Numbers, path: str | os.PathLike) -> Path:
    """Write the picture to `path`: PNG or SVG by its extension (SVG keeps text as text)."""
    import matplotlib

    from jaxbp.checkpoint import atomic_write

    fmt_ = check_path(path)
    fig = figure(nums)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "jaxbp"}):
        atomic_write(path, lambda f: fig.savefig(f, format=fmt_, dpi=100))
    import matplotlib.pyplot as plt

    plt.close(fig)
    return Path(path)


def check_path(path: str | os.PathLike) -> str:
    """The format a picture at `path` is written in, 'png' or 'svg'; anything else raises."""
    fmt_ = Path(path).suffix.lower().lstrip(".")
    if fmt_ not in ("png", "svg"):
        raise ValueError(f"the picture's file must end in .png or .svg, got {os.fspath(path)!r}")
    return fmt_


def figure(nums: Numbers):
    """The whole picture as a matplotlib Figure (drawn once, so text extents are final)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; works with no display
    import matplotlib.pyplot as plt

    layers, eqs = len(nums.spec.sizes) - 1, chains(nums)
    eq_w = max(240 + 145 * len(c.factors) for c in eqs)
    gap = 170 + 30 * max(nums.spec.sizes)  # between layer columns: room for each edge's labels
    gap = max(gap, (eq_w - LEFT - LOSS_GAP - RIGHT) / layers)  # as wide as the equations
    for _ in range(4):  # unlucky numbers (long ones, crowded edges): widen and lay out again
        try:
            return _figure(nums, eqs, gap, max(eq_w, 640))
        except LayoutError:
            plt.close("all")
            gap *= 1.25
    raise LayoutError(f"no room for every label of {nums.spec}; draw a smaller model")


def _figure(nums, eqs, gap, width):
    sizes, layers = nums.spec.sizes, len(nums.spec.sizes) - 1
    heights = [70, ROW * max(sizes) + 40, 22 + EQ_ROW * len(eqs), BARS]
    board = Board(max(LEFT + gap * layers + LOSS_GAP + RIGHT, width), heights)
    _title(board, nums)
    _network(board, nums, gap, Names(nums), eqs)
    _equations(board, nums, eqs)
    _batch(board, nums, eqs)
    board.fig.canvas.draw()
    return board.fig


def _title(board, nums):
    ax, (w, h) = board.band(0)
    top = "Derivative of the cost or of the activation? Both, multiplied along the path back"
    ax.text(w / 2, h - 4, top, ha="center", va="top", fontsize=12.5, weight="bold", gid="title")
    x, y = (", ".join(fmt(v) for v in a) for a in (nums.shown.x, nums.shown.y))
    what = "the seed's 2-2-1 sigmoid network" if nums.seed_like else f"the MLP {nums.spec}"
    y = y if len(nums.shown.y) == 1 else f"({y})"
    sub = f"{what}, cost L = ½ (y - y')², on example {nums.example + 1} of {nums.data}: "
    sub += f"x = ({x}), y = {y}"
    ax.text(w / 2, h - 24, sub, ha="center", va="top", fontsize=FONT + 1, gid="subtitle")
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=FWD, lw=3, label="forward pass (above): x, z, o = f(z), weights"),
        Line2D([], [], color=ACT, lw=3, label="derivative of the activation f'(z) (below)"),
        Line2D([], [], color=BWD, lw=3, label="backward pass (below): dL/dz = dL/db, dL/dw"),
    ]
    ax.legend(
        handles=handles, loc="lower center", ncol=3, frameon=False, fontsize=FONT,
        bbox_to_anchor=(0.5, 0.0), handlelength=1.4,
    )  # fmt: skip


def _network(board, nums, gap, names, eqs):
    ax, (w, h) = board.band(1)
    sizes, layers = nums.spec.sizes, len(nums.spec.sizes) - 1
    x0 = (w - (LEFT + gap * layers + LOSS_GAP + RIGHT)) / 2 + LEFT
    cols = [x0 + gap * c for c in range(layers + 1)] + [x0 + gap * layers + LOSS_GAP]
    mid = (h - 24) / 2

    def pos(c, j):
        return cols[c], mid + ((sizes[c] - 1) / 2 - j) * ROW

    marks, focus = marks_for(eqs), {e for c in eqs for e in c.path}
    edges = _edges(sizes, pos, cols[-1] - R)
    for key, a, b, _ in edges:
        color, lw = ("#555555", 2.2) if key in focus else ("#c8c8c8", 0.9)
        ax.plot([a[0], b[0]], [a[1], b[1]], color=color, lw=lw, zorder=1, solid_capstyle="round")
    for c in range(layers + 1):
        for j in range(sizes[c]):
            _node(board, ax, pos(c, j), names.node(c, j), names.unit_labels(nums, c, j), marks)
    for c, x in enumerate(cols):
        head = names.header(c) if c <= layers else "cost"
        ax.text(x, h - 6, head, ha="center", va="top", fontsize=FONT, gid=f"header[{c}]")
    _loss(board, ax, nums, cols[-1], pos(layers, 0)[1], pos(layers, sizes[-1] - 1)[1])
    pairs = [(*e, names.edge_labels(nums, e[0])) for e in edges]
    # the bold path first, then the flattest edges: a steep label has room further along
    order = sorted(pairs, key=lambda p: (p[0] not in focus, abs(p[2][1] - p[1][1])))
    place_edge_labels(board, ax, order, marks)


def _edges(sizes, pos, loss_x):
    """(key, start, end, preferred fraction for its labels) of every edge, the cost's last."""
    edges = []
    for c in range(len(sizes) - 1):
        n = sizes[c + 1]
        for i in range(sizes[c]):
            for j in range(n):
                t0 = 0.5 if n == 1 else 0.3 + 0.4 * j / (n - 1)  # staggered by target
                edges.append(((c, i, j), pos(c, i), pos(c + 1, j), t0))
    for k in range(sizes[-1]):
        a = pos(len(sizes) - 1, k)
        edges.append((("loss", k), a, (loss_x, a[1]), 0.5))
    return edges


def _loss(board, ax, nums, x, top, bottom):
    """The cost: one box spanning the outputs, each output's line entering it level."""
    from matplotlib.patches import Rectangle

    ax.add_patch(
        Rectangle((x - R, bottom - R), 2 * R, top - bottom + 2 * R, fc="#f4f4f4", ec="#333")
    )
    ax.text(x, (top + bottom) / 2, "L", ha="center", va="center", fontsize=FONT, weight="bold")
    total = "sum " if nums.spec.sizes[-1] > 1 else ""
    text = f"L = ½ {total}(y - y')² = {fmt(nums.shown.loss)}"
    board.label(ax, (x, top), (0, R + 3), text, "L", FWD, "bottom", {})


def _node(board, ax, xy, name, labels, marks):
    from matplotlib.patches import Circle

    ax.add_patch(Circle(xy, R, fc="white", ec="#333333", lw=1.2))
    ax.text(*xy, name, ha="center", va="center", fontsize=FONT, weight="bold", gid=f"node-{name}")
    above, below = labels
    for k, (text, gid) in enumerate(reversed(above)):
        board.label(ax, xy, (0, R + 3 + k * LINE), text, gid, FWD, "bottom", marks)
    for k, (text, gid, color) in enumerate(below):
        board.label(ax, xy, (0, -R - 3 - k * LINE), text, gid, color, "top", marks)


def _equations(board, nums, eqs):
    ax, (w, h) = board.band(2)
    head = "On this example each gradient is the product of the numbered factors in the network:"
    ax.text(12, h - 2, head, va="top", fontsize=FONT + 1, style="italic", gid="eq-heading")
    for r, chain in enumerate(eqs):
        y = h - 22 - EQ_ROW * r - EQ_ROW / 2
        prev = ax.text(
            12, y, f"dL/d{chain.name} =", va="center", fontsize=FONT + 1.5, weight="bold"
        )
        prev.set_gid(f"eq-{chain.name}")
        for k, m in enumerate(chain.factors):
            if k:
                prev = _after(ax, prev, "×", None, "black", None)
            text = f"{m.marker} {m.symbol}\n= {fmt(m.value)}\n{m.role}"
            prev = _after(ax, prev, text, f"eq-{chain.name}-{k}", m.color, LIGHT[m.color])
        prev = _after(ax, prev, "=", None, "black", None)
        text = f"dL/d{chain.name}\n= {fmt(chain.product)}\non this example"
        _after(ax, prev, text, f"eq-{chain.name}-product", BWD, "#fbe3e0", bold=True)


def _after(ax, prev, text, gid, color, face, bold=False):
    """A text just right of `prev`, centred on it vertically; boxed when `face` is given."""
    box = dict(boxstyle="round,pad=0.35", fc=face, ec=color, lw=0.8) if face else None
    return ax.annotate(
        text, xy=(1, 0.5), xycoords=prev, xytext=(9 if face else 7, 0), textcoords="offset points",
        ha="left", va="center", color=color, fontsize=FONT, bbox=box, gid=gid,
        weight="bold" if bold else "normal", linespacing=1.25,
    )  # fmt: skip


def _batch(board, nums, eqs):
    """Per chain: dL/dw on each example, their mean (backprop on the batch) and jax.grad's."""
    band, m = board.band_rect(3), len(nums.passes)
    per = band[2] / len(eqs)
    for r, chain in enumerate(eqs):
        ax = board.fig.add_axes(
            board.rect(band[0] + per * r + 40, band[1] + 42, per - 80, band[3] - 90)
        )
        values = [*chain.per_example, chain.batch, chain.referee]
        xs = [*range(m), m + 0.6, m + 1.6]
        _bars(ax, xs, values, nums.example)
        gids = [f"bar-{chain.name}-{i}" for i in range(m)]
        _bar_labels(ax, xs, values, [*gids, f"mean-{chain.name}", f"jaxgrad-{chain.name}"])
        names = [f"ex. {i + 1}" for i in range(m)] + ["mean", "jax.grad"]
        names[nums.example] += "\n(drawn above)"
        for k, (x, name) in enumerate(zip(xs, names)):
            ax.annotate(
                name, (x, 0), xycoords=("data", "axes fraction"), xytext=(0, -4),
                textcoords="offset points", ha="center", va="top", fontsize=FONT,
                gid=f"tick-{chain.name}-{k}",
            )  # fmt: skip
        agree = abs(chain.batch - chain.referee) <= 1e-9 * abs(chain.referee)
        title = (
            f"dC/d{chain.name} = mean over the {m} examples of dL/d{chain.name}\n"
            f"= {fmt(chain.batch)}; jax.grad: {fmt(chain.referee)} "
            f"({'agree' if agree else 'DISAGREE'})"
        )
        ax.set_title(title, fontsize=FONT + 0.5, gid=f"batch-title-{chain.name}")


def _bar_labels(ax, xs, values, gids):
    """Each bar's value at its end: above a positive bar, below a negative one."""
    for x, v, gid in zip(xs, values, gids):
        up = v >= 0
        ax.annotate(
            fmt(v), (x, v), xytext=(0, 2 if up else -2), textcoords="offset points",
            ha="center", va="bottom" if up else "top", fontsize=FONT, gid=gid,
        )  # fmt: skip


def _bars(ax, xs, values, shown):
    colors = ["#f1a9a0"] * (len(values) - 2) + [BWD, "#333333"]
    colors[shown] = BWD
    ax.bar(xs, values, color=colors, width=0.7)
    ax.axhline(0, color="#888888", lw=0.8)
    lo, hi = min(0, *values), max(0, *values)
    pad = 0.3 * (hi - lo or 1)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlim(-0.6, xs[-1] + 0.6)
    ax.set_xticks([]), ax.set_yticks([])
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
