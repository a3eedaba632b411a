"""Curvature by the hand-written rules: hvp, ggn_vp, diag_ggn, diag_ggn_mc and kfac_factors
against jax references in float64 (H v by jax.jvp of jax.grad of the cost; the GGN J^T H J from
jax.jacobian of the whole batch's output and jax.hessian of the loss), on an MLP with dropout (its
mask fixed by the key), a CNN, a residual MLP, a branched net, a tiny GPT with tied weights, and
with BatchNorm; the losses' Hessian roots; Monte Carlo unbiasedness within a stated bound; K-FAC
exact for one example; planted errors caught; unsupported layers named.

Tiny shapes and one compilation per model: the structure is what is tested, not the size.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_error
from jax.flatten_util import ravel_pytree

from jaxbp import layers as L
from jaxbp import losses
from jaxbp.layers import eval_mode, forward_state, init_state
from jaxbp.quantities import _columns, curvature
from jaxbp.quantities.curvature import diag_ggn, diag_ggn_mc, ggn_vp, hvp, kfac_factors

RTOL = 1e-10  # float64 throughout: the rules and the references differ by summation order only
CAUGHT = 1e-3  # a planted error must move the result by at least this much
FAST = {"xla_backend_optimization_level": 0}  # compiling dominates; the programs run once
KEY = jax.random.PRNGKey(0)  # the model's key: dropout's mask
CE, MSE, BCE = losses.softmax_cross_entropy, losses.mse, losses.binary_cross_entropy


def _jit(f, *args):
    """f(*args) compiled once, without LLVM's optimisations (each program runs once)."""
    return jax.jit(f, compiler_options=FAST)(*args)


def _labels(loss, rng, shape, k):
    """Targets for a loss: class ids (batch, ...) for CE, N(0,1) for MSE, U(0,1) for BCE."""
    if loss is CE:
        return jnp.asarray(rng.integers(0, k, shape))
    draw = rng.normal if loss is MSE else rng.uniform
    return jnp.asarray(draw(size=(*shape, k)))


def _problem(model, in_shape, batch, k, loss, *, ids=None, seq=None):
    """float64 params (nudged off init, so zero biases hide nothing), inputs and targets, drawn
    by NumPy (no per-shape compilation of random ops)."""
    rng = np.random.default_rng(0)
    _, params = model.init(jax.random.PRNGKey(0), in_shape)
    params = jax.tree.map(lambda a: jnp.asarray(a + 0.3 * rng.normal(size=a.shape)), params)
    if ids is None:
        x = jnp.asarray(rng.normal(size=(batch, *in_shape)))
    else:
        x = jnp.asarray(rng.integers(0, ids, (batch, *in_shape)))
    y = _labels(loss, rng, (batch,) if seq is None else (batch, seq), k)
    return params, x, y


def _apply(model, p, x, state):
    """The forward the quantities differentiate: KEY fixes dropout's mask (it depends on the key
    and the shapes only, not on params); state for BatchNorm."""
    if state is None:
        return model.apply(p, x, key=KEY)
    return forward_state(model, p, state, x, key=KEY)[0]


def _reference(model, loss, params, x, y, state=None, v=None):
    """(H v, G, unravel), over ravel_pytree(params): H v by jax.jvp of jax.grad of C (None without
    v); G = J^T H_loss J from jax.jacobian of the whole batch's output and jax.hessian of the
    loss in y_pred."""
    flat, unravel = ravel_pytree(params)
    y_pred = _apply(model, params, x, state)

    def run(f):
        cost = lambda g: loss.apply(_apply(model, unravel(g), x, state), y)  # noqa: E731
        Hv = None if v is None else jax.jvp(jax.grad(cost), (f,), (ravel_pytree(v)[0],))[1]
        J = jax.jacobian(lambda g: _apply(model, unravel(g), x, state).reshape(-1))(f)
        H_loss = jax.hessian(lambda z: loss.apply(z.reshape(y_pred.shape), y))(y_pred.reshape(-1))
        return Hv, J.T @ H_loss @ J

    Hv, G = _jit(run, flat)
    return Hv, G, unravel


def _direction(params):
    flat, unravel = ravel_pytree(params)
    return unravel(jnp.asarray(np.random.default_rng(7).normal(size=flat.shape)))


def _ours(model, loss, params, x, y, v, state=None):
    """hvp, ggn_vp and diag_ggn in one jitted call: one compilation per model."""

    def run(p, v):
        kw = {"state": state, "key": KEY}
        return (
            hvp(model, loss, p, x, y, v, **kw),
            ggn_vp(model, loss, p, x, y, v, **kw),
            diag_ggn(model, loss, p, x, y, **kw),
        )

    return _jit(run, params, v)


