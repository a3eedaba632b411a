"""gpt2 and Dense(use_bias=False): GPT-2's parameter counts and initialisation, the bias-free
tied head, and the hand-written sweep against jax.grad in float64 on a small GPT-2.

Sizes are counted with jax.eval_shape (nothing is drawn); the rules are checked on a small
configuration (vocab 11, context 6, 2 layers of 8 features, 2 heads): structure, not size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close

import jaxbp
from jaxbp import layers as L
from jaxbp import losses
from jaxbp.check import check_backprop, check_layer
from jaxbp.layers.gpt2 import INIT_STD, SIZES, build_gpt2

CE = losses.softmax_cross_entropy
KEY = jax.random.PRNGKey(0)
V, CTX, LAYERS, C, H, BATCH, T = 11, 6, 2, 8, 2, 3, 5


def _small(recompute=False):
    return build_gpt2(V, CTX, LAYERS, C, H, recompute=recompute)


def _count(model, T=1024):
    shapes = jax.eval_shape(lambda k: model.init(k, (T,))[1], KEY)
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes))


# GPT-2's released checkpoints (OpenAI's, as counted by Hugging Face's GPT2LMHeadModel with the
# head tied): token table, positions, blocks, final LayerNorm, and no head bias.
COUNTS = {"124M": 124_439_808, "350M": 354_823_168, "774M": 774_030_080, "1558M": 1_557_611_200}


@pytest.mark.parametrize("size", list(COUNTS))
def test_parameter_counts_are_gpt2s(size):
    model = L.gpt2(size)
    assert _count(model) == COUNTS[size]
    layers, C_, heads = SIZES[size]
    # The same count from the architecture's formula: tables, 12 C^2 + 13 C per block, final LN.
    assert COUNTS[size] == 50257 * C_ + 1024 * C_ + layers * (12 * C_**2 + 13 * C_) + 2 * C_
    assert repr(model) == f"gpt2({size!r})"


def test_context_sets_the_position_table_only():
    assert _count(L.gpt2("124M", context=256), T=256) == COUNTS["124M"] - 768 * 768


def test_init_is_gpt2s():
    # A mid-size model, so that the sample standard deviations are tight: 4 layers of 256.
    model = build_gpt2(1000, 64, 4, 256, 4)
    shape, params = model.init(KEY, (64,))
    assert shape == (64, 1000)
    assert params[-1] == {} and set(params[0]) == {"table"}  # the head reads the table
    residual_std = INIT_STD / np.sqrt(2 * 4)

    def std_of(a):
        return float(np.std(np.asarray(a)))

    # A sample std of n >= 64 x 256 N(0, s^2) draws is within 3% of s with overwhelming
    # probability (its relative sd is 1 / sqrt(2n) <= 0.0044: 3% is 6.8 sd).
    matrices = {"tokens": params[0]["table"], "positions": params[1]["table"]}
    for block in range(4):
        ln1, attention = params[2 + 2 * block]
        ln2, fc, gelu, proj = params[3 + 2 * block]
        assert gelu == ()
        for ln in (ln1, ln2):
            np.testing.assert_array_equal(ln["scale"], 1.0)
            np.testing.assert_array_equal(ln["bias"], 0.0)
        for b in (attention["b_qkv"], attention["b_out"], fc["b"], proj["b"]):
            np.testing.assert_array_equal(b, 0.0)
        matrices |= {f"W_qkv {block}": attention["W_qkv"], f"fc {block}": fc["W"]}
        for name, W in ((f"W_out {block}", attention["W_out"]), (f"proj {block}", proj["W"])):
            assert abs(std_of(W) / residual_std - 1) < 0.03, (name, std_of(W))
    for name, W in matrices.items():
        assert abs(std_of(W) / INIT_STD - 1) < 0.03, (name, std_of(W))
        assert abs(float(np.mean(np.asarray(W)))) < 0.002  # the mean's sd is <= 0.02 / 128
    np.testing.assert_array_equal(params[-2]["scale"], 1.0)
    # Different leaves get different draws.
    assert not np.allclose(params[2][1]["W_out"], params[4][1]["W_out"])


@pytest.mark.parametrize("recompute", [False, True], ids=["saved-p", "recompute"])
def test_small_gpt2_backprop_matches_autodiff_and_passes_check(recompute, x64):
    model = _small(recompute)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(KEY, (T,))[1])
    # Non-zero biases and non-unit scales, so that every term of every rule is exercised.
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: a + 0.1 * rng.normal(size=a.shape), params)
    rng = np.random.default_rng(1)
    ids, y = rng.integers(0, V, (BATCH, T)), rng.integers(0, V, (BATCH, T))
    report = check_backprop(model, CE, params, ids, y, directions=1)
    assert report.ok, str(report)
    # 1e-12: the same formulas in float64 in another order, ~1e-15 per operation over ~30 layers.
    assert all(row.errors["vjp"] <= 1e-12 for row in report.rows), str(report)
    names = [row.name for row in report.rows]
    assert names[0] == "[0] Embedding(num_embeddings=11, features=8) ['table']"
    assert not any(name.startswith("[7]") for name in names)  # the head has no params of its own
    value, grads = jaxbp.backprop(model, CE, params, ids, y)
    value_ref, grads_ref = jaxbp.autodiff(model, CE, params, ids, y)
    assert abs(float(value - value_ref)) <= 1e-12 * abs(float(value_ref))
    assert_trees_close(grads, grads_ref, rtol=1e-12, what="gpt2 grads")


def test_per_example_grads_through_the_tied_bias_free_head(x64):
    model = _small()
    params = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(KEY, (T,))[1])
    rng = np.random.default_rng(2)
    ids, y = rng.integers(0, V, (BATCH, T)), rng.integers(0, V, (BATCH, T))
    per_example = jaxbp.per_example_grads(model, CE, params, ids, y)

    # L_i's gradient: C of example i alone (the mean over its T positions), by jax.grad, compiled
    # once for a batch of one (eagerly, op by op, the GPT-2's sweep took most of this test's time)
    one = jax.jit(lambda ids_i, y_i: jaxbp.autodiff(model, CE, params, ids_i, y_i)[1])
    grads = [one(ids[i : i + 1], y[i : i + 1]) for i in range(BATCH)]
    reference = jax.tree.map(lambda *g: jnp.stack(g), *grads)
    assert_trees_close(per_example, reference, rtol=1e-12, what="per-example grads")


def test_gpt2_refuses_bad_arguments():
    with pytest.raises(ValueError, match=r"size must be one of 124M, 350M, 774M, 1558M.*'125M'"):
        L.gpt2("125M")
    with pytest.raises(ValueError, match="context must be positive, got 0"):
        L.gpt2(context=0)
    with pytest.raises(TypeError, match="context must be an int"):
        L.gpt2(context=1024.0)
    with pytest.raises(TypeError, match="recompute must be a bool"):
        L.gpt2(recompute="yes")
    with pytest.raises(ValueError, match="do not split into 3 heads"):
        build_gpt2(V, CTX, 1, 8, 3)
    model = _small()
    with pytest.raises(ValueError, match=r"T = 7 .*context|context"):
        model.init(KEY, (CTX + 1,))


# ---------------------------------------------------------------------------------------------
# Dense(use_bias=False)


def test_bias_free_dense_rule_params_and_repr(x64):
    layer = L.Dense(4, use_bias=False)
    assert repr(layer) == "Dense(features=4, use_bias=False)" and repr(L.Dense(4)) == (
        "Dense(features=4)"
    )
    shape, params = layer.init(KEY, (3, 5))
    assert shape == (3, 4) and set(params) == {"W"}
    report = check_layer(layer, (3, 5))
    assert report.ok, str(report)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5)))
    np.testing.assert_allclose(layer.apply(params, x), x @ params["W"], rtol=1e-15)
    assert layer.kfac_rows(x).shape == (6, 5)  # [x] alone, no column of ones
    with pytest.raises(ValueError, match=r"params must be \{'W': \(in, out\)\} alone"):
        layer.apply({"W": params["W"], "b": jnp.zeros(4)}, x)
    with pytest.raises(ValueError, match=r"params must be \{'W': \(in, out\), 'b': \(out,\)\}"):
        L.Dense(4).apply(params, x)
    with pytest.raises(TypeError, match="use_bias must be a bool"):
        L.Dense(4, use_bias=1)


@pytest.mark.parametrize(
    "quantity", ["per_example_grads", "per_example_norms", "sum_grad_squared", "diag_ggn"]
)
def test_bias_free_dense_quantities_match_their_bias_free_twin(quantity, x64):
    # A bias-free model computes what its twin with b = 0 computes; its quantities are the
    # twin's, less the b entries.
    free = L.serial(L.Dense(6, use_bias=False), L.Tanh(), L.Dense(3, use_bias=False))
    twin = L.serial(L.Dense(6), L.Tanh(), L.Dense(3))
    _, params = free.init(KEY, (4,))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    twin_params = tuple(p | {"b": jnp.zeros(p["W"].shape[1])} if p else p for p in params)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5, 4)), rng.integers(0, 3, 5)
    got = getattr(jaxbp, quantity)(free, CE, params, x, y)
    ref = getattr(jaxbp, quantity)(twin, CE, twin_params, x, y)
    if quantity == "per_example_norms":  # ||dW_i||^2 + ||db_i||^2 against ||dW_i||^2
        pe = jaxbp.per_example_grads(twin, CE, twin_params, x, y)
        ref = jnp.sqrt(sum(jnp.sum(jnp.square(p["W"]), (1, 2)) for p in (pe[0], pe[2])))
    else:
        ref = tuple({"W": r["W"]} if r else r for r in ref)
    assert_trees_close(got, ref, rtol=1e-12, what=quantity)  # float64, the same sums


def test_kfac_factors_of_a_bias_free_dense(x64):
    free = L.serial(L.Dense(6, use_bias=False), L.Tanh(), L.Dense(3, use_bias=False))
    _, params = free.init(KEY, (4,))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(5, 4)), rng.integers(0, 3, 5)
    factors = jaxbp.kfac_factors(free, CE, params, x, y)
    assert factors[(0,)]["A"].shape == (4, 4) and factors[(2,)]["A"].shape == (6, 6)
    np.testing.assert_allclose(factors[(0,)]["A"], x.T @ x / 5, rtol=1e-12)


def test_research_tools_reach_every_layer_of_a_small_gpt2(x64):
    # Signals name every leaf by gpt's paths; a replacement rule at one path inside a block
    # changes that layer's delta and nothing downstream of it; make_step takes an AdamW step.
    import optax

    from jaxbp.signals import backprop_with_signals
    from jaxbp.train import make_step
    from jaxbp.walk import leaves

    model = _small()
    params = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(KEY, (T,))[1])
    rng = np.random.default_rng(5)
    ids, y = rng.integers(0, V, (BATCH, T)), rng.integers(0, V, (BATCH, T))
    value, grads, signals = backprop_with_signals(model, CE, params, ids, y)
    assert list(signals) == [path for path, _ in leaves(model)]
    assert (7,) in signals and (2, 1) in signals and (5, 3) in signals  # head, attention, proj
    _, grads_ref = jaxbp.autodiff(model, CE, params, ids, y)
    assert_trees_close(grads, grads_ref, rtol=1e-12, what="signals' grads")  # float64 rounding
    # The MLP of layer 1 ([5]: LayerNorm, Dense, Gelu, Dense) with its GELU's rule halved: the
    # layers after it in the forward (the head, [6], [7]) keep their gradients exactly, and
    # the Dense before the GELU gets half its gradient.
    gelu = L.Gelu()
    rules = {(5, 2): lambda p, saved, dy: (p, 0.5 * gelu.backward(p, saved, dy)[1])}
    _, changed, _ = backprop_with_signals(model, CE, params, ids, y, rules=rules)
    # The same ops on the same inputs: equal up to float64 rounding (1e-14 allows reordering).
    np.testing.assert_allclose(changed[5][3]["W"], grads[5][3]["W"], rtol=1e-14)
    np.testing.assert_allclose(changed[6]["scale"], grads[6]["scale"], rtol=1e-14)
    np.testing.assert_allclose(changed[5][1]["W"], 0.5 * grads[5][1]["W"], rtol=1e-12)
    # make_step: one AdamW step with each engine lands on the same params (float64 rounding).
    opt = optax.adamw(1e-3)
    stepped = {}
    for engine in ("backprop", "autodiff"):
        p = jax.tree.map(jnp.copy, params)
        stepped[engine], _, _ = make_step(model, CE, opt, engine)(p, opt.init(p), ids, y)
    assert_trees_close(stepped["backprop"], stepped["autodiff"], rtol=1e-12, what="AdamW step")
