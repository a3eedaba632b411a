"""jaxbp.kfac: K-FAC's step against the damped Kronecker solve written out, its running averages,
inverse refreshes and momentum step by step, its fallback, its use in fit (checkpoint and resume,
several devices) and from the CLI, and what it refuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SUBPROCESS_TIMEOUT_S

import jaxbp
from jaxbp import datasets
from jaxbp.cli import main
from jaxbp.layers import Conv, Dense, Flatten, LayerNorm, Tanh, gpt, serial
from jaxbp.layers.norm import BatchNorm
from jaxbp.losses import mse, softmax_cross_entropy
from jaxbp.optimizers import KFACState, damped_inverses, kfac
from jaxbp.quantities import kfac_factors
from jaxbp.train import CHECKPOINT_NAME, fit, make_epoch, make_step
from jaxbp.walk import params_at, path_str


def _conv_net():
    return serial(Conv(3, (3, 3), padding="VALID"), Tanh(), Flatten(), Dense(4), Tanh(), Dense(3))


def _problem(model, input_shape, m=6, dtype=jnp.float64, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = model.init(k1, input_shape)[1]
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    x = jax.random.normal(k2, (m, *input_shape), dtype)
    y = jax.random.randint(k3, (m,), 0, 3)
    return params, x, y


def _theta(g):
    W = g["W"].reshape(-1, g["W"].shape[-1])
    return jnp.concatenate([W, g["b"][None]]) if "b" in g else W


def _solve(A, G, grad, damping):
    """(A_d (x) G_d)^-1 vec(theta), row-major, the damped pair written out as one matrix."""
    pi = np.sqrt((np.trace(A) / len(A)) / (np.trace(G) / len(G)))
    root = np.sqrt(damping)
    M = np.kron(A + pi * root * np.eye(len(A)), G + root / pi * np.eye(len(G)))
    return np.linalg.solve(M, np.asarray(_theta(grad)).ravel()).reshape(len(A), len(G))


def test_one_step_is_the_damped_kronecker_solve(x64):
    """Dense and Conv (patches), each block (A + pi sqrt(l) I) (x) (G + sqrt(l)/pi I) inverted
    as one matrix by NumPy; exact factors (samples=None), no momentum. Float64: the Cholesky
    inverses and the dense solve agree to ~1e-13 on these well-conditioned blocks."""
    model = _conv_net()
    params, x, y = _problem(model, (6, 6, 2))
    lr, damping = 0.3, 0.05
    opt = kfac(model, lr, damping=damping, momentum=0.0, samples=None)
    state = opt.init(params)
    value, grads, _, extra = opt.gradients(model, softmax_cross_entropy, params, x, y,
                                           opt_state=state)  # fmt: skip
    bp_value, bp_grads = jaxbp.backprop(model, softmax_cross_entropy, params, x, y)
    np.testing.assert_allclose(value, bp_value, rtol=1e-14)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15),
                 grads, bp_grads)  # fmt: skip
    exact = kfac_factors(model, softmax_cross_entropy, params, x, y)
    assert set(extra["factors"]) == {path_str(p) for p in exact} == {"[0]", "[3]", "[5]"}
    updates, state = opt.update(grads, state, params, **extra)
    for path, f in exact.items():
        np.testing.assert_allclose(extra["factors"][path_str(path)]["A"], f["A"], rtol=1e-13)
        expected = -lr * _solve(np.asarray(f["A"]), np.asarray(f["G"]), params_at(grads, path),
                                damping)  # fmt: skip
        got = _theta(params_at(updates, path))
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12 * np.abs(expected).max())
    assert int(state.count) == 1 and float(state.weight) == pytest.approx(1 - 0.95)


def test_running_averages_inverse_refreshes_and_momentum(x64):
    """Step by step: the factors are the debiased running average of each step's own
    (w_t = d w_{t-1} + 1 - d); the inverses change on steps 0 and k only; the update is
    -lr p_t + mu update_{t-1}."""
    model = serial(Dense(5), Tanh(), Dense(3))
    params, x, y = _problem(model, (4,), m=8)
    decay, mu, lr, k = 0.7, 0.5, 0.2, 3
    opt = kfac(model, lr, decay=decay, momentum=mu, inverse_every=k, samples=None, damping=0.2)
    state, previous, seen = opt.init(params), None, []
    for t in range(k + 1):
        xb = x + 0.3 * t  # another batch each step
        targets = jax.nn.one_hot(y, 3, dtype=x.dtype)
        _, grads, _, extra = opt.gradients(model, mse, params, xb, targets,
                                           opt_state=state)  # fmt: skip
        seen.append(extra["factors"]["[0]"])
        old_inverses = state.inverses
        updates, state = opt.update(grads, state, params, **extra)
        weights = [decay ** (t - s) for s in range(t + 1)]
        for f in "AG":
            average = sum(w * s[f] for w, s in zip(weights, seen)) / sum(weights)
            np.testing.assert_allclose(state.factors["[0]"][f], average, rtol=1e-12)
        refreshed = t % k == 0
        expected_inv = damped_inverses(state.factors["[0]"]["A"], state.factors["[0]"]["G"], 0.2)
        if not refreshed:
            expected_inv = (old_inverses["[0]"]["A"], old_inverses["[0]"]["G"])
        np.testing.assert_allclose(state.inverses["[0]"]["A"], expected_inv[0], rtol=1e-12)
        np.testing.assert_allclose(state.inverses["[0]"]["G"], expected_inv[1], rtol=1e-12)
        inv = state.inverses["[0]"]
        p = inv["A"] @ _theta(grads[0]) @ inv["G"]
        expected = -lr * p + (0 if previous is None else mu * _theta(previous[0]))
        np.testing.assert_allclose(_theta(updates[0]), expected, rtol=1e-12, atol=1e-15)
        previous = updates
        params = jax.tree.map(jnp.add, params, updates)
    assert int(state.count) == k + 1


def test_a_zero_factor_leaves_only_the_damping(x64):
    """A (x) 0 = 0: the block's inverse is (lambda I)^-1, split sqrt(lambda) each (kfac-jax's
    special case), not a pi of 0/0."""
    A, G = jnp.eye(3) * 2.0, jnp.zeros((2, 2))
    inv_A, inv_G = damped_inverses(A, G, 0.04)
    np.testing.assert_allclose(inv_A, np.eye(3) / 0.2, rtol=1e-14)
    np.testing.assert_allclose(inv_G, np.eye(2) / 0.2, rtol=1e-14)


def test_layers_without_a_rule_take_their_gradient(x64):
    """LayerNorm has params and no K-FAC rule: its update is -lr times its gradient."""
    model = serial(Dense(6), LayerNorm(), Tanh(), Dense(3))
    params, x, y = _problem(model, (4,))
    opt = kfac(model, 0.1, momentum=0.0)
    assert opt.paths == ((0,), (3,))
    state = opt.init(params)
    _, grads, _, extra = opt.gradients(model, softmax_cross_entropy, params, x, y,
                                       opt_state=state)  # fmt: skip
    updates, _ = opt.update(grads, state, params, **extra)
    jax.tree.map(lambda u, g: np.testing.assert_allclose(u, -0.1 * g, rtol=1e-15),
                 updates[1], grads[1])  # fmt: skip


def _digits(n=256):
    (x, y), (xt, yt) = datasets.load("digits")
    return (x[:n], y[:n]), (xt[:96], yt[:96])


def test_fit_trains_checkpoints_and_resumes_to_the_same_params(tmp_path):
    """One state tree: factors, inverses, velocity and the draws' key go into the checkpoint,
    and a resumed run reaches the uninterrupted one's params (same code path: float32 sums
    in the same order; 1e-6 allows for nothing but that)."""
    train, test = _digits()
    model = jaxbp.mlp([32, 10], "tanh")
    params = model.init(jax.random.PRNGKey(0), (64,))[1]
    options = dict(epochs=4, batch_size=64, key=jax.random.PRNGKey(1), progress=False,
                   eval_data=test)  # fmt: skip
    opt = kfac(model, 0.05)
    straight, history = fit(model, softmax_cross_entropy, params, train, optimizer=opt, **options)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    half = options | {"epochs": 2, "checkpoint_dir": tmp_path}
    fit(model, softmax_cross_entropy, params, train, optimizer=opt, **half)
    like = {"params": params, "opt_state": opt.init(params)}
    saved, _ = jaxbp.checkpoint.load(tmp_path / CHECKPOINT_NAME, like=like)
    assert int(saved["opt_state"].count) == 2 * 4
    assert float(jnp.abs(saved["opt_state"].factors["[0]"]["A"]).max()) > 0
    resumed, _ = fit(model, softmax_cross_entropy, params, train, optimizer=opt,
                     **options | {"checkpoint_dir": tmp_path, "resume": True})  # fmt: skip
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 resumed, straight)  # fmt: skip


def test_make_step_and_make_epoch_take_kfac():
    (x, y), _ = _digits(128)
    model = jaxbp.mlp([16, 10], "relu")
    params = model.init(jax.random.PRNGKey(0), (64,))[1]
    opt = kfac(model, 0.05)
    step = make_step(model, softmax_cross_entropy, opt)
    p, s, first = step(jax.tree.map(jnp.copy, params), opt.init(params), x, y)
    assert isinstance(s, KFACState) and int(s.count) == 1 and np.isfinite(first)
    epoch = make_epoch(model, softmax_cross_entropy, opt, batch_size=32, steps=4)
    _, s, mean = epoch(params, opt.init(params), x, y, jax.random.PRNGKey(2))
    assert int(s.count) == 4 and np.isfinite(mean)


def test_what_kfac_refuses():
    model = jaxbp.mlp([4, 3], "tanh")
    params = model.init(jax.random.PRNGKey(0), (2,))[1]
    with pytest.raises(NotImplementedError, match="Tied"):
        kfac(gpt(11, 4, num_layers=1, features=8, num_heads=2, tie_weights=True), 0.1)
    with pytest.raises(NotImplementedError, match=r"layer \[1\] BatchNorm"):
        kfac(serial(Dense(4), BatchNorm(), Dense(2)), 0.1)
    for options, error, match in [
        ({"damping": 0.0}, ValueError, "damping must be positive, got 0"),
        ({"momentum": 1.0}, ValueError, r"momentum must be in \[0, 1\), got 1"),
        ({"decay": -0.1}, ValueError, "decay"),
        ({"inverse_every": 0}, ValueError, "inverse_every must be at least 1"),
        ({"inverse_every": 2.5}, TypeError, "inverse_every must be an int"),
        ({"samples": 0}, ValueError, "samples must be a positive int or None"),
    ]:
        with pytest.raises(error, match=match):
            kfac(model, 0.1, **options)
    with pytest.raises(TypeError, match="learning_rate must be a number"):
        kfac(model, "0.1")
    opt = kfac(model, 0.1)
    with pytest.raises(ValueError, match="needs this batch's K-FAC factors"):
        opt.update(params, opt.init(params), params)
    x, y = jnp.ones((4, 2)), jnp.zeros(4, jnp.int32)
    with pytest.raises(ValueError, match="built for another model"):
        opt.gradients(jaxbp.mlp([4, 3], "tanh"), softmax_cross_entropy, params, x, y,
                      opt_state=opt.init(params))  # fmt: skip
    with pytest.raises(ValueError, match="train it with grad='backprop', not 'autodiff'"):
        fit(model, softmax_cross_entropy, params, (x, y), optimizer=opt, epochs=1,
            batch_size=4, key=jax.random.PRNGKey(0), grad="autodiff", progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="params have no W at"):
        opt.init(jaxbp.mlp([4], "tanh").init(jax.random.PRNGKey(0), (2,))[1][:1] + ((), ()))


TWO_DEVICES = """
import jax, numpy as np
import jaxbp
from jaxbp import datasets
from jaxbp.losses import softmax_cross_entropy
from jaxbp.train import fit
(x, y), _ = datasets.load("digits")
model = jaxbp.mlp([16, 10], "tanh")
params = model.init(jax.random.PRNGKey(0), (64,))[1]
run = lambda devices: fit(model, softmax_cross_entropy, params, (x[:256], y[:256]),
    optimizer=jaxbp.kfac(model, 0.05), epochs=2, batch_size=64, key=jax.random.PRNGKey(1),
    devices=devices, progress=False)[0]