def _plain_mlp():
    return L.mlp([5, 3], "tanh"), (4,), 4, 3, CE, {}


def _gpt():
    model = L.gpt(5, 3, num_layers=1, features=4, num_heads=2, mlp_ratio=1, tie_weights=True)
    return model, (3,), 2, 5, CE, dict(ids=5, seq=3)


# (model, input shape, batch, outputs k, loss, extras): every loss, every combinator.
MODELS = {
    "mlp_dropout": lambda: (L.mlp([5, 3], "tanh", dropout=0.3), (4,), 4, 3, CE, {}),
    "cnn": lambda: (L.cnn(3, (2,), 4, "tanh", convs=1, batch_norm=False), (4, 4, 1), 3, 3, CE, {}),
    "residual": lambda: (L.residual_mlp(4, 2, 2, "tanh"), (3,), 3, 2, MSE, {}),
    "branched": lambda: (L.branched_mlp((3,), 2), (3,), 3, 2, BCE, {}),
    "gpt_tied": _gpt,
}


@pytest.mark.parametrize("name", MODELS)
def test_matches_jax_hessian_and_jacobian_ggn(name, x64):
    model, in_shape, batch, k, loss, extra = MODELS[name]()
    params, x, y = _problem(model, in_shape, batch, k, loss, **extra)
    v = _direction(params)
    Hv_ref, G, unravel = _reference(model, loss, params, x, y, v=v)
    vf = ravel_pytree(v)[0]
    Hv, Gv, dG = _ours(model, loss, params, x, y, v)
    assert rel_error(Hv, unravel(Hv_ref)) <= RTOL
    assert rel_error(Gv, unravel(G @ vf)) <= RTOL
    assert rel_error(dG, unravel(jnp.diag(G))) <= RTOL
    # The GGN is the Hessian less the model's own curvature: they differ (the test can fail).
    assert rel_error(Gv, unravel(Hv_ref)) > CAUGHT


def _bn_model():
    return L.serial(L.Dense(4), L.BatchNorm(), L.Tanh(), L.Dense(3))


def test_batchnorm_training_hvp_and_ggn_vp_exact_diagonals_refuse(x64):
    """The batch's statistics couple the examples: J is the whole batch's Jacobian, which hvp and
    ggn_vp use exactly; the per-example quantities raise, naming the layer's path."""
    model = _bn_model()
    params, x, y = _problem(model, (3,), 5, 3, CE)
    state = init_state(model, params)
    v = _direction(params)
    Hv_ref, G, unravel = _reference(model, CE, params, x, y, state, v)
    vf = ravel_pytree(v)[0]
    Hv, Gv = _jit(
        lambda p, v: (
            hvp(model, CE, p, x, y, v, state=state),
            ggn_vp(model, CE, p, x, y, v, state=state),
        ),
        params,
        v,
    )
    # Over the whole vector: the bias before BatchNorm has no effect, so its entries are ~1e-17
    # rounding on both sides and a per-leaf relative error would compare noise with noise.
    assert rel_error(ravel_pytree(Hv)[0], Hv_ref) <= RTOL
    assert rel_error(ravel_pytree(Gv)[0], G @ vf) <= RTOL
    for f in (
        lambda p: diag_ggn(model, CE, p, x, y, state=state),
        lambda p: diag_ggn_mc(model, CE, p, x, y, jax.random.PRNGKey(0), state=state),
        lambda p: kfac_factors(model, CE, p, x, y, state=state),
    ):
        with pytest.raises(NotImplementedError, match=r"layer \[1\] BatchNorm"):
            jax.eval_shape(f, params)  # raised while tracing, before any work


def test_batchnorm_in_eval_mode_with_state(x64):
    model = eval_mode(_bn_model())
    params, x, y = _problem(model, (3,), 4, 3, CE)
    state = jax.tree.map(lambda a: a + 0.3, init_state(model, params))  # not the trivial (0, 1)
    _, G, unravel = _reference(model, CE, params, x, y, state)
    v = _direction(params)
    _, Gv, dG = _ours(model, CE, params, x, y, v, state)
    assert rel_error(Gv, unravel(G @ ravel_pytree(v)[0])) <= RTOL
    assert rel_error(dG, unravel(jnp.diag(G))) <= RTOL


# ---------------------------------------------------------------------------------------------
# The losses' Hessian roots and samples


