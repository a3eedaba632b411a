"""DP-SGD: the one-pass clipped sum against per-example jax.grad, the noise's statistics, Poisson
sampling, the accountant wrapper, training under jit, and `jaxbp train --grad dp`."""

from __future__ import annotations

import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import compile_records
from scipy import optimize, special, stats

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
    """DP-SGD does backprop's matrix products and no more: the recorded sweep's own dW, which
    nothing reads, are never emitted, and each dW is taken once, from the re-weighted deltas.
    Counted in the lowered StableHLO, which is the same on every CPU: the compiled HLO's dots
    change with the ISA, XLA's flags and JAXBP_TEST_OPTIMIZED (fusions, oneDNN calls)."""
    model, params, x, y = _problem("mlp", jnp.float32)
    engine, key = dp_sgd(1.0, 1.0, delta=None), jax.random.PRNGKey(1)

    def dots(f):
        text = jax.jit(f).lower(params).as_text()
        return sorted(re.findall(r"stablehlo\.dot_general.*-> tensor<([\dx]+)xf32>", text))

    plain = dots(lambda p: backprop(model, softmax_cross_entropy, p, x, y))
    # forward 9x7, 9x5, 9x3; dW 4x7, 7x5, 5x3; dx 9x7, 9x5 (none for the input)
    assert plain == sorted(["9x7", "9x5", "9x3", "4x7", "7x5", "5x3", "9x7", "9x5"])
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


# An accountant written here from the papers, in NumPy/SciPy, to check privacy.epsilon against.
# One DP-SGD step is the Poisson-subsampled Gaussian mechanism (q, sigma, add-or-remove-one). Its
# RDP at an integer order a is log(A_a) / (a - 1), by the binomial expansion of Mironov, Talwar
# and Zhang 2019 (section 3.3):
#   A_a = sum_k C(a, k) (1 - q)^(a - k) q^k exp((k^2 - k) / (2 sigma^2));
# T steps add up. dp-accounting's RDP accountant tries the orders 1.1, 1.2, ..., 10.9 and every
# integer 2..63, 128, 256, 512, 1024, and converts with Canonne, Kamath and Steinke 2020 (Prop.
# 12): eps = rdp + log(1 - 1/a) - log(delta a) / (a - 1).
INTEGER_ORDERS = [*range(2, 64), 128, 256, 512, 1024]
ABADI = (10_000, 0.01, 4.0, 1e-5)  # Abadi et al. 2016, section 3.1: steps, q, sigma, delta
DIGITS = (450, 64 / 1437, 1.1, 1e-5)  # ~20 epochs of digits at batch 64; best order 4.2


def _rdp(steps, q, sigma, order):
    k = np.arange(order + 1)
    log_terms = (
        special.gammaln(order + 1) - special.gammaln(k + 1) - special.gammaln(order - k + 1)
        + k * math.log(q) + (order - k) * math.log1p(-q) + (k * k - k) / (2 * sigma**2)
    )  # fmt: skip
    return steps * float(special.logsumexp(log_terms)) / (order - 1)


def _rdp_epsilon(steps, q, sigma, delta):
    """The best integer order's epsilon: dp-accounting tries each of them, so it is at most this."""
    return min(
        _rdp(steps, q, sigma, a) + math.log1p(-1 / a) - math.log(delta * a) / (a - 1)
        for a in INTEGER_ORDERS
    )


def _rdp_epsilon_below(steps, q, sigma, delta, top=1024):
    """A lower bound on the epsilon at any order in [1.1, top]: on [a, b] the RDP is at least its
    value at a (it grows with the order; at least 0 below 2), log(1 - 1/x) at least its value at
    a, and -log(delta x) / (x - 1) at least -log(delta b) / (b - 1)."""
    pieces = [(1 + i / 10, 1.1 + i / 10, 0.0) for i in range(1, 10)]
    pieces += [(a, a + 1, _rdp(steps, q, sigma, a)) for a in range(2, min(top, 63))]
    if top > 63:
        pieces.append((63, top, _rdp(steps, q, sigma, 63)))
    return min(r + math.log1p(-1 / a) - math.log(delta * b) / (b - 1) for a, b, r in pieces)


def _epsilon_from_a_test(steps, q, sigma, delta):
    """A lower bound on the true epsilon, so on any accountant's. (eps, delta)-DP needs P(S) <=
    e^eps Q(S) + delta for every set S of outputs. Take S = {the T noisy steps sum above c}: with
    the example removed (Q) the sum is N(0, T sigma^2); present (P), Binomial(T, q) + N(0, T
    sigma^2). The best c of a grid gives eps >= log((P(S) - delta) / Q(S))."""
    scale, k = sigma * math.sqrt(steps), np.arange(steps + 1)
    pmf = stats.binom.pmf(k, steps, q)
    k, pmf = k[pmf > 1e-30], pmf[pmf > 1e-30]  # a smaller P(S): the bound still holds
    c = np.linspace(0, 20, 2001) * scale
    p = stats.norm.sf((c[:, None] - k) / scale) @ pmf
    log_q, ok = stats.norm.logsf(c / scale), p > delta
    return float(np.max(np.log(p[ok] - delta) - log_q[ok]))


