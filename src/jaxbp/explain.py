"""The seed's worked example: every factor of dC/dv1 and dC/dw11 in a 2-2-1 sigmoid network.

The network: inputs x1, x2; hidden nodes 1, 2 with z_j = w1j x1 + w2j x2 + b_j, o_j = sigmoid(z_j);
output node B with z_B = v1 o1 + v2 o2 + b_B, y' = sigmoid(z_B); cost C = 1/m sum_i 1/2 (y_i - y'_i)^2.
In the params of `SEED_MODEL`, w_ij = `params[0]["W"][i-1, j-1]` and v_j = `params[2]["W"][j-1, 0]`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._types import Array, Params
from jaxbp.backprop import autodiff, backprop
from jaxbp.layers import mlp
from jaxbp.losses import mse

__all__ = [
    "SEED_MODEL", "WEIGHT_NAMES", "xor_data", "seed_params", "chain_factors", "walkthrough", "plot",
]  # fmt: skip

SEED_MODEL = mlp([2, 1], "sigmoid", "sigmoid")
"""The seed's network: `serial(Dense(2), Sigmoid(), Dense(1), Sigmoid())`."""
WEIGHT_NAMES = ("w11", "w12", "w21", "w22", "b1", "b2", "v1", "v2", "bB")
"""The nine weights' names, in the order `seed_params(weights=...)` takes them."""


def xor_data(dtype=jnp.float32) -> tuple[Array, Array]:
    """The four XOR points: x: (4, 2), y: (4, 1)."""
    x = jnp.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype)
    return x, jnp.array([[0], [1], [1], [0]], dtype)


def seed_params(
    *, seed: int = 0, weights: Sequence[float] | None = None, dtype=jnp.float32
) -> Params:
    """SEED_MODEL's params: initialised from `seed`, or the nine `weights` in WEIGHT_NAMES order."""
    _, params = SEED_MODEL.init(jax.random.PRNGKey(seed), (2,))
    if weights is not None:
        if len(weights) != len(WEIGHT_NAMES):
            raise ValueError(
                f"--weights needs {len(WEIGHT_NAMES)} numbers ({' '.join(WEIGHT_NAMES)}), got {len(weights)}"
            )
        w = [float(v) for v in weights]
        params = (
            {"W": jnp.array([[w[0], w[1]], [w[2], w[3]]]), "b": jnp.array(w[4:6])},
            (),
            {"W": jnp.array([[w[6]], [w[7]]]), "b": jnp.array(w[8:9])},
            (),
        )
    return jax.tree.map(lambda a: a.astype(dtype), params)


def chain_factors(params: Params, x: Array, y: Array) -> dict[str, Array]:
    """Per-example factors of dC/dv1 and dC/dw11, and the forward values they are made of; shapes (m,)."""
    W, b, V, bB = params[0]["W"], params[0]["b"], params[2]["W"], params[2]["b"]
    z = x @ W + b
    o = jax.nn.sigmoid(z)
    z_B = (o @ V + bB)[:, 0]
    y_hat = jax.nn.sigmoid(z_B)
    f = {"x1": x[:, 0], "x2": x[:, 1], "z1": z[:, 0], "o1": o[:, 0], "z2": z[:, 1], "o2": o[:, 1]}
    f |= {"z_B": z_B, "y_hat": y_hat, "y": y[:, 0]}
    f["dL_dyhat"] = y_hat - y[:, 0]  # d/dy' of 1/2 (y - y')^2 = -(y - y') = y' - y
    f["fB_prime"] = y_hat * (1 - y_hat)  # sigmoid'(z_B), from the output
    f["dzB_dv1"] = o[:, 0]
    f["dL_dv1"] = f["dL_dyhat"] * f["fB_prime"] * f["dzB_dv1"]
    f["v1"] = jnp.broadcast_to(V[0, 0], z_B.shape)
    f["f1_prime"] = o[:, 0] * (1 - o[:, 0])
    f["dL_dw11"] = f["dL_dyhat"] * f["fB_prime"] * f["v1"] * f["f1_prime"] * f["x1"]
    return f


def _row(cells, width=11):
    return "  ".join(f"{c:>{width}}" if isinstance(c, str) else f"{c:>{width}.6f}" for c in cells)


def _table(f, columns, labels):
    lines = [_row(["example", *labels])]
    lines += [_row([str(i + 1)] + [float(f[c][i]) for c in columns]) for i in range(len(f["y"]))]
    return lines


