"""jax-privacy, the quantity benchmark's JAX peer for DP-SGD, computes what jaxbp computes: its
clipped sum is jaxbp's (an MLP, a CNN, a GPT with and without its tied head), its padded Poisson
batches clip only the sampled rows, and a quick run gives it its columns. No timing is asserted."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _torch_peers import assert_leaves_close, peer

import jaxbp.bench
from jaxbp.bench import _vmap_reference as reference
from jaxbp.bench import jax_privacy_peer as jp
from jaxbp.bench import quantities
from jaxbp.bench.mlp import Config
from jaxbp.bench.sequence import SequenceConfig
from jaxbp.bench.vision import VisionConfig
from jaxbp.quantities import dp_sgd

pytestmark = pytest.mark.filterwarnings("ignore:optax.global_norm is deprecated")
TINY = Config("tiny", 6, (5, 3), "relu", "softmax_cross_entropy", 4)
TINY_CNN = VisionConfig(
    "tiny_cnn", "cnn", (("features", (3,)), ("hidden", 5), ("convs", 1)), (4, 4, 2), 3
)
GPT = (("num_layers", 1), ("features", 8), ("num_heads", 2))
TINY_GPT = SequenceConfig("tiny_gpt", "gpt", GPT, 4, 3, vocab=5)
TIED_GPT = SequenceConfig("tied_gpt", "gpt", (*GPT, ("tie_weights", True)), 4, 3, vocab=5)
# float64: both sides sum the same clipped gradients in another order (~1e-16 relative each)
RTOL = 1e-10


def _f64(config):
    model, loss, params, x, y, _ = quantities.problem(config)
    to64 = lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a  # noqa: E731
    return model, loss, jax.tree.map(to64, params), to64(x), y


# one example per microbatch (the bench's setting on the MLPs and gpt) and one vmap (on cnn)
@pytest.mark.parametrize(
    "config, microbatch_size",
    [(TINY, 1), (TINY_CNN, None), (TINY_GPT, 1), (TIED_GPT, None)],
    ids=["tiny", "tiny_cnn", "tiny_gpt", "tied_gpt"],
)
def test_jax_privacys_clipped_sum_is_jaxbps(config, microbatch_size, x64):
    peer("jax_privacy")
    model, loss, params, x, y = _f64(config)
    norms = jax.jit(lambda p: reference.norms(reference.example_grads(model, loss)(p, x, y)[1]))(
        params
    )
    C = float(jnp.median(norms))  # some examples clipped, some not
    assert norms.min() < C < norms.max() or len(x) < 3
    padding = jnp.arange(len(x)) == len(x) - 1  # the DP step's padded Poisson draw: last row
    engine = dp_sgd(C, 0.0, delta=None)
    theirs = jp.clipped_grad(model, loss, clip_norm=C, microbatch_size=microbatch_size)

    @jax.jit
    def both(params):
        ours = quantities._clipped_sum(engine, model, loss, params, x, y)
        if config is not TINY:
            return ours, theirs(params, x, y)
        # the padding is the model's business nowhere: checked once, on the MLP
        weights = jnp.where(padding, 0.0, 1.0)
        sampled = engine(model, loss, params, x, y, weights=weights, expected_size=1.0)[1]
        return ours, theirs(params, x, y), sampled, theirs(params, x, y, is_padding_example=padding)

    ours, clipped, *masked = both(params)
    assert_leaves_close(clipped, ours, rtol=RTOL, what=f"{config.name} clipped sum")
    if masked:  # jaxbp's weights 0 on the padded row, jax-privacy's is_padding_example
        assert_leaves_close(masked[1], masked[0], rtol=RTOL, what="padded rows dropped")


def test_the_poisson_draws_are_padded_to_the_batch_with_minus_one():
    peer("jax_privacy")
    draws = jp.poisson_draws(16, 1)
    assert draws.shape == (jp.DRAWS, 16) and draws.dtype == np.int32
    for d in draws:
        real = d[d >= 0]
        assert (d[: len(real)] >= 0).all(), "padding after the sampled rows: skipped at the end"
        assert len(set(real.tolist())) == len(real) and real.max() < jp.POOL * 16
    counts = (draws >= 0).sum(1)
    assert counts.min() < 16 and 8 < counts.mean() <= 16  # Poisson of mean 16, truncated at 16


def test_a_quick_run_gives_jax_privacy_its_columns(monkeypatch):
    peer("jax_privacy")
    monkeypatch.setattr(quantities, "_torch_candidates", lambda *a: ({}, {}))  # jax alone
    result = quantities.run_config(TINY, quick=True, groups=("dp",))
    group = result["groups"]["dp"]
    rows = {row["quantity"]: row for row in group["rows"]}
    pairs = {"dp_sgd step": "jax-privacy", "dp clip step": "jax-privacy clip"}
    for q, name in (pairs | {"clipped sum": "jax-privacy clipped_grad"}).items():
        entry = rows[q]["peers"][name]
        assert entry["over_jaxbp"]["median"] > 0 and group["memory_bytes"][name] > 0, q
    for q, name in pairs.items():  # a step, over jaxbp's plain optax step
        assert rows[q]["peers"][name]["over_base"]["median"] > 0
    env = jaxbp.bench.environment()
    rerun = {"groups": ["dp"], "configs": ["tiny"], "command": "jaxbp bench", "environment": env}
    results = {"environment": env, "quick": True, "configs": {"tiny": result}, "reruns": [rerun]}
    table = quantities.to_markdown(results)
    assert f"The dp group of tiny: a later run, `jaxbp bench`, jax {env['jax']}" in table
    assert "| jax-privacy clipped_grad |" in table and "jax-privacy / dp_sgd step > 1" in table
    assert "microbatch size" in table and "CyclicPoissonSampling" in table


def test_without_jax_privacy_its_rows_say_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax_privacy", None)  # import jax_privacy now fails
    model, loss, params, x, y, _ = quantities.problem(TINY)
    fns, memory, missing = quantities._jax_peers("dp", TINY, model, loss, params, x, y)
    assert fns == {} and set(missing) == set(jp.NAMES)
    assert set(missing.values()) == {"jax-privacy not installed"}
    assert quantities._jax_peers("curvature", TINY, model, loss, params, x, y) == ({}, {}, {})


def test_gpt_is_a_quantities_config_with_no_torch_peer():
    quantities.check(jaxbp.bench.CONFIGS["gpt"])
    model, _, params, x, y, shape = quantities.problem(TINY_GPT)
    assert x.shape == y.shape == (3, 4) and shape == (4,)
    fns, missing = quantities._torch_candidates("dp", TINY_GPT, model, params, x, y, shape)
    assert fns == {} and set(missing) == {"torch step", "Opacus hooks", "Opacus ghost"}
    with pytest.raises(ValueError, match="and on gpt, not lstm"):
        quantities.check(jaxbp.bench.CONFIGS["lstm"])