@pytest.mark.parametrize(
    "loss, shape", [(MSE, (3, 2, 4)), (BCE, (3, 4)), (CE, (3, 4)), (CE, (2, 3, 4))]
)
def test_loss_hessian_roots_square_to_jax_hessian(loss, shape, x64):
    """sum_c S[..., c] S[..., c]^T, placed block by block, equals jax.hessian of C in y_pred;
    the mean of n samples s s^T approaches it within 6 standard errors (fixed key)."""
    rng = np.random.default_rng(1)
    z, y = jnp.asarray(rng.normal(size=shape)), _labels(loss, rng, shape[:-1], shape[-1])
    n, k, draws = z.size // shape[-1], shape[-1], 2000

    def run(z):
        H = jax.hessian(lambda f: loss.apply(f.reshape(shape), y))(z.reshape(-1))
        S = loss.hessian_sqrt(z, y).reshape(n, k, k)
        keys = jax.random.split(jax.random.PRNGKey(3), draws)
        s = jax.vmap(lambda kk: loss.hessian_sqrt_sample(z, y, kk).reshape(-1))(keys)
        outer = s[:, :, None] * s[:, None, :]
        return H, jnp.einsum("pac,pbc->pab", S, S), outer.mean(0), outer.std(0)

    H, blocks, mean, std = _jit(run, z)
    assert rel_error(jax.scipy.linalg.block_diag(*blocks), H) <= RTOL
    assert jnp.all(jnp.abs(mean - H) <= 6 * std / np.sqrt(draws) + 1e-15)


def test_probability_row_labels_scale_the_root_by_their_mass(x64):
    rng = np.random.default_rng(1)
    z, y = jnp.asarray(rng.normal(size=(3, 4))), jnp.asarray(2 * rng.dirichlet(np.ones(4), 3))
    H, S = _jit(
        lambda z: (jax.hessian(lambda f: CE.apply(f.reshape(3, 4), y))(z.reshape(-1)),
                   CE.hessian_sqrt(z, y)),
        z,
    )  # fmt: skip
    assert rel_error(jax.scipy.linalg.block_diag(*(s @ s.T for s in S)), H) <= RTOL


# ---------------------------------------------------------------------------------------------
# Monte Carlo


def test_diag_ggn_mc_is_unbiased_within_its_standard_error(x64):
    """n single-draw estimates (vmap over keys) average to the exact diagonal within 5 standard
    errors in every entry, and samples=n in one call lands within 5 of them too: fixed keys, so
    the bound is checked once, deterministically."""
    model, in_shape, batch, k, loss, extra = _plain_mlp()
    params, x, y = _problem(model, in_shape, batch, k, loss, **extra)
    n = 1000

    def run(p):
        exact = diag_ggn(model, loss, p, x, y)
        keys = jax.random.split(jax.random.PRNGKey(4), n)
        draws = jax.vmap(lambda kk: diag_ggn_mc(model, loss, p, x, y, kk))(keys)
        pooled = diag_ggn_mc(model, loss, p, x, y, jax.random.PRNGKey(5), samples=n)
        return exact, draws, pooled

    exact, draws, pooled = _jit(run, params)
    for e, d, m in zip(*(jax.tree.leaves(t) for t in (exact, draws, pooled))):
        se = d.std(0) / np.sqrt(n) + 1e-15
        assert jnp.all(jnp.abs(d.mean(0) - e) <= 5 * se)
        assert jnp.all(jnp.abs(m - e) <= 5 * se)
    assert rel_error(pooled, exact) > 1e-6  # a real estimate, not the exact value in disguise


# ---------------------------------------------------------------------------------------------
# K-FAC


def _theta_ggn(model, loss, params, x, y, to_theta, from_theta):
    """The exact GGN over theta = [W.reshape(-1, F); b] flattened row-major."""
    theta = to_theta(params)
    y_pred = model.apply(params, x)
    J = jax.jacobian(lambda t: model.apply(from_theta(t), x).reshape(-1))(theta.reshape(-1))
    H = jax.hessian(lambda z: loss.apply(z.reshape(y_pred.shape), y))(y_pred.reshape(-1))
    return J.T @ H @ J


