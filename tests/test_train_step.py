"""make_step and make_epoch: keys and state reach the engine as in fit, or the program refuses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_trees_close, rel_error

import jaxbp
from jaxbp import backprop, mlp, softmax_cross_entropy
from jaxbp.layers import BatchNorm, Dense, Dropout, Relu, eval_mode, init_state, serial
from jaxbp.train import fit, make_epoch, make_step

LOSS = softmax_cross_entropy
# Momentum has a state, which must come back from the step; linear in the gradient, so a wrong
# one shows (Adam's first step is lr * sign(g)).
OPT = optax.sgd(0.1, momentum=0.9)
# float32; the step is one compiled program, the reference the same operations run op by op,
# whose sums XLA may fuse and order differently: ~1e-7 relative. 1e-5 leaves a margin for other
# CPUs, while a dropped state (mean 0, var 1) or another Dropout mask is off by 1e-2 or more.
RTOL = 1e-5


def _data(n=32):
    """Inputs centred at 2, far from BatchNorm's initial running mean of 0; 3 classes."""
    x = 2.0 + jax.random.normal(jax.random.PRNGKey(1), (n, 5))
    return x, jax.random.randint(jax.random.PRNGKey(2), (n,), 0, 3)


def _init(model):
    return model.init(jax.random.PRNGKey(0), (5,))[1]


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)  # the step donates its inputs


def _by_hand(model, params, x, y, **options):
    """backprop with the same key and state, then the optax update: what one step must do."""
    value, grads, *state = backprop(model, LOSS, params, x, y, **options)
    updates, opt_state = OPT.update(grads, OPT.init(params), params)
    return optax.apply_updates(params, updates), *state, opt_state, value


# BatchNorm first: after a Dense its bias would get a zero gradient, which is rounding noise.
STATEFUL = serial(BatchNorm(), Dense(8), Relu(), Dense(3))
STOCHASTIC = serial(Dense(8), Relu(), Dropout(0.5), Dense(3))
BOTH = serial(BatchNorm(), Dense(8), Relu(), Dropout(0.5), Dense(3))
STATELESS = mlp([8, 3], "tanh")


def test_stateless_step_is_backprop_then_the_optax_update():
    params, (x, y) = _init(STATELESS), _data()
    want = _by_hand(STATELESS, params, x, y)
    got = make_step(STATELESS, LOSS, OPT)(_copy(params), OPT.init(params), x, y)
    assert len(got) == 3  # (params, opt_state, loss), as before keys and state
    assert_trees_close(got, want, rtol=RTOL, what="step against backprop + optax")


def test_key_and_state_reach_the_engine():
    params, (x, y), key = _init(BOTH), _data(), jax.random.PRNGKey(3)
    state = init_state(BOTH, params)
    want = _by_hand(BOTH, params, x, y, key=key, state=state)
    step = make_step(BOTH, LOSS, OPT)
    got = step(_copy(params), OPT.init(params), x, y, key=key, state=_copy(state))
    assert len(got) == 4  # (params, state, opt_state, loss)
    assert_trees_close(got, want, rtol=RTOL, what="step against backprop(key, state) + optax")
    assert rel_error(got[1], state) > 1e-2  # the running statistics moved


def test_state_carries_from_step_to_step_as_in_fit():
    params, (x, y) = _init(STATEFUL), _data()
    state = init_state(STATEFUL, params)
    fitted, fitted_state, _ = fit(
        STATEFUL, LOSS, params, (x, y), optimizer=OPT, epochs=1, batch_size=len(x),
        key=jax.random.PRNGKey(4), state=state, progress=False,
    )  # fmt: skip
    step = make_step(STATEFUL, LOSS, OPT)
    p, s, opt_state, _ = step(_copy(params), OPT.init(params), x, y, state=_copy(state))
    # fit's one step sees the same examples in another order: only the sums' order differs.
    assert_trees_close((p, s), (fitted, fitted_state), rtol=RTOL, what="make_step against fit")
    second = step(p, opt_state, x, y, state=_copy(s))[1]
    assert rel_error(second, s) > 1e-3  # the second step moves them on: 0.9 s + 0.1 batch


def test_stateful_model_without_state_is_refused_naming_the_layer():
    params, (x, y) = _init(STATEFUL), _data()
    with pytest.raises(ValueError, match=r"make_step: .*keeps state \(layer \[0\] BatchNorm\("):
        make_step(STATEFUL, LOSS, OPT)(params, OPT.init(params), x, y)
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(params))  # refused, not run


@pytest.mark.parametrize("grad", ["backprop", "autodiff"])
def test_dropout_without_a_key_names_the_layer(grad):
    params, (x, y) = _init(STOCHASTIC), _data()
    with pytest.raises(ValueError, match=r"layer \[2\] Dropout\(.*key="):
        make_step(STOCHASTIC, LOSS, OPT, grad)(params, OPT.init(params), x, y)


def test_dropout_keys_decide_the_update():
    params, (x, y) = _init(STOCHASTIC), _data()
    step = make_step(STOCHASTIC, LOSS, OPT)

    def run(seed):
        key = jax.random.PRNGKey(seed)
        return step(_copy(params), OPT.init(params), x, y, key=key)[0]

    a, b, c = run(5), run(5), run(6)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.array_equal(u, v)  # the same program on the same inputs
    assert rel_error(a, c) > 1e-3  # another key, other masks


def test_poisson_sampling_engine_is_refused():
    engine = jaxbp.dp_sgd(1.0, 1.0, delta=None)
    with pytest.raises(ValueError, match="make_step: dp_sgd.* asks for Poisson sampling"):
        make_step(STATELESS, LOSS, OPT, engine)


def test_epoch_refuses_a_stateful_model_unless_stateful():
    params, (x, y) = _init(STATEFUL), _data()
    epoch = make_epoch(STATEFUL, LOSS, OPT, batch_size=8, steps=4)
    with pytest.raises(ValueError, match=r"make_epoch: .*\(layer \[0\] BatchNorm\(.*stateful=True"):
        epoch(params, OPT.init(params), x, y, jax.random.PRNGKey(0))
    epoch = make_epoch(STATEFUL, LOSS, OPT, batch_size=8, steps=4, stateful=True)
    state = init_state(STATEFUL, params)
    _, new_state, _, value = epoch(params, state, OPT.init(params), x, y, jax.random.PRNGKey(0))
    assert np.isfinite(value) and rel_error(new_state, state) > 1e-2


def test_epoch_key_reaches_dropout():
    params, (x, y) = _init(STOCHASTIC), _data()

    def run(model, seed):
        epoch = make_epoch(model, LOSS, OPT, batch_size=8, steps=4)
        return epoch(params, OPT.init(params), x, y, jax.random.PRNGKey(seed))[0]

    a, b, c = run(STOCHASTIC, 7), run(STOCHASTIC, 7), run(STOCHASTIC, 8)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.array_equal(u, v)
    # Dropout without a key raises, so running at all shows it got one; evaluation mode, with
    # the same key and so the same shuffle, differs only by the masks.
    assert rel_error(a, run(eval_mode(STOCHASTIC), 7)) > 1e-3
    assert rel_error(a, c) > 1e-3