one, two = run(jax.devices()[:1]), run(jax.devices()[:2])
err = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in
          zip(jax.tree.leaves(one), jax.tree.leaves(two)))
print(f"max_rel_diff={err:.2e}")
# The batch's factors are sums over its examples, split over the devices and all-reduced: float32
# sums in another order (~1e-7 each), grown through 8 steps of inverses of damped factors.
assert err < 1e-3, err
"""


def test_kfac_on_two_devices_matches_one():
    # conftest.py's XLA flags (LLVM's optimisations off) as the suite's other processes have
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"
    env = {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", TWO_DEVICES], capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "max_rel_diff=" in done.stdout


def test_jaxbp_train_optimizer_kfac(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--optimizer", "kfac", "--layers", "32", "--epochs", "2", "--no-progress",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["optimizer"], config["lr"], config["damping"], config["inverse_every"]) == (
        "kfac", 0.05, 0.1, 5,
    )  # fmt: skip
    assert "kfac lr 0.05" in capsys.readouterr().out
    resume = ["train", "--optimizer", "kfac", "--layers", "32", "--epochs", "3", "--no-progress",
              "--out", str(out), "--resume"]  # fmt: skip
    assert main(resume) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    for bad, message in [
        (["--optimizer", "sgd", "--damping", "1"], "--damping applies to --optimizer kfac only"),
        (["--optimizer", "kfac", "--grad", "dp"], "--grad backprop only, not dp"),
        (["--optimizer", "kfac", "--model", "cnn"], "--optimizer kfac on this model"),
    ]:
        capsys.readouterr()
        assert main(["train", *bad, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "bad").exists()


def test_kfac_on_the_residual_preset():
    """Inside Residual blocks every Dense is preconditioned and the skip stays (the gradient is
    backprop's, the step's key passed through)."""
    (x, y), _ = _digits(32)
    for name, inner in [("residual", ["[0]", "[1][1]", "[1][3]", "[4]"])]:
        model = jaxbp.layers.preset(name, 10)
        params = model.init(jax.random.PRNGKey(0), (64,))[1]
        opt = kfac(model, 0.05)
        assert set(inner) <= {path_str(p) for p in opt.paths}
        key = jax.random.PRNGKey(3)
        gradients = jax.jit(opt.gradients, static_argnums=(0, 1))
        _, grads, _, extra = gradients(model, softmax_cross_entropy, params, x, y,
                                       opt_state=opt.init(params), key=key)  # fmt: skip
        reference = jaxbp.backprop(model, softmax_cross_entropy, params, x, y, key=key)[1]
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                     grads, reference)  # fmt: skip
        updates, _ = jax.jit(opt.update)(grads, opt.init(params), params, **extra)
        assert all(bool(jnp.isfinite(u).all()) for u in jax.tree.leaves(updates))