@pytest.mark.parametrize("copies", [1, 4])
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_kfac_is_the_exact_ggn_block_for_one_example(kind, copies, x64):
    """One example at one position, alone or as a batch of 4 copies of it: A (x) G is the GGN
    block of [W; b] of C = mean L exactly. With copies this pins G's scale: G is the mean
    per-example GGN at the layer's output (C's 1/m once), not a sum and not 1/m^2 (a Conv whose
    VALID kernel covers the input has one position: its patch ordering is checked too)."""
    if kind == "dense":
        layer, in_shape = L.Dense(3), (4,)
    else:
        layer, in_shape = L.Conv(3, (2, 3), padding="VALID"), (2, 3, 2)
    model = L.serial(layer, L.Flatten()) if kind == "conv" else layer
    params, x, y = _problem(model, in_shape, 1, 3, CE)
    x, y = jnp.repeat(x, copies, axis=0), jnp.repeat(y, copies, axis=0)
    W_path = (0,) if kind == "conv" else ()
    p0 = params[0] if kind == "conv" else params
    F = p0["W"].shape[-1]

    def to_theta(p):
        q = p[0] if kind == "conv" else p
        return jnp.concatenate([q["W"].reshape(-1, F), q["b"][None]])

    def from_theta(t):
        t = t.reshape(-1, F)
        q = {"W": t[:-1].reshape(p0["W"].shape), "b": t[-1]}
        return (q, ()) if kind == "conv" else q

    exact, factors, mc = _jit(
        lambda p: (
            _theta_ggn(model, CE, p, x, y, to_theta, from_theta),
            kfac_factors(model, CE, p, x, y)[W_path],
            kfac_factors(model, CE, p, x, y, key=KEY, samples=4000)[W_path],
        ),
        params,
    )
    assert rel_error(jnp.kron(factors["A"], factors["G"]), exact) <= RTOL
    # 4,000 draws: the Monte Carlo G's relative error is O(1/sqrt(4000)) = 0.016; 0.1 is ~6x.
    assert rel_error(mc["G"], factors["G"]) < 0.1 and rel_error(mc["A"], factors["A"]) <= RTOL


def test_kfac_g_is_the_mean_per_example_ggn_of_distinct_examples(x64):
    """G's scale in NumPy, with examples that differ: for a lone Dense layer under softmax
    cross-entropy, J_i = I, so G = (1/m) sum_i (diag p_i - p_i p_i^T) and A = (1/m) sum_i
    [x_i; 1][x_i; 1]^T, p_i = softmax(W^T x_i + b)."""
    model = L.Dense(3)
    params, x, y = _problem(model, (4,), 5, 3, CE)
    got = _jit(lambda p: kfac_factors(model, CE, p, x, y)[()], params)
    xn = np.asarray(x)
    z = xn @ np.asarray(params["W"]) + np.asarray(params["b"])
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    G = np.mean([np.diag(q) - np.outer(q, q) for q in p], axis=0)
    a = np.concatenate([xn, np.ones((len(xn), 1))], axis=1)
    assert rel_error(got["G"], G) <= RTOL and rel_error(got["A"], a.T @ a / len(a)) <= RTOL


def test_kfac_factors_of_a_cnn_by_path_and_conv_patches(x64):
    """Every Dense and Conv gets (A, G) of the documented shapes, nothing else; patches @ W + b
    reproduces a strided, dilated, padded Conv (the A factor's rows, Conv.kfac_rows, are the right
    windows)."""
    model, in_shape, batch, k, loss, extra = MODELS["cnn"]()
    params, x, y = _problem(model, in_shape, batch, k, loss, **extra)
    factors = _jit(lambda p: kfac_factors(model, loss, p, x, y), params)
    dense_or_conv = [i for i, layer in enumerate(model.layers) if hasattr(layer, "features")]
    assert sorted(factors) == [(i,) for i in dense_or_conv]
    for (i,), f in factors.items():
        W = params[i]["W"]
        assert f["A"].shape == (W[..., 0].size + 1,) * 2 and f["G"].shape == (W.shape[-1],) * 2
        assert jnp.all(jnp.linalg.eigvalsh(f["G"]) > -1e-12)  # a sum of outer products
    conv = L.Conv(3, (3, 2), strides=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2))
    _, p = conv.init(jax.random.PRNGKey(0), (5, 6, 2))
    xc = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 6, 2)))
    direct, y_conv = _jit(
        lambda p: (
            conv.kfac_rows(xc) @ jnp.concatenate([p["W"].reshape(-1, 3), p["b"][None]]),
            conv.apply(p, xc).reshape(-1, 3),
        ),
        p,
    )
    assert rel_error(direct, y_conv) <= RTOL


# ---------------------------------------------------------------------------------------------
# Planted errors


def _seq_problem():
    """Dense layers on (batch, T, in) with softmax CE at every position: the positions share W."""
    model = L.serial(L.Dense(4), L.Tanh(), L.Dense(3))
    params, x, y = _problem(model, (2, 3), 2, 3, CE, seq=2)
    return model, params, x, y


