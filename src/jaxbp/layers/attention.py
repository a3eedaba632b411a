"""SelfAttention: multi-head scaled dot-product attention, its backward written out (llm.c's)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp._matmul import weight_grad
from jaxbp._types import Array, Params, PRNGKey, Shape
from jaxbp.layers._base import check_input, describe
from jaxbp.protocols import Layer


@dataclasses.dataclass(frozen=True)
class SelfAttention(Layer):
    r"""Multi-head self-attention: y = merge_h(softmax(q k^T / sqrt(d) + mask) v) W_out + b_out.

    x: (batch, T, C) -> y: (batch, T, C); H = num_heads heads of size d = C / H.
    Forward, per head (q, k, v: (batch, H, T, d), split from x W_qkv + b_qkv as [q | k | v],
    head h on channels h d ... (h + 1) d of each):

        s = q k^T / sqrt(d)          (batch, H, T, T); causal: s[i, j] = -inf for j > i
        p = softmax(s) = exp(s - lse), lse = log sum_j exp(s)   (row max subtracted first)
        o = p v                      (batch, H, T, d), merged to (batch, T, C)
        y = o W_out + b_out

    Backward (dy -> dparams, dx):

        dW_out = o^T dy, db_out = sum dy, do = dy W_out^T
        dp = do v^T, dv = p^T do
        ds = p (dp - sum_j dp p)     softmax's VJP; masked entries get none (p = 0 there)
        dq = ds k / sqrt(d), dk = ds^T q / sqrt(d)
        dW_qkv = x^T [dq | dk | dv], db_qkv = sum [dq | dk | dv], dx = [dq | dk | dv] W_qkv^T

    Residuals, a dict: x (batch, T, C), q, k, v (batch, H, T, d), o (batch, T, C), and

        recompute=False: p (batch, H, T, T), the attention weights;
        recompute=True: lse (batch, H, T), from which backward rebuilds p = exp(s - lse) out of
        q and k (flash attention's trade: O(T) memory per row for one more q k^T).

    Params: {"W_qkv": (C, 3C), "b_qkv": (3C,), "W_out": (C, C), "b_out": (C,)}; the weights start
    LeCun-normal (variance 1/C), the biases at zero.

    **Forward**, for each head ($d = C/H$; $M$ the mask, $M_{ij} = -\infty$ for $j > i$ when
    `causal`, else 0):

    $$
    [\,Q \;\; K \;\; V\,] = x W_{qkv} + b_{qkv}, \qquad
    S = \frac{Q K^\top}{\sqrt d} + M
    $$

    $$
    P = \mathrm{softmax}_{\text{row}}(S), \qquad
    O = P V, \qquad
    y = O\, W_{out} + b_{out}
    $$

    ($O$ merged over the heads to `(batch, T, C)` before $W_{out}$; the softmax subtracts each row's
    maximum, which is finite as $S_{ii}$ is never masked.)

    **Backward.** With $\mathrm{d}y = \partial C/\partial y$, step by step in reverse:

    $$
    \mathrm{d}W_{out} = O^\top \mathrm{d}y, \qquad \mathrm{d}b_{out} = \sum \mathrm{d}y, \qquad
    \mathrm{d}O = \mathrm{d}y\, W_{out}^\top
    $$

    $$
    \mathrm{d}P = \mathrm{d}O\, V^\top, \qquad \mathrm{d}V = P^\top \mathrm{d}O, \qquad
    \mathrm{d}S_{ij} = P_{ij} \Bigl(\mathrm{d}P_{ij} - \sum_k \mathrm{d}P_{ik} P_{ik}\Bigr)
    $$

    $$
    \mathrm{d}Q = \frac{\mathrm{d}S\, K}{\sqrt d}, \qquad
    \mathrm{d}K = \frac{\mathrm{d}S^\top Q}{\sqrt d}
    $$

    $$
    \mathrm{d}W_{qkv} = x^\top [\,\mathrm{d}Q \;\; \mathrm{d}K \;\; \mathrm{d}V\,], \qquad
    \mathrm{d}b_{qkv} = \sum [\,\mathrm{d}Q \;\; \mathrm{d}K \;\; \mathrm{d}V\,]
    $$

    $$
    \mathrm{d}x = [\,\mathrm{d}Q \;\; \mathrm{d}K \;\; \mathrm{d}V\,]\, W_{qkv}^\top
    $$

    The mask needs no rule of its own: $P_{ij} = 0$ where it is $-\infty$, so $\mathrm{d}S_{ij} = 0$
    there. With `recompute=True`, backward rebuilds $P = \exp(S - \mathrm{lse})$ from $Q$, $K$ and
    the saved row log-sum-exp $\mathrm{lse}$ instead of reading a saved $P$.
    """

    num_heads: int
    causal: bool = True
    recompute: bool = False
    examples_independent = True  # tokens attend within their own sequence
    recompute_per_example = True  # no key, no state: one sequence's forward is its own rows

    def __post_init__(self):
        h = self.num_heads
        if not isinstance(h, int) or isinstance(h, bool):
            raise TypeError(f"SelfAttention: num_heads must be an int, got {h!r}")
        if h <= 0:
            raise ValueError(f"SelfAttention: num_heads must be positive, got {h}")
        for name in ("causal", "recompute"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(
                    f"SelfAttention: {name} must be a bool, got {getattr(self, name)!r}"
                )

    def init(self, key: PRNGKey, input_shape: Shape) -> tuple[Shape, Params]:
        """input_shape: (T, C), C divisible by num_heads."""
        if len(input_shape) != 2:
            raise ValueError(f"{self!r}: input shape must be (T, C), got {tuple(input_shape)}")
        C = int(input_shape[-1])
        self._check_channels(C, f"input shape {tuple(input_shape)}")
        k1, k2 = jax.random.split(key)
        params = {
            "W_qkv": jax.random.normal(k1, (C, 3 * C)) / math.sqrt(C),
            "b_qkv": jnp.zeros((3 * C,)),
            "W_out": jax.random.normal(k2, (C, C)) / math.sqrt(C),
            "b_out": jnp.zeros((C,)),
        }
        return tuple(input_shape), params

    def forward(self, params, x, *, key=None):
        if getattr(x, "ndim", 3) != 3:
            raise ValueError(f"{self!r}: expects inputs of shape (batch, T, C), got {x.shape}")
        check_input(self, x, min_ndim=2)
        self._check_channels(x.shape[-1], f"input shape {tuple(x.shape)}")
        _check_params(self, params, x.shape[-1])
        q, k, v = self._split(x @ params["W_qkv"] + params["b_qkv"], 3)
        s = self._scores(q, k)
        m = lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))  # finite: s[i, i] is never masked
        e = jnp.exp(s - m)
        total = jnp.sum(e, axis=-1, keepdims=True)
        p = e / total
        o = self._merge(jnp.einsum("bhij,bhjd->bhid", p, v))
        saved = {"lse": (m + jnp.log(total))[..., 0]} if self.recompute else {"p": p}
        return o @ params["W_out"] + params["b_out"], {
            "x": x,
            "q": q,
            "k": k,
            "v": v,
            "o": o,
            **saved,
        }

    def backward(self, params, residuals, dy):
        x, q, k, v, o = (residuals[n] for n in ("x", "q", "k", "v", "o"))
        if self.recompute:  # p = exp(s - lse): the forward's softmax, without its (T, T) residual
            # The barrier keeps XLA's common-subexpression pass from merging this q k^T with the
            # forward's in one jitted step, which would keep the (T, T) scores alive after all.
            q, k, lse = lax.optimization_barrier((q, k, residuals["lse"]))
            p = jnp.exp(self._scores(q, k) - lse[..., None])
        else:
            p = residuals["p"]
        C = x.shape[-1]
        # y = o W_out + b_out
        dW_out, db_out = weight_grad(o.reshape(-1, C), dy.reshape(-1, C)), dy.reshape(-1, C).sum(0)
        (do,) = self._split(dy @ params["W_out"].T)
        # o = p v
        dp, dv = jnp.einsum("bhid,bhjd->bhij", do, v), jnp.einsum("bhij,bhid->bhjd", p, do)
        # p = softmax(s)
        ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))
        # s = q k^T / sqrt(d)
        scale = 1 / math.sqrt(q.shape[-1])
        dq = jnp.einsum("bhij,bhjd->bhid", ds, k) * scale
        dk = jnp.einsum("bhij,bhid->bhjd", ds, q) * scale
        # qkv = x W_qkv + b_qkv
        dqkv = self._merge(dq, dk, dv)
        dqkv_2d = dqkv.reshape(-1, 3 * C)
        dparams = {
            "W_qkv": weight_grad(x.reshape(-1, C), dqkv_2d),
            "b_qkv": dqkv_2d.sum(0),
            "W_out": dW_out,
            "b_out": db_out,
        }
        return dparams, dqkv @ params["W_qkv"].T

    # -----------------------------------------------------------------------------------------

    def _scores(self, q: Array, k: Array) -> Array:
        """s = q k^T / sqrt(d): (batch, H, T, T), -inf above the diagonal when causal."""
        s = jnp.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1])
        if not self.causal:
            return s
        T = s.shape[-1]
        allowed = jnp.arange(T)[:, None] >= jnp.arange(T)[None, :]  # j <= i
        return jnp.where(allowed, s, -jnp.inf)

    def _split(self, a: Array, n: int = 1) -> tuple[Array, ...]:
        """(batch, T, nC) = [a_1 | ... | a_n] -> n arrays (batch, H, T, d), one transpose."""
        b, T, _ = a.shape
        return tuple(a.reshape(b, T, n, self.num_heads, -1).transpose(2, 0, 3, 1, 4))

    def _merge(self, *arrays: Array) -> Array:
        """n arrays (batch, H, T, d) -> (batch, T, nC) = [a_1 | ... | a_n], one transpose."""
        b, H, T, d = arrays[0].shape
        return jnp.stack(arrays, 1).transpose(0, 3, 1, 2, 4).reshape(b, T, -1)

    def _check_channels(self, C: int, what: str) -> None:
        if C % self.num_heads:
            raise ValueError(
                f"{self!r}: C = {C} channels do not split into {self.num_heads} heads "
                f"(C must be divisible by num_heads); got {what}"
            )


def _check_params(layer: Any, params: Any, C: int) -> None:
    """Raise unless params is {"W_qkv": (C, 3C), "b_qkv": (3C,), "W_out": (C, C), "b_out": (C,)}."""
    want = {"W_qkv": (C, 3 * C), "b_qkv": (3 * C,), "W_out": (C, C), "b_out": (C,)}
    ok = isinstance(params, Mapping) and set(params) == set(want)
    if not ok or any(tuple(getattr(params[n], "shape", ())) != s for n, s in want.items()):
        raise ValueError(
            f"{layer!r}: params must be {{'W_qkv': (C, 3C), 'b_qkv': (3C,), 'W_out': (C, C), "
            f"'b_out': (C,)}} with C = {C}, the input's last axis; got {describe(params)}"
        )
