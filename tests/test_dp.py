"""DP-SGD: the one-pass clipped sum against per-example jax.grad, the noise's statistics, Poisson
sampling, the accountant wrapper, training under jit, and `jaxbp train --grad dp`."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import compile_records
from scipy import stats

from jaxbp import _sampling, _threefry, datasets, privacy
from jaxbp.backprop import backprop
from jaxbp.cli import main
from jaxbp.layers import Conv, Dense, Embedding, Flatten, LayerNorm, Relu, Tied, mlp, serial
from jaxbp.losses import softmax_cross_entropy
from jaxbp.quantities import dp
from jaxbp.quantities.dp import dp_sgd
from jaxbp.train import fit

# float64 sums of a handful of products, in another order than jax.grad's: ~1e-15 relative.
EXACT = 1e-10


# ---------------------------------------------------------------------------------------------
# The clipped sum, exactly


def _problem(name: str, dtype=jnp.float64):
    """(model, params, x, y) in float64: an MLP, a conv net with LayerNorm, a tied embedding."""
    kp, kx, ky = jax.random.split(jax.random.PRNGKey(0), 3)
    m = 9
    if name == "mlp":
        model, shape = mlp([7, 5, 3], "tanh"), (4,)
        x = 3 * jax.random.normal(kx, (m, 4), dtype)
    elif name == "conv":
        model = serial(Conv(3, (3,)), LayerNorm(), Relu(), Flatten(), Dense(3))
        shape, x = (5, 2), jax.random.normal(kx, (m, 5, 2), dtype)
    else:  # ids -> table rows -> logits by W = table^T: one matrix read by two leaves
        model, shape = Tied(serial(Embedding(3, 4), Dense(3)), (0,), (1,)), ()
        x = jax.random.randint(kx, (m,), 0, 3)
    _, params = model.init(kp, shape)
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    return model, params, x, jax.random.randint(ky, (m,), 0, 3)


def _per_example_grads(model, params, x, y):
    """vmap(jax.grad) of each example's loss L_i, compiled: leaves (batch, *param.shape)."""

    def one(p, xi, yi):
        return softmax_cross_entropy.apply(model.apply(p, xi[None]), yi[None])

    return jax.jit(jax.vmap(jax.grad(one), in_axes=(None, 0, 0)))(params, x, y)