def test_plant_loss_hessian_diagonal_only_is_caught(x64, monkeypatch):
    model, in_shape, batch, k, loss, extra = _plain_mlp()
    params, x, y = _problem(model, in_shape, batch, k, loss, **extra)
    exact = _jit(lambda p: diag_ggn(model, loss, p, x, y), params)

    def diagonal_only(self, z, y):  # sqrt(p(1-p)/N) on the diagonal: p p^T's off-diagonal lost
        p = jax.nn.softmax(z)
        return jnp.sqrt(p * (1 - p) / z.shape[0])[..., None] * jnp.eye(z.shape[-1])

    monkeypatch.setattr(losses.SoftmaxCrossEntropy, "hessian_sqrt", diagonal_only)
    assert rel_error(_jit(lambda p: diag_ggn(model, loss, p, x, y), params), exact) > CAUGHT


def test_plant_positions_in_one_column_is_caught(x64, monkeypatch):
    """Putting every position's column c in one sweep adds cross-position terms (J_t s)(J_t' s)."""
    model, params, x, y = _seq_problem()
    _, G, unravel = _reference(model, CE, params, x, y)
    assert (
        rel_error(_jit(lambda p: diag_ggn(model, CE, p, x, y), params), unravel(jnp.diag(G)))
        <= RTOL
    )

    def merged(loss, y_pred, y, key, samples, what):
        roots = loss.hessian_sqrt(y_pred, y)
        return roots.shape[-1], lambda c: roots[..., c]

    monkeypatch.setattr(curvature, "columns", merged)
    assert (
        rel_error(_jit(lambda p: diag_ggn(model, CE, p, x, y), params), unravel(jnp.diag(G)))
        > CAUGHT
    )


def test_plant_patches_in_lax_channel_order_is_caught(x64, monkeypatch):
    conv = L.Conv(2, (2, 2), padding="VALID")
    model = L.serial(conv, L.Flatten())
    params, x, y = _problem(model, (2, 2, 3), 1, 2, CE)
    good = _jit(lambda p: kfac_factors(model, CE, p, x, y)[(0,)]["A"], params)
    lax_order = functools.partial(
        jax.lax.conv_general_dilated_patches, filter_shape=(2, 2), window_strides=(1, 1),
        padding="VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # fmt: skip

    def lax_rows(layer, x):
        flat = lax_order(x).reshape(-1, 12)
        return jnp.concatenate([flat, jnp.ones((len(flat), 1), flat.dtype)], axis=1)

    monkeypatch.setattr(L.Conv, "kfac_rows", lax_rows)
    planted = _jit(lambda p: kfac_factors(model, CE, p, x, y)[(0,)]["A"], params)
    assert rel_error(planted, good) > CAUGHT


# ---------------------------------------------------------------------------------------------
# Errors


def test_bad_arguments_raise_clearly(x64):
    model, in_shape, batch, k, loss, extra = _plain_mlp()
    params, x, y = _problem(model, in_shape, batch, k, loss, **extra)
    with pytest.raises(ValueError, match="tree structure"):
        hvp(model, loss, params, x, y, params[0])
    bad = jax.tree.map(lambda a: a, params)
    bad = (*bad[:-1], {"W": bad[-1]["W"][:1], "b": bad[-1]["b"]})
    with pytest.raises(ValueError, match=r"v\[2\]\['W'\] must be a float array of shape"):
        ggn_vp(model, loss, params, x, y, bad)
    with pytest.raises(ValueError, match="samples must be a positive int"):
        diag_ggn_mc(model, loss, params, x, y, jax.random.PRNGKey(0), samples=0)
    with pytest.raises(ValueError, match="needs a key"):
        diag_ggn_mc(model, loss, params, x, y, None)

    class Plain(losses.MSE):
        hessian_sqrt = None

    with pytest.raises(TypeError, match="has no hessian_sqrt"):
        diag_ggn(model, Plain(), params, x, jnp.zeros((batch, k)))
    grouped = L.serial(L.Conv(4, (2, 2), groups=2), L.Flatten())
    p, xg, yg = _problem(grouped, (3, 3, 2), 2, 36, CE)
    with pytest.raises(NotImplementedError, match=r"layer \[0\] Conv.*groups=2"):
        jax.eval_shape(lambda p: kfac_factors(grouped, CE, p, xg, yg), p)


def test_columns_cover_every_position_and_class():
    """The exact columns number P k, and each is one position's column, zero elsewhere."""
    z = jnp.zeros((2, 3, 4))
    n, column = _columns.columns(CE, z, jnp.zeros((2, 3), int), None, None, "test")
    assert n == 12
    cols = np.asarray(_jit(jax.vmap(column), jnp.arange(n)))
    where = [np.flatnonzero(np.any(c != 0, axis=(0, 2))) for c in cols]
    assert [list(a) for a in where] == [[j // 4] for j in range(n)]