def walkthrough(params: Params, x: Array, y: Array) -> str:
    """The worked example as text: forward pass, the factors of two gradients, backprop vs jax.grad."""
    f = {k: np.asarray(v) for k, v in chain_factors(params, x, y).items()}
    w = _named_weights(params)
    out = [
        "The seed: a 2-2-1 sigmoid network, cost C = 1/m sum_i 1/2 (y_i - y'_i)^2, on the XOR points.",
        "Weights: " + "  ".join(f"{n}={w[n]:+.4f}" for n in WEIGHT_NAMES),
        "",
        "Forward pass",
    ]
    out += _table(
        f, ["x1", "x2", "o1", "o2", "z_B", "y_hat", "y"], ["x1", "x2", "o1", "o2", "z_B", "y'", "y"]
    )
    out += [
        "",
        "dC/dv1, the weight from hidden node 1 into the output node B: dL/dv1 = (1) x (2) x (3)",
        "  step 1  dL/dy'     = y' - y      derivative of the cost. Note the sign: d/dy' 1/2 (y - y')^2",
        "                                   = -(y - y') = y' - y; the usual write-up drops that minus sign.",
        "  step 2  f_B'(z_B)  = y'(1 - y')  derivative of the activation: one factor of the chain, not an alternative",
        "  step 3  dz_B/dv1   = o1          derivative of the weighted sum z_B = v1 o1 + v2 o2 + b_B",
        "  step 4  dC/dv1     = mean over the batch of the product",
    ]
    out += _table(
        f,
        ["dL_dyhat", "fB_prime", "dzB_dv1", "dL_dv1"],
        ["(1) y'-y", "(2) f_B'", "(3) o1", "product"],
    )
    out += [
        f"  dC/dv1 = mean = {f['dL_dv1'].mean():+.10f}",
        "",
        "dC/dw11, one layer further back (x1 -> hidden node 1): the error reaches node 1 through v1",
        "  dL/dw11 = (y' - y) x f_B'(z_B) x v1 x f_1'(z_1) x x1,   f_1'(z_1) = o1 (1 - o1)",
    ]
    out += _table(
        f,
        ["dL_dyhat", "fB_prime", "v1", "f1_prime", "x1", "dL_dw11"],
        ["y'-y", "f_B'", "v1", "f_1'", "x1", "product"],
    )
    out += [f"  dC/dw11 = mean = {f['dL_dw11'].mean():+.10f}", ""]
    return "\n".join(out + _comparison(params, x, y, f))


def _named_weights(params) -> dict[str, float]:
    flat = [
        *np.asarray(params[0]["W"]).ravel(),
        *np.asarray(params[0]["b"]),
        *np.asarray(params[2]["W"]).ravel(),
        *np.asarray(params[2]["b"]),
    ]
    return dict(zip(WEIGHT_NAMES, map(float, flat)))


def _comparison(params, x, y, f) -> list[str]:
    value_bp, g_bp = jax.jit(lambda p: backprop(SEED_MODEL, mse, p, x, y))(params)
    _, g_ad = jax.jit(lambda p: autodiff(SEED_MODEL, mse, p, x, y))(params)
    bp, ad = _named_weights(g_bp), _named_weights(g_ad)
    by_hand = {"v1": f["dL_dv1"].mean(), "w11": f["dL_dw11"].mean()}
    lines = [
        f"Every weight: jaxbp.backprop (hand-written rules) against jax.grad (the referee), C = {float(value_bp):.10f}",
        f"  {'weight':>6}  {'by hand':>16}  {'backprop':>16}  {'jax.grad':>16}  {'rel. error':>10}",
    ]
    for n in WEIGHT_NAMES:
        hand = f"{by_hand[n]:+16.10f}" if n in by_hand else f"{'':>16}"
        rel = abs(bp[n] - ad[n]) / max(abs(ad[n]), 1e-300)
        lines.append(f"  {n:>6}  {hand}  {bp[n]:+16.10f}  {ad[n]:+16.10f}  {rel:10.1e}")
    return lines


def plot(
    path: str | os.PathLike,
    model: str | None = None,
    *,
    seed: int = 0,
    weights: Sequence[float] | None = None,
    example: int = 4,
) -> str:
    """Draw the worked example at `path` (.png or .svg): the network on one example (1-based),
    forward values above each unit and edge, backward ones below, the factors of dL/dv1 and
    dL/dw11 numbered; then each gradient's batch mean beside jax.grad's. In float64.

    model: None for the seed, or a small MLP "IN,UNITS,...:ACTIVATION[:OUTPUT_ACTIVATION]"
    (e.g. "2,3,1:tanh:sigmoid"), its weights from `seed`, drawn on XOR when it has 2 inputs and
    1 output, else on 4 random examples from `seed`. Returns what was drawn, in words.
    """
    from jaxbp._explain_plot import check_path, draw

    check_path(path)
    nums = picture_numbers(model, seed=seed, weights=weights, example=example)
    draw(nums, path)
    name = "the seed's 2-2-1 sigmoid network" if model is None else f"the MLP {nums.spec}"
    return f"{name} on example {example} of {nums.data}"


def picture_numbers(model: str | None = None, *, seed=0, weights=None, example=4):
    """What `plot` draws, in float64: a `jaxbp._explain_graph.Numbers`."""
    from jaxbp import _explain_graph as graph
    from jaxbp._compat import enable_x64

    spec = graph.SEED_SPEC if model is None else graph.parse_model(model)
    if model is not None and weights is not None:
        raise ValueError("--weights sets the seed network's nine weights; --model takes --seed")
    with enable_x64():
        if model is None:
            params = seed_params(seed=seed, weights=weights, dtype=jnp.float64)
            (x, y), data = xor_data(jnp.float64), "the XOR points"
        else:
            _, params = spec.model().init(jax.random.PRNGKey(seed), (spec.sizes[0],))
            params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
            x, y, data = graph.spec_data(spec, seed)
        return graph.numbers(spec, params, x, y, example - 1, data)