def test_the_reference_accountant_gives_abadi_et_al_s_published_epsilon():
    """Abadi et al. 2016 (section 3.1) print eps ~ 1.26 for their setting by the moments
    accountant: RDP at orders lambda + 1 <= 33 and the plain conversion rdp - log(delta) /
    (a - 1). The reference, converted their way, must round to it: 1.255 <= eps < 1.265."""
    steps, q, sigma, delta = ABADI
    eps = min(_rdp(steps, q, sigma, a) - math.log(delta) / (a - 1) for a in range(2, 34))
    assert 1.255 <= eps < 1.265, eps


def test_rdp_epsilon_is_the_reference_where_the_best_order_is_an_integer():
    """At Abadi et al.'s setting the best order is 17: no order below 11, where dp-accounting
    also tries tenths, can beat the integer minimum, so privacy.epsilon is that minimum, the same
    sums in another order: 1e-12."""
    reference = _rdp_epsilon(*ABADI)
    assert _rdp_epsilon_below(*ABADI, top=11) > reference
    assert privacy.epsilon(*ABADI) == pytest.approx(reference, rel=1e-12)
    assert 1.03 < reference < 1.04  # the improved conversion: below the published 1.26


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
@pytest.mark.parametrize("setting", [ABADI, DIGITS], ids=["abadi", "digits"])
def test_epsilon_lies_between_a_test_s_lower_bound_and_the_reference_rdp_bound(setting, accountant):
    """Every accountant's epsilon is at least the true one, so at least a test's lower bound (0.93
    and 4.0 here); the RDP one is at most the reference's best integer order (1.035, 5.79) and at
    least its bound over all orders (1.00, 4.82); the PLD one computes the privacy curve itself,
    tighter than any RDP bound, up to a discretization far smaller than the gaps (0.95, 5.23)."""
    eps = privacy.epsilon(*setting, accountant=accountant)
    assert _epsilon_from_a_test(*setting) <= eps <= _rdp_epsilon(*setting)
    if accountant == "rdp":
        assert _rdp_epsilon_below(*setting) <= eps


@pytest.mark.parametrize("q, sigma", [(64 / 1437, 1.1), (0.3, 0.8)])
def test_pld_epsilon_of_one_step_is_the_exact_one(q, sigma):
    """One step's privacy curve in closed form. Removing the example: P = (1 - q) N(0, s^2) +
    q N(1, s^2) against Q = N(0, s^2), whose ratio grows with x, so the worst set is {x > x*}
    with P/Q(x*) = e^eps, and delta(eps) = P(x > x*) - e^eps Q(x > x*). Adding it swaps the
    pair, and Q/P <= 1/(1 - q): delta is 0 for eps > -log(1 - q) (0.046 and 0.36; eps is 0.72
    and 4.1). The PLD accountant rounds each loss up to its grid of 1e-4: above, by at most that."""
    delta = 1e-5

    def excess(eps):
        x = sigma**2 * math.log((math.expm1(eps) + q) / q) + 0.5
        tail = stats.norm.sf(x / sigma)
        return (1 - q) * tail + q * stats.norm.sf((x - 1) / sigma) - math.exp(eps) * tail - delta

    exact = optimize.brentq(excess, 1e-3, 50, xtol=1e-13)
    assert exact > -math.log1p(-q)
    assert 0 <= privacy.epsilon(1, q, sigma, delta, accountant="pld") - exact <= 1e-4


def test_epsilon_of_no_steps_and_of_no_noise():
    q, sigma, delta = 64 / 1437, 1.1, 1e-5
    assert privacy.epsilon(0, q, sigma, delta) == 0.0
    assert privacy.epsilon(450, q, 0.0, delta) == math.inf


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
    assert "DP-SGD: clip norm 1, noise multiplier 1.2" in printed
    steps, q = 1437 // 64, 64 / 1437
    # Before training, each run prints what its whole run spends, to 3 digits: 1 epoch, then the
    # resumed run's 2 epochs in all (1.54, then 1.86), each within the reference RDP accountant's
    # bounds to the printed digits.
    spent = re.findall(r"after (\d+) epochs: epsilon ([\d.]+) at delta 1e-05", printed)
    assert spent == [(str(e), f"{privacy.epsilon(e * steps, q, 1.2, 1e-5):.3g}") for e in (1, 2)]
    for e, value in spent:
        setting = (int(e) * steps, q, 1.2, 1e-5)
        assert _rdp_epsilon_below(*setting) - 5e-3 <= float(value) <= _rdp_epsilon(*setting) + 5e-3
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["epsilon"] for line in lines] == [
        privacy.epsilon(e * steps, q, 1.2, 1e-5) for e in (1, 2)
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
