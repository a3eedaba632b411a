"""The quantity benchmark compares like with like: its vmap(jax.grad) references compute what
they are named for, the torch network is jaxbp's function, BackPACK's quantity is jaxbp's, and a
quick run reports every row (timed, or why not). No timing is asserted."""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _torch_peers import Positions, assert_leaves_close, peer, to_float64
from jax.flatten_util import ravel_pytree

import jaxbp.bench
from jaxbp import backprop
from jaxbp.bench import _vmap_reference as reference
from jaxbp.bench import quantities
from jaxbp.bench.mlp import Config
from jaxbp.bench.vision import VisionConfig
from jaxbp.cli import main

pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.xdist_group("bench_quantities"),  # its module fixture runs once, on one worker
]
KEY = jax.random.PRNGKey(0)
TINY = Config("tiny", 6, (5, 3), "relu", "softmax_cross_entropy", 4)
TINY_CNN = VisionConfig(
    "tiny_cnn", "cnn", (("features", (3,)), ("hidden", 5), ("convs", 1)), (4, 4, 2), 3
)


def _f64(config):
    model, loss, params, x, y, shape = quantities.problem(config)
    to64 = lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a  # noqa: E731
    return model, loss, jax.tree.map(to64, params), to64(x), y, shape


def _ggn(model, loss, params, x, y):
    """G = J^T H J of C over the whole batch, from full Jacobians: (P, P)."""
    flat, unravel = ravel_pytree(params)
    y_pred = model.apply(params, x)
    J = jax.jacobian(lambda w: model.apply(unravel(w), x).ravel())(flat)
    H = jax.hessian(lambda z: loss.apply(z.reshape(y_pred.shape), y))(y_pred.ravel())
    return J.T @ H @ J, flat, unravel


def test_the_vmap_references_compute_what_they_are_named_for(x64):
    # float64: the references and the closed forms differ only by rounding (~1e-16 relative)
    model, loss, params, x, y, _ = _f64(
        TINY_CNN
    )  # conv, pooling, flatten and dense: every kind in the configs
    refs = reference.functions(model, loss)

    @jax.jit  # one program: eager dispatch of these small ops is what would take the time
    def both(params):
        flat_grads = jax.vmap(lambda g: ravel_pytree(g)[0])(refs["vmap(grad)"](params, x, y))
        G, flat, unravel = _ggn(model, loss, params, x, y)
        v = unravel(jnp.cos(jnp.arange(flat.size, dtype=flat.dtype)))
        ours = (flat_grads.mean(0), refs["vmap(grad) norms"](params, x, y),
                ravel_pytree(refs["jacobians"](params, x, y))[0],
                ravel_pytree(refs["jvp + vjp"](params, x, y, v))[0])  # fmt: skip
        grad = ravel_pytree(backprop(model, loss, params, x, y)[1])[0]
        closed = (grad, jnp.linalg.norm(flat_grads, axis=1), jnp.diag(G), G @ ravel_pytree(v)[0])
        return ours, closed

    for ours, closed in zip(*both(params)):
        np.testing.assert_allclose(ours, closed, rtol=1e-10, atol=1e-14)


def test_the_vmap_dp_reference_clips_each_example_and_adds_the_noise_asked(x64):
    model, loss, params, x, y, _ = _f64(TINY)

    @jax.jit
    def grads(params):
        one = reference.vmap_dp_sgd(1e-3, 0.0)(model, loss, params, x[:1], y[:1], key=KEY)[1]
        unclipped = reference.vmap_dp_sgd(1e6, 0.0)(model, loss, params, x, y, key=KEY)[1]
        noisy = reference.vmap_dp_sgd(1e6, 1.0)(model, loss, params, x, y, key=KEY)[1]
        mean = backprop(model, loss, params, x, y)[1]
        return [ravel_pytree(g)[0] for g in (one, unclipped, noisy, mean)]

    one, unclipped, noisy, mean = grads(params)
    # one example, its norm far above 1e-3: clipped to exactly that norm
    assert float(jnp.linalg.norm(one)) == pytest.approx(1e-3, rel=1e-12)
    np.testing.assert_allclose(unclipped, mean, rtol=1e-10)  # nothing clipped, no noise
    noise = (noisy - mean) * len(x)  # N(0, (1e6)^2) per coordinate
    assert 0.5e6 < float(jnp.std(noise)) < 2e6  # 53 draws: far inside these bounds


