"""Properties over random architectures: the hand-written sweep agrees with jax.grad, and the
checker passes it. Hypothesis draws depth 1-4, widths 1-6, activations, losses, batch sizes 1-5
and dtypes; derandomized, so every run tries the same examples."""

from __future__ import annotations

import contextlib

import jax
import numpy as np
from conftest import np_forward, np_loss
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxbp import layers as L
from jaxbp import losses
from jaxbp._compat import enable_x64
from jaxbp.backprop import autodiff, backprop
from jaxbp.check import check_backprop

ACTIVATIONS = sorted(L.ACTIVATIONS)
LOSSES = ("mse", "binary_cross_entropy", "labels", "probs")
# float64: the two sides compute the same products in another order, ~1e-15 apart per operation,
# ~1e-13 over four layers. float32 (eps 1.2e-7): the same drift, plus derivatives taken from
# saved outputs (sigmoid's y(1-y) loses digits where 1-y rounds), stays under ~1e-5; 1e-4 is the
# bound with margin. A wrong factor, sign or term is off by far more than either.
RTOL = {"float64": 1e-10, "float32": 1e-4}


@st.composite
def problems(draw):
    depth = draw(st.integers(1, 4))
    return {
        "widths": draw(st.lists(st.integers(1, 6), min_size=depth, max_size=depth)),
        "activation": draw(st.sampled_from(ACTIVATIONS)),
        "output": draw(st.sampled_from([None, *ACTIVATIONS])),
        "loss": draw(st.sampled_from(LOSSES)),
        "batch": draw(st.integers(1, 5)),
        "inputs": draw(st.integers(1, 6)),
        "dtype": draw(st.sampled_from(["float32", "float64"])),
        "seed": draw(st.integers(0, 2**16)),
    }


def build(problem):
    """The model, loss, params, x and y of a drawn problem, as NumPy arrays of its dtype."""
    rng = np.random.default_rng(problem["seed"])
    model = L.mlp(problem["widths"], problem["activation"], problem["output"])
    shapes = jax.eval_shape(lambda k: model.init(k, (problem["inputs"],))[1], jax.random.PRNGKey(0))
    params = jax.tree.map(lambda s: _draw(rng, s.shape, problem["dtype"]), shapes)
    m, k = problem["batch"], problem["widths"][-1]
    x = rng.standard_normal((m, problem["inputs"])).astype(problem["dtype"])
    loss, y = _loss_and_targets(problem["loss"], rng, (m, k), problem["dtype"])
    return model, loss, params, x, y


def _draw(rng, shape, dtype):
    scale = 1 / np.sqrt(shape[0]) if len(shape) == 2 else 0.1  # LeCun-normal W, small b
    return (scale * rng.standard_normal(shape)).astype(dtype)


def _loss_and_targets(name, rng, shape, dtype):
    if name == "mse":
        return losses.mse, rng.standard_normal(shape).astype(dtype)
    if name == "binary_cross_entropy":
        return losses.binary_cross_entropy, rng.uniform(size=shape).astype(dtype)
    if name == "labels":
        return losses.softmax_cross_entropy, rng.integers(0, shape[1], size=shape[0])
    rows = rng.uniform(size=shape)
    return losses.softmax_cross_entropy, (rows / rows.sum(1, keepdims=True)).astype(dtype)


def _precision(dtype):
    return enable_x64() if dtype == "float64" else contextlib.nullcontext()


def leaf_errors(got, want):
    """||got - want|| / ||want|| per leaf; a leaf that is exactly zero in want (a dead relu,
    a one-class softmax) is measured against the largest leaf instead, times 1e-6."""
    got, want = jax.tree.leaves(got), jax.tree.leaves(want)
    norms = [float(np.linalg.norm(np.asarray(w, np.float64))) for w in want]
    floor = max([*norms, 1e-300]) * 1e-6
    diffs = [
        np.linalg.norm(np.asarray(g, np.float64) - np.asarray(w, np.float64))
        for g, w in zip(got, want)
    ]
    return [float(d / max(n, floor)) for d, n in zip(diffs, norms)]


@settings(derandomize=True, deadline=None, max_examples=25)
@given(problems())
def test_backprop_agrees_with_autodiff(problem):
    model, loss, params, x, y = build(problem)
    with _precision(problem["dtype"]):
        both = jax.jit(
            lambda p, x, y: (backprop(model, loss, p, x, y), autodiff(model, loss, p, x, y))
        )
        (value, grads), (_, ref_grads) = both(params, x, y)
    assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
    assert all(g.dtype == np.dtype(problem["dtype"]) for g in jax.tree.leaves(grads))
    rtol = RTOL[problem["dtype"]]
    # The cost against NumPy/SciPy in float64 from the same inputs; absolute below 1, where a
    # float32 softplus(z) - y z may cancel to a small value known only to ~eps of its terms.
    truth = np_loss(repr(loss), np_forward(model, params, x), y)[0]
    assert abs(float(value) - truth) <= rtol * max(abs(truth), 1.0), (float(value), truth)
    errors = leaf_errors(grads, ref_grads)
    assert max(errors) <= rtol, (problem, errors)


@settings(derandomize=True, deadline=None, max_examples=10)
@given(problems())
def test_checker_passes_backprop_on_random_architectures(problem):
    model, loss, params, x, y = build(problem)
    report = check_backprop(model, loss, params, x, y, dtype=problem["dtype"], key=problem["seed"])
    assert report.ok, str(report)