def _error(name):
    """Relative error of dp_sgd's noiseless gradient (and norms) against sum_i w_i min(1, C /
    ||g_i||) g_i / b from per-example jax.grad, with C between the middle two norms (so some
    examples are clipped, some not, none by a hair) and three examples weighted 0."""
    model, params, x, y = _problem(name)
    w, b = jnp.array([1, 0, 1, 1, 0, 1, 1, 1, 0], jnp.float64), 5.0
    g = _per_example_grads(model, params, x, y)
    norms = jnp.sqrt(sum(jnp.sum(a.reshape(len(x), -1) ** 2, 1) for a in jax.tree.leaves(g)))
    C = float(jnp.mean(jnp.sort(norms)[4:6]))
    ref = jax.tree.map(lambda a: jnp.tensordot(w * jnp.minimum(1.0, C / norms), a, 1) / b, g)
    engine = dp_sgd(C, 0.0, delta=None)
    run = jax.jit(
        lambda p: engine.with_stats(
            model, softmax_cross_entropy, p, x, y, weights=w, expected_size=b
        )
    )
    value, grads, info = run(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    errors = [
        float(jnp.linalg.norm(u - v) / jnp.linalg.norm(v))
        for u, v in zip(jax.tree.leaves(grads), jax.tree.leaves(ref))
    ]
    clipped = float(jnp.sum(w * (norms > C)) / jnp.sum(w))
    return max(errors), float(jnp.max(jnp.abs(info["norms"] - norms) / norms)), clipped, info


@pytest.mark.parametrize("name", ["mlp", "conv", "tied"])
def test_clipped_sum_matches_per_example_jax_grad(name, x64):
    grad_error, norm_error, clipped, info = _error(name)
    assert grad_error < EXACT and norm_error < EXACT
    assert float(info["clipped"]) == pytest.approx(clipped)
    assert 0 < clipped < 1  # C at the median: the test exercises both sides of the min


def test_mutant_clipping_after_the_sum_is_caught(monkeypatch, x64):
    """The same check fails for a DP-SGD that clips the summed gradient instead of each one."""
    unclipped_sum = dp.clipped_sum

    def clip_after_sum(model, params, rec, w):
        total = unclipped_sum(model, params, rec, (w > 0).astype(w.dtype))
        norm = jnp.sqrt(sum(jnp.sum(a**2) for a in jax.tree.leaves(total)))
        return jax.tree.map(lambda a: a * dp.clip_factors(norm, 1.0), total)

    monkeypatch.setattr(dp, "clipped_sum", clip_after_sum)
    grad_error, norm_error, _, _ = _error("mlp")
    assert grad_error > 1e-2 and norm_error < EXACT  # the norms are right, the sum is not


def test_one_backward_pass_the_unclipped_weight_gradients_are_dropped():
    """Compiled, DP-SGD does backprop's matrix products and no more: the recorded sweep's own dW,
    which nothing reads, are gone, and each dW is taken once, from the re-weighted deltas."""
    model, params, x, y = _problem("mlp", jnp.float32)
    engine, key = dp_sgd(1.0, 1.0, delta=None), jax.random.PRNGKey(1)

    def dots(f):
        return jax.jit(f).lower(params).compile().as_text().count(" dot(")

    plain = dots(lambda p: backprop(model, softmax_cross_entropy, p, x, y))
    assert plain == 3 + 3 + 2  # forward, dW, dx (none for the input)
    assert dots(lambda p: engine(model, softmax_cross_entropy, p, x, y, key=key)) == plain


# ---------------------------------------------------------------------------------------------
# Noise


def test_noise_is_gaussian_with_std_sigma_c_over_b():
    """g_noisy - g_clean (same key, so the same forward) is the noise / b: its P = 26,122
    coordinates (the digits MLP) should be iid N(0, (sigma C / b)^2). Five-sigma bounds: the
    sample mean of z = noise * b / (sigma C) within 5 / sqrt(P) of 0, its std within
    5 / sqrt(2P) of 1 (the std's standard error); Kolmogorov-Smirnov against N(0, 1) and the
    correlation of two leaves' first 1,000 coordinates are checked at p > 1e-3."""
    model = mlp([128, 128, 10], "relu")
    _, params = model.init(jax.random.PRNGKey(0), (64,))
    x, y = datasets.load("digits")[0]
    x, y, b, C, sigma = x[:32], y[:32], 32, 0.5, 1.3

    @jax.jit
    def gradients(key):  # noisy, noiseless, and noisy with another key: one compilation
        noisy, clean = (dp_sgd(C, s, delta=None) for s in (sigma, 0.0))
        run = lambda engine, k: engine(model, softmax_cross_entropy, params, x, y, key=k)[1]  # noqa: E731
        return run(noisy, key), run(clean, key), run(noisy, jax.random.fold_in(key, 1))

    noisy, clean, other = gradients(jax.random.PRNGKey(7))
    parts = [
        np.ravel(a - c) * b / (sigma * C)
        for a, c in zip(jax.tree.leaves(noisy), jax.tree.leaves(clean))
    ]
    z = np.concatenate(parts).astype(np.float64)
    P = z.size
    assert P == 26_122
    assert abs(z.mean()) < 5 / math.sqrt(P)
    assert abs(z.std() - 1) < 5 / math.sqrt(2 * P)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    big = [p for p in parts if p.size >= 1000]
    assert stats.pearsonr(big[0][:1000], big[1][:1000]).pvalue > 1e-3
    assert not np.allclose(other[0]["W"], noisy[0]["W"])  # another key, other noise


def test_the_noise_generator_is_jax_threefry_bit_for_bit():
    """jaxbp._threefry.threefry2x32, unrolled for speed, is jax's Threefry-2x32 primitive: the
    same 64 bits for 1,000 counter pairs under three keys, so its output is jax.random's."""
    from jax.extend.random import threefry_2x32

    counters = jax.random.bits(jax.random.PRNGKey(5), (2, 1000), jnp.uint32)
    for seed in ([0, 0], [7, 9], [0xFFFFFFFF, 0x12345678]):
        key = jnp.array(seed, jnp.uint32)
        ours = jnp.concatenate(_threefry.threefry2x32(key, counters[0], counters[1]))
        np.testing.assert_array_equal(ours, threefry_2x32(key, counters.ravel()))


# ---------------------------------------------------------------------------------------------
# Poisson sampling


def test_poisson_batch_sizes_are_binomial_and_every_example_equally_likely():
    """4,000 masks over n = 200 examples at q = 0.1: a chi-square test of the batch sizes against
    Binomial(200, 0.1) (bins with expected count >= 5) at p > 1e-3; each example's inclusion
    count is Binomial(4000, 0.1), mean 400, std 19: all 200 lie within 5 std."""
    n, q, draws = 200, 0.1, 4000
    keys = jax.random.split(jax.random.PRNGKey(3), draws)
    masks = np.asarray(jax.vmap(lambda k: _sampling.poisson_mask(k, n, q))(keys))
    sizes = masks.sum(1)
    pmf = stats.binom.pmf(np.arange(n + 1), n, q) * draws
    lo, hi = int(np.argmax(pmf >= 5)), int(n - np.argmax(pmf[::-1] >= 5))
    observed = [np.sum(sizes <= lo)] + [np.sum(sizes == k) for k in range(lo + 1, hi)]
    observed += [np.sum(sizes >= hi)]
    expected = [pmf[: lo + 1].sum(), *pmf[lo + 1 : hi], pmf[hi:].sum()]
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    per_example = masks.sum(0)
    assert np.all(np.abs(per_example - draws * q) < 5 * math.sqrt(draws * q * (1 - q)))


def test_capacity_bounds_the_overflow_probability():
    K = _sampling.capacity(1437, 32)
    assert stats.binom.sf(K, 1437, 32 / 1437) <= _sampling.OVERFLOW
    assert stats.binom.sf(K - 1, 1437, 32 / 1437) > _sampling.OVERFLOW  # the smallest such K
    assert _sampling.capacity(1437, 32, multiple=8) % 8 == 0
    assert _sampling.capacity(10, 10) == 10


def test_sampled_step_weights_exactly_the_mask_in_both_branches(monkeypatch):
    """A fake engine returns sum_i w_i onehot(id_i): it must equal the step's Poisson mask,
    whether the sample fits the buffer or overflows to the whole-set branch (K = b here, so
    about half of the steps overflow)."""
    n, b = 40, 10
    monkeypatch.setattr(_sampling, "capacity", lambda n, b, multiple=1: b)

    def engine(model, loss, params, x, y, *, key, weights, expected_size):
        assert expected_size == b
        return jnp.sum(weights), jnp.zeros(n).at[x].add(weights)

    engine.sampling = "poisson"
    ids = jnp.arange(n)
    run = jax.jit(lambda k: _sampling.for_epoch(engine, ids, ids, batch_size=b)(
        None, None, None, ids[:b], ids[:b], key=k))  # fmt: skip
    overflowed = 0
    for i in range(30):
        key = jax.random.PRNGKey(i)
        count, hits = run(key)
        mask = _sampling.poisson_mask(jax.random.split(key)[0], n, b / n)
        np.testing.assert_array_equal(hits, mask.astype(np.float32))
        overflowed += int(count > b)
    assert 0 < overflowed < 30


# ---------------------------------------------------------------------------------------------
# Accounting


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_epsilon_is_dp_accountings(accountant):
    import dp_accounting as dpa

    steps, q, sigma, delta = 450, 64 / 1437, 1.1, 1e-5
    account = dpa.rdp.RdpAccountant() if accountant == "rdp" else dpa.pld.PLDAccountant()
    account.compose(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), steps)
    eps = privacy.epsilon(steps, q, sigma, delta, accountant=accountant)
    assert eps == account.get_epsilon(delta) and 1 < eps < 10
    assert privacy.epsilon(0, q, sigma, delta) == 0.0
    assert privacy.epsilon(steps, q, 0.0, delta) == math.inf


