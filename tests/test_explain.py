"""The seed's worked example against numbers computed by hand, `jaxbp explain`'s output, and
`jaxbp explain --plot`'s picture read back from its SVG."""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import re
from pathlib import Path
from xml.etree import ElementTree

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from jaxbp._explain_graph import parse_model, spec_data
from jaxbp._explain_layout import chains
from jaxbp._explain_plot import figure
from jaxbp.cli import main
from jaxbp.explain import SEED_MODEL, chain_factors, picture_numbers, seed_params, xor_data
from jaxbp.layers import mlp

# Its module fixture is costly: one worker runs the whole module, so the fixture runs once.
pytestmark = pytest.mark.xdist_group("explain")

# All weights zero but v1 = 1: o1 = o2 = 1/2, z_B = 1/2, y' = sigmoid(1/2) for every example.
WEIGHTS = [0, 0, 0, 0, 0, 0, 1, 0, 0]


def _by_hand():
    y_hat = 1 / (1 + math.exp(-0.5))
    targets = [0, 1, 1, 0]
    dL_dyhat = [y_hat - t for t in targets]  # (y' - y), not (y - y')
    fB = y_hat * (1 - y_hat)
    dv1 = sum(d * fB * 0.5 for d in dL_dyhat) / 4
    # w11: x1 is 1 only for examples 3 and 4; f_1'(z_1) = 1/4 at z_1 = 0; v1 = 1.
    dw11 = sum(dL_dyhat[i] * fB * 1.0 * 0.25 * x1 for i, x1 in enumerate([0, 0, 1, 1])) / 4
    return y_hat, dL_dyhat, fB, dv1, dw11


def test_factors_match_hand_computation(x64):
    params = seed_params(weights=WEIGHTS, dtype=jnp.float64)
    f = chain_factors(params, *xor_data(jnp.float64))
    y_hat, dL_dyhat, fB, dv1, dw11 = _by_hand()
    assert f["y_hat"].tolist() == pytest.approx([y_hat] * 4, rel=1e-15)
    assert f["dL_dyhat"].tolist() == pytest.approx(dL_dyhat, rel=1e-15)
    assert f["fB_prime"].tolist() == pytest.approx([fB] * 4, rel=1e-15)
    assert f["dzB_dv1"].tolist() == pytest.approx([0.5] * 4, rel=1e-15)
    assert float(f["dL_dv1"].mean()) == pytest.approx(dv1, rel=1e-14)
    assert float(f["dL_dw11"].mean()) == pytest.approx(dw11, rel=1e-14)


def test_explain_prints_every_factor_and_agrees_with_jax_grad(capsys):
    assert main(["explain", "--weights", *map(str, WEIGHTS)]) == 0
    out = capsys.readouterr().out
    _, _, _, dv1, dw11 = _by_hand()
    assert f"dC/dv1 = mean = {dv1:+.10f}" in out
    assert f"dC/dw11 = mean = {dw11:+.10f}" in out
    assert "y' - y" in out and "drops that minus sign" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["v1"], ["w11"])]
    assert [row[0] for row in rows] == ["w11", "v1"]  # the table's two rows, each checked below
    for name, by_hand, bp, grad, err in rows:
        assert float(bp) == pytest.approx(float(grad), rel=1e-12), name
        assert float(by_hand) == pytest.approx(float(bp), rel=1e-12), name
        assert float(err) <= 1e-12


def test_explain_with_a_seed_matches_jax_grad(capsys):
    assert main(["explain", "--seed", "3"]) == 0
    table = capsys.readouterr().out.split("Every weight")[1].splitlines()[2:]
    assert len(table) == 9
    assert all(float(row.split()[-1]) <= 1e-12 for row in table)


def test_explain_rejects_a_wrong_number_of_weights(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", "--weights", "1", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--weights" in err


# --- jaxbp explain --plot: the picture, read back from its SVG -------------------------------

NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?")


def _svg_labels(path) -> dict[str, str]:
    """{gid: its text, lines joined by newlines} of every labelled group in an SVG."""
    ns = "{http://www.w3.org/2000/svg}"
    labels = {}
    for group in ElementTree.parse(path).iter(f"{ns}g"):
        lines = [t.text or "" for t in group.iter(f"{ns}text")]
        if group.get("id") and lines:
            labels[group.get("id")] = "\n".join(lines)
    return labels


def _shown(text: str) -> float:
    """The number a label shows: the one after its last '= ', or its only one."""
    return float(NUMBER.search(text.rsplit("= ", 1)[-1]).group())


def _assert_shows(labels, gid, value, rounded=0.0):
    """The label shows `value` to 3 significant digits; `rounded` is how far `value` itself
    may be from the truth (a printed number's last decimal)."""
    shown, value = _shown(labels[gid]), float(value)
    digit = 10 ** (math.floor(math.log10(abs(value))) - 2) if abs(value) > rounded else 0.0
    assert abs(shown - value) <= 0.5 * digit * (1 + 1e-9) + rounded, (gid, labels[gid], value)


def _run(args) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["explain", *args]) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def seed_picture(tmp_path_factory):
    svg = tmp_path_factory.mktemp("explain") / "seed.svg"
    return _run(["--plot", str(svg)]), _svg_labels(svg), svg