def test_jaxbp_quantities_agree_with_the_references_they_are_timed_against(x64):
    fns = {n: quantities.jaxbp_function(n) for n in ("per_example_norms", "diag_ggn")}
    assert None not in fns.values(), f"jaxbp.quantities lacks {fns}"
    model, loss, params, x, y, _ = _f64(TINY_CNN)
    refs = reference.functions(model, loss)

    @jax.jit
    def both(params):
        ours = [fns[name](model, loss, params, x, y) for name in fns]
        return ours, [refs["vmap(grad) norms"](params, x, y), refs["jacobians"](params, x, y)]

    for ours, ref in zip(*(jax.tree.leaves(t) for t in both(params))):
        np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-14)


def _peer_problem(config):
    """The problem with float32 values held in float64, and its torch network in float64."""
    from jaxbp.bench import torch_quantities as tq

    model, loss, params, x, y, shape = quantities.problem(config)
    params, x = to_float64((params, x))
    net = tq.network(model, params, shape).double()
    xt, yt = tq.inputs(x, np.array(y))  # a copy: torch wants a writable array
    return model, loss, params, x, y, net, xt.double(), yt, lambda p: tq.network(model, p, shape)


# float64 on both sides from the same float32 values: they differ only in the order of their
# sums, ~1e-16 per operation over reductions of at most a few hundred terms; 1e-10 relative (per
# leaf, in norm) is far above that and far below any real difference.
RTOL = 1e-10


def test_the_torch_network_is_jaxbps_function_and_backpack_its_quantities(x64):
    torch = peer("torch")
    backpack = peer("backpack")
    from backpack import extensions as e

    model, loss, params, x, y, net, xt, yt, build = _peer_problem(TINY_CNN)
    assert not any(type(m).__name__ == "_ChannelsLastFlatten" for m in net.modules())
    ours = model.apply(params, x)
    theirs = net(xt).detach().numpy()
    np.testing.assert_allclose(theirs, ours, rtol=RTOL, atol=RTOL * abs(ours).max())
    net = backpack.extend(net)
    with backpack.backpack(
        e.BatchGrad(), e.BatchL2Grad(), e.Variance(), e.SumGradSquared(), e.DiagGGNExact()
    ):
        backpack.extend(torch.nn.CrossEntropyLoss())(net(xt), yt).backward()
    m, where = len(x), Positions(build, params)
    theirs = lambda field, scale, lead=(): where.tree(  # noqa: E731
        [getattr(p, field).detach().numpy() * scale for p in net.parameters()], lead
    )
    # BackPACK's are of the mean loss C: its per-example gradients are g_i / m, so its squares
    # carry 1/m^2, and its Variance is sgs/m - (grad C/m)^2 = (mean g_i^2 - (grad C)^2) / m^2.
    import jaxbp.quantities as q

    for name, field, scale, lead in [
        ("per_example_grads", "grad_batch", m, (m,)), ("diag_ggn", "diag_ggn_exact", 1, ()),
        ("sum_grad_squared", "sum_grad_squared", m * m, ()),
        ("grad_variance", "variance", m * m, ()),
    ]:  # fmt: skip
        ours = getattr(q, name)(model, loss, params, x, y)
        assert_leaves_close(theirs(field, scale, lead), ours, rtol=RTOL, what=name)
    squares = sum(p.batch_l2.detach().numpy() for p in net.parameters()) * m * m
    norms = q.per_example_norms(model, loss, params, x, y)
    np.testing.assert_allclose(np.sqrt(squares), norms, rtol=RTOL)