@pytest.mark.parametrize(
    "args, error",
    [
        ((10, 1.5, 1.0, 1e-5), ValueError),
        ((10, 0.1, -1.0, 1e-5), ValueError),
        ((10, 0.1, 1.0, 1.0), ValueError),
        ((-1, 0.1, 1.0, 1e-5), ValueError),
        ((10, "0.1", 1.0, 1e-5), TypeError),
    ],
)
def test_epsilon_refuses_bad_values(args, error):
    with pytest.raises(error):
        privacy.epsilon(*args)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"clip_norm": 0.0, "noise_multiplier": 1.0}, ValueError, "clip_norm must be positive"),
        ({"clip_norm": 1.0, "noise_multiplier": -1.0}, ValueError, "noise_multiplier"),
        ({"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1.0}, ValueError, "delta"),
        ({"clip_norm": True, "noise_multiplier": 1.0}, TypeError, "number"),
        ({"clip_norm": 1.0, "noise_multiplier": float("nan")}, ValueError, "finite"),
    ],
)
def test_dp_sgd_refuses_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        dp_sgd(**kwargs)


def test_engine_refuses_a_missing_key_and_misshapen_weights():
    model, params, x, y = _problem("mlp", jnp.float32)
    with pytest.raises(ValueError, match="pass key="):
        dp_sgd(1.0, 1.0)(model, softmax_cross_entropy, params, x, y)
    with pytest.raises(ValueError, match=r"weights must be \(batch,\)"):
        dp_sgd(1.0, 0.0)(model, softmax_cross_entropy, params, x, y, weights=jnp.ones(3))


