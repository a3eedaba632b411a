"""What `jaxbp explain --plot` writes where: names and texts of every label, the two chains of
factors it marks, and a board that places labels in points without letting any two overlap."""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxbp._explain_graph import Numbers

FWD, ACT, BWD = "#1f4e9c", "#c45500", "#c0392b"  # forward, activation derivative, backward
LIGHT = {FWD: "#dde8f7", ACT: "#fde5cc", BWD: "#f9dcd8"}
FONT = 8.5
MARGIN = 14


class LayoutError(RuntimeError):
    """Some label found no free place: the caller widens the figure and tries again."""


def fmt(v) -> str:
    """3 significant digits; never '-0'."""
    v = float(v)
    return "0" if v == 0 or f"{v:.3g}" in ("-0", "0") else f"{v:.3g}"


@dataclasses.dataclass
class Factor:
    marker: str
    symbol: str
    value: float
    color: str
    role: str
    loc: str | None  # gid of the network label that shows it


@dataclasses.dataclass
class Chain:
    """dL/d(name) = product of factors on the shown example; per example, mean and jax.grad."""

    name: str
    factors: list
    product: float
    per_example: list
    batch: float
    referee: float
    path: set  # edge keys drawn bold: (layer, i, j) or ("loss", k)
    product_loc: str


def chains(nums: Numbers) -> list[Chain]:
    """dL/dv1 (into output unit 1 from unit 1 below) and, one layer further back, dL/dw11."""
    s, layers, seed = nums.shown, len(nums.spec.sizes) - 1, nums.seed_like
    last = layers - 1
    name = "v1" if layers > 1 else "w11"
    if layers > 1:
        source = ("o1", s.o[last - 1][0], f"o[{last - 1}][0]")
    else:
        source = ("x1", s.x[0], "x[0]")
    cost = Factor("①", "y' - y", s.dL_dyhat[0], BWD, "derivative of the cost", "dy[0]")
    fsym = "f_B'(z_B)" if seed else ("f'(z) at y'" if nums.spec.sizes[-1] == 1 else "f'(z) at y'1")
    at = f"fprime[{last}][0]"
    act = Factor("②", fsym, s.fprime[last][0], ACT, "derivative of the activation", at)
    dz = f"dz{'_B' if seed else ''}/d{name}"
    into = Factor("③", source[0], source[1], FWD, f"input of {name} ({dz})", source[2])
    out = [_chain(nums, name, [cost, act, into], (last, 0, 0), {(last, 0, 0), ("loss", 0)})]
    if layers > 1:
        out.append(_chain(nums, "w11", _back_factors(nums, cost, act), (0, 0, 0), {(0, 0, 0)}))
        if layers == 2 and nums.spec.sizes[-1] == 1:  # one path back: draw all of it
            out[-1].path |= out[0].path
    return out


def _back_factors(nums, cost, act):
    s, seed = nums.shown, nums.seed_like
    f1_name = "f_1'(z1)" if seed else "f'(z) at unit 1"
    f1 = Factor("⑤", f1_name, s.fprime[0][0], ACT, "derivative of the activation", "fprime[0][0]")
    x1 = Factor("⑥", "x1", s.x[0], FWD, "input of w11 (dz1/dw11)", "x[0]")
    if len(nums.spec.sizes) == 3 and nums.spec.sizes[-1] == 1:
        v1 = Factor("④", "v1", nums.weights[1][0, 0], FWD, "weight on the way back", "W[1][0][0]")
        return [cost, act, v1, f1, x1]
    total = float(np.dot(nums.weights[1][0], s.delta[1]))
    back = Factor("④", "dL/do1", total, BWD, "Σk w1k dL/dzk, from above", None)
    return [back, f1, x1]


def _chain(nums, name, factors, key, path):
    layer, i, j = key
    pick = lambda grads: float(grads[layer][i, j])  # noqa: E731
    return Chain(
        name, factors, pick(nums.shown.grads), [pick(p.grads) for p in nums.passes],
        pick(nums.batch_grads), pick(nums.referee), path, f"dW[{layer}][{i}][{j}]",
    )  # fmt: skip