@pytest.mark.parametrize("config", [TINY, TINY_CNN], ids=["mlp", "cnn"])
@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_opacus_takes_jaxbps_dp_sgd_step(config, mode, x64):
    peer("torch")
    peer("opacus")
    from jaxbp.bench import torch_quantities as tq
    from jaxbp.quantities import dp_sgd

    model, loss, params, x, y, net, xt, yt, build = _peer_problem(config)
    norms = np.sort(np.asarray(reference.functions(model, loss)["vmap(grad) norms"](params, x, y)))
    clip = float(norms[len(norms) // 2 - 1] + norms[len(norms) // 2]) / 2  # some clipped, some not
    # lr 1: the step is -grads, read back as before - after at a loss of ~1e-16 ||p|| / ||step||
    step = tq._opacus(net, xt, yt, clip, 0.0, 1.0, mode == "ghost")
    before = [p.detach().clone() for p in step.net.parameters()]
    step()
    steps = [(b - p.detach()).numpy() for b, p in zip(before, step.net.parameters())]
    # Opacus clips by C / (||g_i|| + 1e-6), jaxbp by C / max(||g_i||, C): weights of Opacus's
    # factor over jaxbp's make jaxbp's step Opacus's, exactly.
    engine = dp_sgd(clip, 0.0, delta=None)
    g = np.asarray(engine.with_stats(model, loss, params, x, y)[2]["norms"])
    assert (g > clip).any() and (g < clip).any()
    weights = np.minimum(1, clip / (g + 1e-6)) / np.minimum(1, clip / g)
    _, grads = engine(model, loss, params, x, y, weights=weights)
    theirs = Positions(build, params).tree(steps)
    assert_leaves_close(theirs, grads, rtol=RTOL, what=f"Opacus {mode}")


@pytest.fixture(scope="module")
def dp_run():
    """One quick run of the DP group on TINY: four jax steps and, with torch, three peers."""
    lines = []
    result = quantities.run_config(TINY, quick=True, groups=("dp",), report=lines.append)
    return result, lines


def test_a_quick_run_reports_every_row_timed_or_why_not(dp_run):
    result, lines = dp_run
    assert [line.split(":")[0].strip() for line in lines] == ["dp"]
    group = result["groups"]["dp"]
    names = [row["quantity"] for row in group["rows"]]
    assert names == ["sgd step", "dp_sgd step", "dp clip step", "clipped sum"]
    dp = group["rows"][1]
    assert dp["s"] > 0 and dp["over_base"]["median"] > 0
    assert dp["reference"]["over_jaxbp"]["median"] > 0 and np.isfinite(dp["noise_share"])
    for name, entry in dp["peers"].items():  # timed with its ratios, or said why not
        assert ("over_jaxbp" in entry and group["memory_bytes"][name] >= 0) != ("missing" in entry)
    assert all(group["memory_bytes"][n] > 0 for n in ("sgd step", "dp_sgd step"))
    table = quantities.to_markdown(
        {"environment": jaxbp.bench.environment(), "quick": True, "configs": {"tiny": result}}
    )
    assert "| tiny | dp_sgd step |" in table and "DP-SGD step, noise included" in table


def test_without_torch_the_peers_say_so_and_nothing_fails(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    monkeypatch.setitem(sys.modules, "jaxbp.bench.torch_quantities", None)
    monkeypatch.delattr(jaxbp.bench, "torch_quantities", raising=False)
    model, _, params, x, y, shape = quantities.problem(TINY)
    fns, missing = quantities._torch_candidates("dp", TINY, model, params, x, y, shape)
    assert fns == {} and set(missing.values()) == {"torch not installed"}
    assert set(missing) == {"torch step", "Opacus hooks", "Opacus ghost"}


def test_cli_writes_quantities_files_of_its_own(tmp_path, capsys, monkeypatch, dp_run):
    calls = []

    def fake(config, *, quick, groups, report):
        calls.append((config.name, quick, groups))
        return dp_run[0]

    monkeypatch.setattr(quantities, "run_config", fake)
    (tmp_path / "results.md").write_text("the other benchmark's\n")
    spec = "6:5,3:relu:softmax_cross_entropy:4"
    assert main(["bench", "--quantities", "dp", "--quick", "--model", spec,
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    assert calls == [("custom", True, ("dp",))]  # only the model named: no default configs
    assert json.loads((tmp_path / "quantities.json").read_text())["configs"]["custom"]
    assert "| custom | dp_sgd step |" in (tmp_path / "quantities.md").read_text()
    assert (tmp_path / "results.md").read_text() == "the other benchmark's\n"
    assert "wrote" in capsys.readouterr().out
    code = main(["bench", "--quantities", "--model", spec, "--out", str(tmp_path)])
    assert code == 2 and "pass --overwrite" in capsys.readouterr().err


def test_cli_refuses_a_config_with_batchnorm_before_measuring(tmp_path, capsys):
    code = main(["bench", "--quantities", "--configs", "resnet", "--out", str(tmp_path)])
    assert code == 2 and "MLP configs and cnn" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