# ---------------------------------------------------------------------------------------------
# Training


def test_fit_trains_digits_under_jit_compiling_only_in_the_first_epoch():
    """Poisson batches of varying size, one compiled epoch: epochs 2 and 3 compile nothing; the
    history's epsilon is the accountant's for the steps done; accuracy rises well above chance."""
    (x, y), test = datasets.load("digits")
    model = mlp([64, 10], "relu")
    _, params = model.init(jax.random.PRNGKey(0), (64,))
    engine, b = dp_sgd(1.0, 0.8), 64
    counts = []
    with compile_records() as records:
        _, history = fit(
            model, softmax_cross_entropy, params, (x, y), optimizer=optax.adam(1e-2),
            epochs=3, batch_size=b, key=jax.random.PRNGKey(1), grad=engine, eval_data=test,
            on_epoch=lambda epoch, metrics: counts.append(len(records)),
        )  # fmt: skip
    assert counts[0] > 0 and counts[2] == counts[0], counts
    steps = len(x) // b
    for e, eps in enumerate(history["epsilon"]):
        assert eps == privacy.epsilon((e + 1) * steps, b / len(x), 0.8, 1e-5)
    assert history["eval_accuracy"][-1] > 0.6


# ---------------------------------------------------------------------------------------------
# Command line

SMALL = ["--layers", "16", "--batch-size", "64", "--no-progress", "--grad", "dp"]


def test_train_grad_dp_reports_epsilon_per_epoch_and_resumes_its_accounting(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["train", *SMALL, "--epochs", "1", "--out", str(out), "--noise-multiplier", "1.2"])
        == 0
    )
    assert main(["train", *SMALL, "--epochs", "2", "--out", str(out), "--noise-multiplier", "1.2",
                 "--resume"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "DP-SGD: clip norm 1, noise multiplier 1.2" in printed and "epsilon" in printed
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = 1437 // 64
    assert [line["epsilon"] for line in lines] == [
        privacy.epsilon(e * steps, 64 / 1437, 1.2, 1e-5) for e in (1, 2)
    ]
    config = json.loads((out / "config.json").read_text())
    assert (config["clip_norm"], config["noise_multiplier"], config["delta"]) == (1.0, 1.2, 1e-5)
    # resume refuses changed privacy settings
    assert main(["train", *SMALL, "--epochs", "3", "--out", str(out), "--resume"]) == 2
    assert "--noise-multiplier: run has 1.2, you gave 1.0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--clip-norm", "0"], "--clip-norm: must be positive"),
        (["--noise-multiplier", "-1"], "--noise-multiplier: must be >= 0"),
        (["--delta", "1"], "--delta: must be in (0, 1)"),
        (["--delta", "0"], "--delta: must be positive"),
        (["--model", "batchnorm"], "--grad dp needs per-example gradients"),
    ],
)
def test_bad_dp_arguments_exit_2_with_one_line(tmp_path, capsys, args, message):
    assert _exit_code(["train", *SMALL, *args, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_dp_options_without_grad_dp_and_a_missing_accountant_exit_2(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "r")
    assert main(["train", "--layers", "16", "--clip-norm", "2", "--out", out]) == 2
    assert "--clip-norm: only for --grad dp" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "dp_accounting", None)  # not installed
    assert main(["train", *SMALL, "--out", out]) == 2
    err = capsys.readouterr().err
    assert 'pip install "jaxbp[dp]"' in err and len(err.strip().splitlines()) == 1


def _exit_code(argv) -> int:
    """main's status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as done:
        return done.code
