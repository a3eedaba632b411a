"""kfac-jax as a peer (jaxbp.bench.kfac_peer): its factors are jaxbp's kfac_factors, its first
step is the pi-damped K-FAC update written out from the factors, and it trains the autoencoder's
shape on digits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _torch_peers import peer

from jaxbp import losses
from jaxbp.quantities import kfac_factors


def _pi_damped_update(factors, grads, lr, damping):
    """-lr (A + pi sqrt(l) I)^-1 [dW; db] (G + sqrt(l)/pi I)^-1 per Dense, pi^2 = (tr A / dim A)
    / (tr G / dim G): the K-FAC step of Martens and Grosse (2015), section 6.3, in NumPy."""
    out = {}
    for path, f in factors.items():
        A, G = np.asarray(f["A"]), np.asarray(f["G"])
        pi = np.sqrt((np.trace(A) / len(A)) / (np.trace(G) / len(G)))
        root = np.sqrt(damping)
        V = np.concatenate([grads[path[0]]["W"], grads[path[0]]["b"][None]], axis=0)
        P = np.linalg.solve(A + pi * root * np.eye(len(A)), V)
        P = np.linalg.solve(G + root / pi * np.eye(len(G)), P.T).T
        out[path] = {"W": -lr * P[:-1], "b": -lr * P[-1]}
    return out


def _rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("loss", ["mse", "binary_cross_entropy", "softmax_cross_entropy"])
def test_factors_and_first_step_are_jaxbps(loss, x64):
    """ggn_exact mode, one step from a tiny tanh/sigmoid MLP (its linear code layer too): every
    layer's A and G equal kfac_factors' (scale 1, bias last) to 1e-12 relative (float64, both
    exact: they differ by summation order alone, seen 4e-16), and the step equals the pi-damped
    update from them (the velocity starts at zero, so step one is -lr P whatever the momentum;
    two small solves per layer, seen 1e-15)."""
    peer("kfac_jax")
    from jaxbp.bench.kfac_peer import KfacPeer, Net

    net = Net((6, 5, 4, 3), ("tanh", None, "sigmoid"))
    params = net.init(jax.random.PRNGKey(0), jnp.float64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 6))
    y = {
        "mse": rng.standard_normal((8, 3)),
        "binary_cross_entropy": rng.uniform(size=(8, 3)),
        "softmax_cross_entropy": np.arange(8, dtype=np.int32) % 3,
    }[loss]
    lr, damping = 0.3, 1e-2
    kfac = KfacPeer(net, loss, learning_rate=lr, momentum=0.9, damping=damping,
                    estimation_mode="ggn_exact")  # fmt: skip
    out = kfac.run(params, [(x, y)], 1, key=jax.random.PRNGKey(3))

    model, jloss = net.jaxbp_model(), losses.get(loss)

    @jax.jit  # eager, 3 s more
    def jaxbp_side(p):
        return kfac_factors(model, jloss, p, x, y), jloss.forward(model.forward(p, x)[0], y)[0]

    ref, jaxbp_value = jaxbp_side(params)
    assert set(ref) == set(net.dense_paths())
    for path, f in ref.items():
        got = kfac.factors(out["state"], path)
        for k in "AG":
            assert _rel(got[k], f[k]) < 1e-12, (loss, path, k, _rel(got[k], f[k]))

    value, grads = jax.jit(jax.value_and_grad(kfac.value))(params, (x, y))
    assert np.isclose(out["loss"][0], value, rtol=1e-13)
    assert np.isclose(value, jaxbp_value, rtol=1e-13)  # the peer's loss is jaxbp's
    grads, before, after = jax.tree.map(np.asarray, (grads, params, out["params"]))
    for path, d in _pi_damped_update(ref, grads, lr, damping).items():
        for k in "Wb":
            step = after[path[0]][k] - before[path[0]][k]
            assert _rel(step, d[k]) < 1e-10, (loss, path, k, _rel(step, d[k]))


def test_runner_trains_a_small_autoencoder_on_digits():
    """kfac-jax's defaults (one Rademacher draw per step, EMA 0.95), inverses every 2 steps,
    momentum: 6 float32 steps of a 64-16-64 tanh autoencoder on digits batches of 64 (deeper
    ones cost seconds more to compile, nothing more to check). The loss is finite and falls
    (first to last by > 5%: seen 47.3 -> 42.1), each step timed, the step's memory reported."""
    peer("kfac_jax")
    from jaxbp.bench.kfac_peer import KfacPeer, Net, digits_batches

    net = Net((64, 16, 64), ("tanh", None))
    params = net.init(jax.random.PRNGKey(0))
    kfac = KfacPeer(net, "sigmoid_cross_entropy", learning_rate=0.1, momentum=0.5, damping=1.0,
                    inverse_period=2)  # fmt: skip
    out = kfac.run(params, digits_batches(64, seed=0), 6, key=jax.random.PRNGKey(1))
    assert np.all(np.isfinite(out["loss"])) and out["loss"][-1] < 0.95 * out["loss"][0]
    assert out["seconds"].shape == (6,) and np.all(out["seconds"] > 0)
    assert out["memory_bytes"] > 0
    assert jax.tree.structure(out["params"]) == jax.tree.structure(params)
    # The caller's params were copied, not donated: still readable and unchanged.
    assert np.all(np.isfinite(jax.tree.leaves(params)[0]))


def test_net_and_batches_reject_what_they_cannot_run():
    """A Net needs one activation per Dense; digits_batches a task it knows; factors a Dense."""
    peer("kfac_jax")
    from jaxbp.bench.kfac_peer import KfacPeer, Net, digits_batches

    with pytest.raises(ValueError, match="one per Dense"):
        Net((4, 3, 2), ("tanh",))
    with pytest.raises(ValueError, match="unknown activation"):
        Net((4, 2), ("swish",))
    with pytest.raises(ValueError, match="task must be"):
        next(digits_batches(8, task="denoise"))
    net = Net((4, 3, 2), ("tanh", None))
    kfac = KfacPeer(net, "mse", learning_rate=0.1, momentum=0.0, damping=1.0)
    with pytest.raises(ValueError, match="not a Dense"):
        kfac.factors(None, 1)