def _printed_rows(out: str, header: str) -> list[list[float]]:
    """The 4 rows (example 1-4) of the table under the first line that starts with `header`."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(header))
    table = next(i for i in range(start, len(lines)) if lines[i].split()[:1] == ["example"])
    return [[float(v) for v in lines[table + k].split()[1:]] for k in range(1, 5)]


def test_plot_writes_png_and_svg(tmp_path, seed_picture):
    out, labels, svg = seed_picture
    assert f"wrote {svg}" in out
    text = svg.read_text()
    assert text.startswith("<?xml") and "<text" in text  # svg.fonttype 'none': text stays text
    assert len(labels) > 80
    png = tmp_path / "seed.PNG"  # the extension picks the format, in any case
    assert "wrote" in _run(["--plot", str(png), "--seed", "3"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_picture_shows_what_explain_prints_and_jax_grad(seed_picture, x64):
    out, labels, _ = seed_picture
    forward = _printed_rows(out, "Forward pass")[3]  # example 4: the one drawn
    x1, _, o1, o2, z_b, y_hat, y = forward
    for gid, value in [("x[0]", x1), ("o[0][0]", o1), ("o[0][1]", o2), ("z[1][0]", z_b)]:
        _assert_shows(labels, gid, value, rounded=5e-7)
    for gid, value in [("o[1][0]", y_hat), ("y[0]", y)]:
        _assert_shows(labels, gid, value, rounded=5e-7)
    v1_rows, w11_rows = _printed_rows(out, "dC/dv1"), _printed_rows(out, "dC/dw11")
    dy, f_b, o1_again, dv1 = v1_rows[3]
    _, _, v1, f_1, _, dw11 = w11_rows[3]
    shown = {"dy[0]": dy, "fprime[1][0]": f_b, "dW[1][0][0]": dv1, "W[1][0][0]": v1}
    shown |= {"fprime[0][0]": f_1, "dW[0][0][0]": dw11, "eq-v1-0": dy, "eq-v1-2": o1_again}
    shown |= {"eq-v1-product": dv1, "eq-w11-2": v1, "eq-w11-3": f_1, "eq-w11-product": dw11}
    for i in range(4):  # the batch panel: each example's product
        shown |= {f"bar-v1-{i}": v1_rows[i][3], f"bar-w11-{i}": w11_rows[i][5]}
    for gid, value in shown.items():
        _assert_shows(labels, gid, value, rounded=5e-7)
    means = dict(re.findall(r"(dC/d\w+) = mean = (\S+)", out))
    table = out.split("Every weight")[1].splitlines()[2:11]
    grads = {row.split()[0]: row.split()[-2] for row in table}  # the jax.grad column
    for name in ("v1", "w11"):
        _assert_shows(labels, f"mean-{name}", means[f"dC/d{name}"], rounded=5e-11)
        _assert_shows(labels, f"jaxgrad-{name}", grads[name], rounded=5e-11)
    # and against jax.grad itself, here, on a cost written out in the test
    x, y = xor_data(jnp.float64)
    params = seed_params(dtype=jnp.float64)
    cost = lambda p: 0.5 * jnp.mean(jnp.sum((y - SEED_MODEL.apply(p, x)) ** 2, axis=1))  # noqa: E731
    g = jax.grad(cost)(params)
    _assert_shows(labels, "jaxgrad-v1", g[2]["W"][0, 0])
    _assert_shows(labels, "jaxgrad-w11", g[0]["W"][0, 0])
    _assert_shows(labels, "mean-v1", g[2]["W"][0, 0])


CUSTOM = ["--model", "3,4,2:tanh", "--seed", "2", "--example", "2"]


def test_custom_model_shows_every_unit_and_edge_as_jax_grad_has_them(tmp_path, x64):
    svg = tmp_path / "custom.svg"
    assert "the MLP 3,4,2:tanh on example 2 of 4 random examples" in _run(
        ["--plot", str(svg), *CUSTOM]
    )
    labels = _svg_labels(svg)
    model = mlp([4, 2], "tanh")
    _, params = model.init(jax.random.PRNGKey(2), (3,))  # --seed 2: the weights
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x, y, _ = spec_data(parse_model("3,4,2:tanh"), 2)
    assert x.shape == (4, 3) and y.shape == (4, 2)

    def loss(p, x, y):  # L = 1/2 sum_k (y_k - y'_k)^2 on one example; C = its batch mean
        return 0.5 * jnp.sum((y - model.apply(p, x[None])[0]) ** 2)

    g = jax.grad(loss)(params, x[1], y[1])  # example 2
    z0 = x[1] @ params[0]["W"] + params[0]["b"]
    o0 = jnp.tanh(z0)
    z1 = o0 @ params[2]["W"] + params[2]["b"]
    units = {"z[0]": z0, "o[0]": o0, "z[1]": z1, "o[1]": z1, "dy": z1 - y[1]}
    units |= {"fprime[0]": jax.vmap(jax.grad(jnp.tanh))(z0), "fprime[1]": jnp.ones(2)}
    units |= {"delta[0]": g[0]["b"], "delta[1]": g[2]["b"]}  # dL/dz = dL/db
    shown = 0
    for name, values in units.items():
        for j, value in enumerate(values):
            _assert_shows(labels, f"{name}[{j}]", value)
            shown += 1
    assert shown == 4 * 4 + 2 * 5  # hidden (4 units): z, o, f', delta; output (2): those and dy
    edges = 0
    for layer, key in ((0, 0), (1, 2)):
        for (i, j), w in np.ndenumerate(np.asarray(params[key]["W"])):
            _assert_shows(labels, f"W[{layer}][{i}][{j}]", w)
            _assert_shows(labels, f"dW[{layer}][{i}][{j}]", g[key]["W"][i, j])
            edges += 1
    assert edges == 3 * 4 + 4 * 2
    batch = jax.grad(lambda p: jnp.mean(jax.vmap(loss, (None, 0, 0))(p, x, y)))(params)
    for name, w in (("v1", batch[2]["W"][0, 0]), ("w11", batch[0]["W"][0, 0])):
        _assert_shows(labels, f"mean-{name}", w)
        _assert_shows(labels, f"jaxgrad-{name}", w)


@pytest.mark.parametrize(
    "spec, asked, limit",
    [("2,5,1:tanh", "5 units", "4 units per layer"), ("2,3,3,3,1:tanh", "4 layers", "3 layers")],
)
def test_plot_refuses_a_model_too_large_to_draw(tmp_path, capsys, spec, asked, limit):
    path = tmp_path / "big.png"
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", "--plot", str(path), "--model", spec])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("jaxbp explain: error:")
    assert asked in err and limit in err and spec in err
    assert not path.exists()


@pytest.mark.parametrize("name", ["picture.pdf", "picture", "picture.png.txt"])
def test_plot_refuses_an_extension_other_than_png_or_svg(tmp_path, capsys, name):
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", "--plot", str(tmp_path / name)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ".png or .svg" in err and name in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "2,3,1:tanh"], "give --plot PATH too"),
        (["--plot", "x.png", "--model", "2,3,1:tanh", "--weights", *"123456789"], "--model takes"),
        (["--plot", "x.png", "--example", "5"], "--example must be 1 to 4"),
    ],
)
def test_plot_options_that_do_not_go_together(capsys, args, message):
    assert main(["explain", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def _overlapping_labels(fig) -> tuple[int, list]:
    """How many labels the figure has, and each pair whose boxes (by the renderer) overlap."""
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    overlapping = [
        (a, b)
        for (a, p), (b, q) in itertools.combinations(boxes, 2)
        if min(p.x1, q.x1) > max(p.x0, q.x0) and min(p.y1, q.y1) > max(p.y0, q.y0)
    ]
    return len(boxes), overlapping


@pytest.mark.parametrize("model", [None, "3,4,2:tanh", "4,4,4,4:relu:sigmoid"])
def test_no_two_labels_overlap(model):
    import matplotlib.pyplot as plt  # after figure() chose the Agg backend

    fig = figure(picture_numbers(model, seed=2))
    count, overlapping = _overlapping_labels(fig)
    plt.close(fig)
    assert count > 80 and overlapping == []


def test_the_overlap_check_sees_an_overlap():
    fig = Figure(figsize=(3, 2))
    FigureCanvasAgg(fig)
    fig.text(0.2, 0.5, "dL/dv1 = 0.122")
    fig.text(0.3, 0.52, "v1 = 0.276")
    fig.text(0.2, 0.1, "far away")
    fig.canvas.draw()
    assert _overlapping_labels(fig) == (3, [("dL/dv1 = 0.122", "v1 = 0.276")])


def test_readme_shows_the_committed_picture_and_the_command_that_makes_it():
    root = Path(__file__).resolve().parents[1]
    readme, tutorial = (root / "README.md").read_text(), (root / "docs" / "tutorial.md").read_text()
    assert "(docs/explain.png)" in readme and "jaxbp explain --plot docs/explain.png" in tutorial
    assert "(explain.png)" in tutorial
    assert (root / "docs" / "explain.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("model", [None, "2,3,1:tanh:sigmoid", "3,4,2:tanh", "2,3,2,1:relu"])
def test_the_equations_drawn_are_true(model):
    """Each chain's factors multiply to the gradient backprop gives on the example drawn."""
    drawn = chains(picture_numbers(model, seed=1, example=3))
    assert [chain.name for chain in drawn] == ["v1", "w11"]
    for chain in drawn:
        # dC/dv1 has at least dL/dy', f' and o1 as factors; one product per example of 4
        assert len(chain.factors) >= 3 and len(chain.per_example) == 4, chain.name
        product = math.prod(f.value for f in chain.factors)
        assert product == pytest.approx(chain.product, rel=1e-12, abs=1e-15), chain.name
        assert np.mean(chain.per_example) == pytest.approx(chain.batch, rel=1e-12, abs=1e-15)
        assert chain.batch == pytest.approx(chain.referee, rel=1e-12, abs=1e-15)