class Names:
    """The text of every label in the network: the seed's names (x1, 1, 2, B; w11, v1), or
    generic ones (z, o, f'(z)) for a custom model, whose focus weights are still w11 and v1."""

    def __init__(self, nums: Numbers):
        self.seed, self.spec = nums.seed_like, nums.spec
        self.layers = len(nums.spec.sizes) - 1

    def node(self, c: int, j: int) -> str:
        if c == 0:
            return f"x{j + 1}"
        if c == self.layers:
            return "B" if self.seed else ("y'" if self.spec.sizes[-1] == 1 else f"y'{j + 1}")
        return str(j + 1)

    def header(self, c: int) -> str:
        if c == 0:
            return "input"
        if c == self.layers:
            return f"output ({self.spec.output_activation or 'linear'})"
        return f"{'hidden' if self.seed else f'layer {c}'} ({self.spec.activation})"

    def _suffix(self, c, j):
        return ("_B" if c == self.layers else str(j + 1)) if self.seed else ""

    def unit_labels(self, nums, c, j):
        """(above: [(text, gid)], below: [(text, gid, color)]) of unit j in column c."""
        s = nums.shown
        if c == 0:
            return [(f"x{j + 1} = {fmt(s.x[j])}", f"x[{j}]")], []
        k, suf = c - 1, self._suffix(c, j)
        o_name = "y'" if c == self.layers else f"o{suf}"
        above = [(f"z{suf} = {fmt(s.z[k][j])}", f"z[{k}][{j}]")]
        above.append((f"{o_name} = {fmt(s.o[k][j])}", f"o[{k}][{j}]"))
        f_name = f"f_{self.node(c, j)}'(z{suf})" if self.seed else "f'(z)"
        below = [(f"{f_name} = {fmt(s.fprime[k][j])}", f"fprime[{k}][{j}]", ACT)]
        below.append((f"dL/dz{suf} = {fmt(s.delta[k][j])}", f"delta[{k}][{j}]", BWD))
        return above, below

    def weight(self, key) -> str | None:
        c, i, j = key
        if self.seed:
            return f"w{i + 1}{j + 1}" if c == 0 else f"v{i + 1}"
        if (i, j) == (0, 0) and c in (0, self.layers - 1):
            return "w11" if c == 0 else "v1"
        return None

    def edge_labels(self, nums, key):
        """((text, gid) above or None, (text, gid) below) for an edge key."""
        s = nums.shown
        if key[0] == "loss":
            k = key[1]
            return (f"y = {fmt(s.y[k])}", f"y[{k}]"), (
                f"dL/dy' = y' - y = {fmt(s.dL_dyhat[k])}",
                f"dy[{k}]",
            )
        c, i, j = key
        name, w, g = self.weight(key), nums.weights[c][i, j], s.grads[c][i, j]
        above = f"{name} = {fmt(w)}" if name else fmt(w)
        below = f"dL/d{name} = {fmt(g)}" if name else fmt(g)
        return (above, f"W[{c}][{i}][{j}]"), (below, f"dW[{c}][{i}][{j}]")


class Board:
    """A figure of horizontal bands, each an axes whose data units are points; it remembers the
    display box of every label placed, so the next one can avoid them."""

    def __init__(self, width: float, heights: list[float]):
        import matplotlib.pyplot as plt

        self.width, self.heights = width + 2 * MARGIN, heights
        self.height = sum(heights) + 2 * MARGIN
        self.fig = plt.figure(figsize=(self.width / 72, self.height / 72), dpi=100)
        self.renderer = self.fig.canvas.get_renderer()
        self.placed = []

    def rect(self, x, y, w, h):
        return [x / self.width, y / self.height, w / self.width, h / self.height]

    def band_rect(self, i):
        top = self.height - MARGIN - sum(self.heights[:i])
        return MARGIN, top - self.heights[i], self.width - 2 * MARGIN, self.heights[i]

    def band(self, i):
        x, y, w, h = self.band_rect(i)
        ax = self.fig.add_axes(self.rect(x, y, w, h))
        ax.set_xlim(0, w), ax.set_ylim(0, h), ax.axis("off")
        return ax, (w, h)

    def box(self, artist):
        return artist.get_window_extent(self.renderer)

    def free(self, *artists, inside=None) -> bool:
        """No overlap (with 2 px to spare) with any placed box; within `inside` when given."""
        for a in artists:
            b = self.box(a).padded(2)
            if inside is not None and not _within(b, inside):
                return False
            if any(b.overlaps(p) for p in self.placed):
                return False
        return True

    def label(self, ax, xy, offset, text, gid, color, va, marks):
        """A label at `offset` points from the data point `xy`; bold on a tinted box when `marks`
        names it. Never rotated, so its window extent is its true outline."""
        mark = marks.get(gid)
        if mark is not None:
            text = f"{mark.marker} {text}" if mark.marker else text
        t = ax.annotate(
            text, xy, xytext=offset, textcoords="offset points", ha="center", va=va, color=color,
            fontsize=FONT, gid=gid, weight="bold" if mark is not None else "normal",
            bbox=_face(mark, color),
        )  # fmt: skip
        self.placed.append(self.box(t))
        return t


def _within(b, outer) -> bool:
    return outer.x0 <= b.x0 and b.x1 <= outer.x1 and outer.y0 <= b.y0 and b.y1 <= outer.y1


def _face(mark, color):
    face = LIGHT.get(color, "#f9dcd8") if mark is not None else "white"
    return dict(boxstyle="round,pad=0.15", fc=face, ec="none", alpha=0.92)


def marks_for(chs: list[Chain]) -> dict:
    """gid -> what marks it: each factor's network label, and each chain's product on its edge."""
    marks = {f.loc: f for c in chs for f in c.factors if f.loc}
    for c in chs:
        marks[c.product_loc] = Factor("", "", c.product, BWD, "", c.product_loc)
    return marks


def place_edge_labels(board, ax, edges, marks):
    """Each edge's (above, below) pair straddles the edge line at the first fraction t along it,
    from its preferred one outwards, where neither overlaps a label already placed."""
    inside = board.box(ax)
    for key, a, b, t0, (above, below) in edges:
        texts = []
        for (text, gid), dy, va in ((above, 2.5, "bottom"), (below, -2.5, "top")):
            color = BWD if va == "top" else FWD
            texts.append(board.label(ax, a, (0, dy), text, gid, color, va, marks))
            board.placed.pop()
        for t in sorted(np.arange(0.14, 0.87, 0.02), key=lambda t: abs(t - t0)):
            xy = (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))
            for text in texts:
                text.xy = xy
            if board.free(*texts, inside=inside):
                break
        else:
            raise LayoutError(f"no room for the labels of edge {key}")
        board.placed += [board.box(t) for t in texts]
