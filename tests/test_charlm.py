"""jaxbp.charlm: the bigram's exact loss, makemore's contexts and MLP, and sampling."""

from __future__ import annotations

import math
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp import charlm, datasets
from jaxbp.layers import gpt

V = 27


@pytest.fixture(scope="module")
def names_data():
    return datasets.load("names", context=16)


def test_bigram_loss_equals_a_float64_reference(names_data):
    (x, y), (x_eval, y_eval) = names_data
    vocab = datasets.vocabulary()
    pairs = Counter(zip(vocab.decode(x), vocab.decode(y), strict=True))  # (before, after) counts
    firsts = Counter(vocab.decode(x))
    text = list(zip(vocab.decode(x_eval), vocab.decode(y_eval), strict=True))
    alpha = 0.5
    reference = -math.fsum(
        math.log((pairs[b, a] + alpha) / (firsts[b] + alpha * V)) for b, a in text
    ) / len(text)
    value = charlm.bigram_loss(charlm.bigram(x, y, V, alpha=alpha), x_eval, y_eval)
    assert abs(value - reference) < 1e-12  # both float64; different summation orders
    assert 2.4 < value < 2.7  # a bigram on English-ish names: ~2.5 nats/char


def test_bigram_rows_are_distributions():
    x = np.array([[0, 1, 2]], np.int32)
    log_probs = charlm.bigram(x, np.array([[1, 2, 0]], np.int32), 3)
    np.testing.assert_allclose(np.exp(log_probs).sum(1), 1.0, rtol=1e-15)
    with pytest.raises(ValueError, match="alpha must be positive"):
        charlm.bigram(x, x, 3, alpha=0)


def test_block_contexts_are_makemores():
    vocab = datasets.vocabulary()
    x = vocab.encode(".ab.cde.f").reshape(3, 3)  # windows of the stream ".ab.cde.f" + "."
    got = [vocab.decode(row) for row in charlm.block_contexts(x, 3)]
    # makemore: "..." before each name's first letter, and no name sees the one before it.
    assert got == ["...", "..a", ".ab", "...", "..c", ".cd", "cde", "...", "..f"]
    with pytest.raises(ValueError, match="starts with '.'"):
        charlm.block_contexts(x[2:], 3)  # "e.f": not the start of a stream


def test_train_mlp_learns_and_refuses_unknown_settings(names_data):
    (x, y), (x_eval, y_eval) = names_data
    key = jax.random.PRNGKey(0)
    model, params, history = charlm.train_mlp(
        (x[:400], y[:400]), (x_eval[:100], y_eval[:100]), key=key, vocab_size=V,
        epochs=2, hidden=32, batch_size=64,
    )  # fmt: skip
    assert [type(layer).__name__ for layer in model.layers] == [
        "Embedding", "Flatten", "Dense", "Tanh", "Dense",
    ]  # fmt: skip
    # 12,800 characters, 200 steps: well below uniform (ln 27 = 3.30), not yet a bigram's 2.5.
    assert history["eval_loss"][-1] < 2.9
    with pytest.raises(TypeError, match="unknown settings"):
        charlm.train_mlp((x, y), (x_eval, y_eval), key=key, vocab_size=V, depth=3)


def reference_greedy(model, params, context, steps, window_model):
    """Argmax decoding by the definition: the model reads the whole prefix (the last `context`
    ids of it), no buffers."""
    ids = [0]
    for _ in range(steps):
        if window_model:
            window = ([0] * context + ids)[-context:]
            logits = model.apply(params, jnp.array([window]))[0]
        else:
            logits = model.apply(params, jnp.array([ids[-context:]]))[0, -1]
        top2 = np.sort(np.asarray(logits, np.float64))[-2:]
        # The premise, checked: a gap far above float32 rounding of the logits (~1e-6 of their
        # size), so no CPU's summation order can swap the argmax between the two code paths.
        assert top2[1] - top2[0] > 1e-3 * max(1.0, abs(top2[1])), top2
        ids.append(int(jnp.argmax(logits)))
    return ids[1:]


@pytest.mark.parametrize("kind", ["gpt", "mlp"])  # an LSTM reads its window as a GPT does
def test_sampling_at_low_temperature_is_greedy_decoding(kind, key):
    context, steps = 3, 5  # longer than the context: the window slides
    if kind == "gpt":
        model = gpt(V, context, num_layers=1, features=16, num_heads=2)
    else:
        model = charlm.makemore_mlp(V, embed=4, hidden=16)
    _, params = model.init(key, (context,))
    params = jax.tree.map(lambda p: 3.0 * p, params)  # sharper logits: no near-ties
    draw = charlm._sampler(model, context, 1, steps)
    ids = np.asarray(draw(params, jax.random.PRNGKey(1), jnp.float32(1e-4)))[0]
    assert ids.tolist() == reference_greedy(model, params, context, steps, kind == "mlp")


def test_sample_count_seed_and_temperature(key):
    model = charlm.makemore_mlp(V, embed=4, hidden=16)
    _, params = model.init(key, (3,))
    names = charlm.sample(model, params, jax.random.PRNGKey(5), context=3, count=7)
    assert len(names) == 7 and all(set(n) <= set("abcdefghijklmnopqrstuvwxyz") for n in names)
    again = charlm.sample(model, params, jax.random.PRNGKey(5), context=3, count=7)
    other = charlm.sample(model, params, jax.random.PRNGKey(6), context=3, count=7)
    assert again == names and other != names
    long = charlm.sample(model, params, key, context=3, count=50, max_length=5)
    assert max(len(n) for n in long) <= 5
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature must be a positive number"):
            charlm.sample(model, params, key, context=3, temperature=bad)
    with pytest.raises(ValueError, match="count must be a positive int"):
        charlm.sample(model, params, key, context=3, count=0)
