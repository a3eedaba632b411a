"""Dense: the affine map, and the one layer whose backward is a matrix product per parameter."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxbp._matmul import weight_grad
from jaxbp._types import Params, PRNGKey, Shape
from jaxbp.layers._base import check_input, describe
from jaxbp.protocols import Layer


@dataclasses.dataclass(frozen=True)
class Dense(Layer):
    r"""Affine map y = x @ W + b; dW = x^T dy, db = sum_batch dy, dx = dy W^T.

    x: (batch, ..., in) -> y: (batch, ..., features); every leading axis is a batch axis for the
    sums in dW and db. Residual: x. W starts LeCun-normal (variance 1/in), b at zero.
    use_bias=False: y = x @ W, params {"W"} alone (GPT-2's tied head).
    (weight_grad computes x^T dy in the layout that is fastest on the platform.)

    **Forward.**

    $$
    y = x W + b
    $$

    **Backward.** With $\mathrm{d}y = \partial C/\partial y$ arriving from above, and the sums
    running over every leading axis $n$ (the batch's, and any position axes before the last):

    $$
    \mathrm{d}W = \sum_n x_n^\top \mathrm{d}y_n = x^\top \mathrm{d}y, \qquad
    \mathrm{d}b = \sum_n \mathrm{d}y_n, \qquad
    \mathrm{d}x = \mathrm{d}y\, W^\top
    $$

    (with `use_bias=False`, no $b$ and no $\mathrm{d}b$).

    **Shapes.** $x$: `(batch, ..., in)`, $W$: `(in, features)`, $b$: `(features,)`,
    $y$ and $\mathrm{d}y$: `(batch, ..., features)`; $\mathrm{d}x$ has $x$'s shape.

    **Residuals.** $x$ itself, which only $\mathrm{d}W$ needs ($\mathrm{d}x$ reads $W$, and
    $\mathrm{d}b$ reads $\mathrm{d}y$ alone).
    """

    features: int
    use_bias: bool = dataclasses.field(default=True, repr=False)  # shown by __repr__ when False
    examples_independent = True  # row i of y reads row i of x

    def __post_init__(self):
        if not isinstance(self.features, int) or isinstance(self.features, bool):
            raise TypeError(f"Dense: features must be an int, got {self.features!r}")
        if self.features <= 0:
            raise ValueError(f"Dense: features must be positive, got {self.features}")
        if not isinstance(self.use_bias, bool):
            raise TypeError(f"Dense: use_bias must be a bool, got {self.use_bias!r}")

    def __repr__(self):
        return f"Dense(features={self.features}{'' if self.use_bias else ', use_bias=False'})"

    def init(self, key: PRNGKey, input_shape: Shape) -> tuple[Shape, Params]:
        if len(input_shape) < 1:
            raise ValueError(f"{self!r}: input shape must be (..., in), got {tuple(input_shape)}")
        fan_in = input_shape[-1]
        W = jax.random.normal(key, (fan_in, self.features)) / math.sqrt(fan_in)
        bias = {"b": jnp.zeros((self.features,))} if self.use_bias else {}
        return (*input_shape[:-1], self.features), {"W": W, **bias}

    def forward(self, params, x, *, key=None):
        _check_dense(self, params, x)
        y = x @ params["W"]
        return (y + params["b"] if self.use_bias else y), x

    def backward(self, params, x, dy):
        dx = dy @ params["W"].T
        x_2d, dy_2d = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
        # (batch, ..., in): the sums run over every leading axis
        return self._with_bias({"W": weight_grad(x_2d, dy_2d)}, lambda: dy_2d.sum(0)), dx

    def _with_bias(self, grads: dict, db) -> dict:
        """grads with "b": db() added when the layer has a bias."""
        return {**grads, "b": db()} if self.use_bias else grads

    # Optional per-example rules (jaxbp.quantities): backward's sums, the batch axis kept.
    def per_example_grads(self, params, x, dy):
        """dW_i = sum_t x_it^T dy_it: (batch, in, out); db_i = sum_t dy_it: (batch, out)."""
        x, dy = _per_example_3d(x), _per_example_3d(dy)
        return self._with_bias({"W": jnp.einsum("bti,bto->bio", x, dy)}, lambda: dy.sum(1))

    def per_example_sq_norms(self, params, x, dy):
        """||dW_i||^2 + ||db_i||^2, (batch,), without dW_i where cheaper: one position, ||x_i||^2
        ||dy_i||^2 (Goodfellow 2015); T positions, the ghost norm sum_{t,s} (x_t.x_s)(dy_t.dy_s)
        when T^2 (in + out) < T in out, else dW_i itself."""
        x, dy = _per_example_3d(x), _per_example_3d(dy)
        (T, n_in), n_out = x.shape[1:], dy.shape[-1]
        db2 = jnp.sum(jnp.square(dy.sum(1)), axis=1) if self.use_bias else 0.0
        if T == 1:
            return jnp.sum(jnp.square(x), (1, 2)) * jnp.sum(jnp.square(dy), (1, 2)) + db2
        if T * (n_in + n_out) < n_in * n_out:  # the two (T, T) Gram matrices cost less
            return ghost_sq_norms(x, dy) + db2
        return jnp.sum(jnp.square(jnp.einsum("bti,bto->bio", x, dy)), axis=(1, 2)) + db2

    def sum_grad_squared(self, params, x, dy):
        """sum_i dW_i^2 = (x^2)^T (dy^2) for one position (BackPACK's trick), else from dW_i."""
        if x.ndim == 2:
            squares = weight_grad(jnp.square(x), jnp.square(dy))  # backward's fast layout
            return self._with_bias({"W": squares}, lambda: jnp.sum(jnp.square(dy), 0))
        per_example = self.per_example_grads(params, x, dy)
        return jax.tree.map(lambda g: jnp.sum(jnp.square(g), 0), per_example)

    def kfac_rows(self, x):
        """K-FAC's rows a = [x, 1], one per example and position: (rows, in + 1); without a
        bias, a = x: (rows, in)."""
        flat = x.reshape(-1, x.shape[-1])
        if not self.use_bias:
            return flat
        return jnp.concatenate([flat, jnp.ones((flat.shape[0], 1), flat.dtype)], axis=1)

    # Optional rule for feedback alignment (jaxbp.feedback): B, fixed, in W's place in dx.
    def feedback_shape(self, params):
        """(in, out): the shape of the W that a feedback matrix B replaces."""
        if not isinstance(params, dict) or getattr(params.get("W"), "ndim", None) != 2:
            raise ValueError(
                f"{self!r}: feedback alignment replaces W, but params hold no (in, out) W: "
                f"got {describe(params)} (a Tied head reads its W from the table)"
            )
        return tuple(params["W"].shape)

    def feedback_backward(self, params, x, dy, B):
        """backward with dx = dy B^T in place of dy W^T; dW and db from dy as usual."""
        if B.shape != params["W"].shape:
            raise ValueError(f"feedback matrix has shape {B.shape}, W has {params['W'].shape}")
        dparams, _ = self.backward(params, x, dy)
        return dparams, dy @ B.T.astype(dy.dtype)


def ghost_sq_norms(x, dy):
    """||sum_t x_t^T dy_t||^2 = sum_{t,s} (x_t.x_s)(dy_t.dy_s) for each example, from the
    (T, T) Gram matrices, never the (in, out) product. x: (batch, T, in), dy: (batch, T, out)."""
    gram_x, gram_dy = jnp.einsum("bti,bsi->bts", x, x), jnp.einsum("bto,bso->bts", dy, dy)
    return jnp.sum(gram_x * gram_dy, axis=(1, 2))


def _per_example_3d(a):
    """(batch, ..., n) -> (batch, T, n): every middle axis is a position of one example."""
    return a.reshape(a.shape[0], -1, a.shape[-1])


def _check_dense(layer: Dense, params, x) -> None:
    W, b = (params.get(k) if isinstance(params, dict) else None for k in ("W", "b"))
    shapes = {k: getattr(v, "shape", None) for k, v in (("W", W), ("b", b))}
    names = {"W", "b"} if layer.use_bias else {"W"}
    if (
        not isinstance(params, dict)
        or set(params) != names
        or shapes["W"] is None
        or len(shapes["W"]) != 2
        or (layer.use_bias and shapes["b"] != (shapes["W"][1],))
    ):
        got = (
            {k: getattr(v, "shape", type(v).__name__) for k, v in params.items()}
            if isinstance(params, dict)
            else type(params).__name__
        )
        want = "{'W': (in, out), 'b': (out,)}" if layer.use_bias else "{'W': (in, out)} alone"
        raise ValueError(f"{layer!r}: params must be {want}, got {got}")
    check_input(layer, x)
    if x.shape[-1] != shapes["W"][0]:
        raise ValueError(
            f"{layer!r}: expects inputs of shape (batch, ..., {shapes['W'][0]}), "
            f"got {tuple(x.shape)}"
        )
