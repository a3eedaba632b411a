"""Recurrent layers: RNN, LSTM and GRU over (batch, T, in), from a zero state, each with its
backpropagation through time (BPTT) written gate by gate as a reverse scan.

Every cell shares one layout: params {"W": (in, kF), "U": (F, kF), "b": (kF,)}, k gates side by
side. The input projections x_t W of all steps are one matmul before the forward scan, and
dW = sum_t x_t^T dz_t, dU = sum_t h_{t-1}^T dz'_t, dx = dz W^T are matmuls over all steps after
the backward scan: only the h-to-h products must run step by step. Layouts, for XLA:CPU: the
projection reads x time-major, so its (T, batch, kF) output needs no transpose; the parameter
gradients read the backward scan's time-major dz as it comes (transposing the narrower x and
h_{t-1} instead); U^T and W^T are copied once, so the products with them are plain row-major.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp._matmul import weight_grad
from jaxbp._types import Array, Params, PRNGKey, Shape
from jaxbp.layers._base import check_input, describe
from jaxbp.protocols import Layer


def _time_major(*arrays: Array) -> tuple[Array, ...]:
    """(batch, T, ...) <-> (T, batch, ...): lax.scan runs over the leading axis."""
    return tuple(jnp.swapaxes(a, 0, 1) for a in arrays)


def _shift(h: Array) -> Array:
    """(batch, T, F) states h_1..h_T -> h_0..h_{T-1}, with h_0 = 0 (the zero initial state)."""
    return jnp.concatenate([jnp.zeros_like(h[:, :1]), h[:, :-1]], axis=1)


def _flat(a: Array) -> Array:
    return a.reshape(-1, a.shape[-1])


def _transposed(a: Array) -> Array:
    """A copy of a^T: a product with it is row-major, where a^T folded into the dot is not."""
    return lax.optimization_barrier(a.T)


@dataclasses.dataclass(frozen=True)
class _Recurrent(Layer):
    """Shared by the cells: features, init, checks, and the batched parts of the backward."""

    features: int
    examples_independent = True  # each sequence runs its own recurrence
    recompute_per_example = True  # no key, no state: one sequence's forward is its own rows
    gates = 1  # k: W is (in, kF)

    def __post_init__(self):
        name = type(self).__name__
        if not isinstance(self.features, int) or isinstance(self.features, bool):
            raise TypeError(f"{name}: features must be an int, got {self.features!r}")
        if self.features <= 0:
            raise ValueError(f"{name}: features must be positive, got {self.features}")

    def init(self, key: PRNGKey, input_shape: Shape) -> tuple[Shape, Params]:
        if len(input_shape) != 2:
            raise ValueError(f"{self!r}: input shape must be (T, in), got {tuple(input_shape)}")
        (T, n_in), F, k = input_shape, self.features, self.gates
        kW, kU = jax.random.split(key)
        W = jax.random.normal(kW, (n_in, k * F)) / math.sqrt(n_in)  # LeCun normal
        U = jax.random.normal(kU, (F, k * F)) / math.sqrt(F)
        return (T, F), {"W": W, "U": U, "b": self._bias()}

    def _bias(self) -> Array:
        return jnp.zeros((self.gates * self.features,))

    def _check(self, params, x) -> None:
        F, k = self.features, self.gates
        shapes = (
            {n: getattr(v, "shape", None) for n, v in params.items()}
            if isinstance(params, Mapping)
            else {}
        )
        W = shapes.get("W")
        if (
            set(shapes) != {"W", "U", "b"}
            or W is None
            or len(W) != 2
            or W[1] != k * F
            or shapes["U"] != (F, k * F)
            or shapes["b"] != (k * F,)
        ):
            raise ValueError(
                f"{self!r}: params must be {{'W': (in, {k * F}), 'U': ({F}, {k * F}), "
                f"'b': ({k * F},)}}, got {describe(params)}"
            )
        check_input(self, x, min_ndim=0)  # an array, floating point
        if x.ndim != 3 or x.shape[-1] != W[0]:
            raise ValueError(
                f"{self!r}: expects inputs of shape (batch, T, {W[0]}), got {tuple(x.shape)}"
            )

    def _project(self, params, x) -> Array:
        """x_t W for every step at once: (T, batch, kF), time-major. Each step adds b, where it
        fuses with the step's other adds (here XLA broadcast b to the projection's size first)."""
        return jnp.swapaxes(x, 0, 1) @ params["W"]

    def _param_grads(self, params, x, h_prev, dz, dzu) -> tuple[Params, Array]:
        """dW = sum_t x_t^T dz_t, dU = sum_t h_{t-1}^T dzu_t, db = sum dz, dx = dz W^T.

        x, h_prev: (batch, T, ...); dz, dzu: (T, batch, kF), time-major, as the scan made them.
        """
        x_tm, h_tm = _time_major(x, h_prev)
        dparams = {
            "W": weight_grad(_flat(x_tm), _flat(dz)),
            "U": weight_grad(_flat(h_tm), _flat(dzu)),
            "b": _flat(dz).sum(0),
        }
        return dparams, jnp.swapaxes(dz @ _transposed(params["W"]), 0, 1)


_RNN_ACTIVATIONS = {  # activation and its derivative in terms of its output h
    "tanh": (jnp.tanh, lambda h: 1 - h * h),
    "relu": (jax.nn.relu, lambda h: (h > 0).astype(h.dtype)),
}


@dataclasses.dataclass(frozen=True)
class RNN(_Recurrent):
    r"""Elman RNN: h_t = act(z_t), z_t = x_t W + h_{t-1} U + b; dz_t = (dy_t + dz_{t+1} U^T) act'.

    act' from the output: tanh' = 1 - h^2, relu' = [h > 0]. x: (batch, T, in) -> (batch, T, F).
    Residuals: x (batch, T, in), h (batch, T, F) (h_{t-1} is h shifted by one step).

    **Forward**, from $h_0 = 0$, $\phi$ = `activation` (tanh or relu):

    $$
    z_t = x_t W + h_{t-1} U + b, \qquad h_t = \phi(z_t), \qquad y_t = h_t
    $$

    **Backward** (BPTT). A reverse scan over $t = T, \dots, 1$; $h_t$ feeds the output and
    $z_{t+1}$, so its cotangent has two terms ($\mathrm{d}z_{T+1} = 0$):

    $$
    \mathrm{d}z_t = \bigl(\mathrm{d}y_t + \mathrm{d}z_{t+1} U^\top\bigr) \odot \phi'(z_t),
    \qquad \tanh' = 1 - h_t^2, \quad \mathrm{relu}' = [\,h_t > 0\,]
    $$

    After the reverse scan, the parameter gradients and $\mathrm{d}x$ are matmuls over all steps
    at once (summed over the batch too):

    $$
    \mathrm{d}W = \sum_t x_t^\top \mathrm{d}z_t, \qquad
    \mathrm{d}U = \sum_t h_{t-1}^\top \mathrm{d}z_t, \qquad
    \mathrm{d}b = \sum_t \mathrm{d}z_t, \qquad
    \mathrm{d}x_t = \mathrm{d}z_t\, W^\top
    $$

    **Shapes.** $x$: `(batch, T, in)`, $y = h$: `(batch, T, F)`; $W$: `(in, F)`, $U$: `(F, F)`,
    $b$: `(F,)`.
    """

    activation: str = "tanh"
    gates = 1

    def __post_init__(self):
        super().__post_init__()
        if self.activation not in _RNN_ACTIVATIONS:
            raise ValueError(
                f"RNN: activation must be one of {sorted(_RNN_ACTIVATIONS)}, "
                f"got {self.activation!r}"
            )

    def forward(self, params, x, *, key=None):
        self._check(params, x)
        act, U, b = _RNN_ACTIVATIONS[self.activation][0], params["U"], params["b"]

        def step(h, xw_t):
            h = act(xw_t + b + h @ U)
            return h, h

        h0 = jnp.zeros((x.shape[0], self.features), x.dtype)
        (h,) = _time_major(lax.scan(step, h0, self._project(params, x))[1])
        return h, (x, h)

    def backward(self, params, residuals, dy):
        x, h = residuals
        d_act, UT = _RNN_ACTIVATIONS[self.activation][1], _transposed(params["U"])

        def step(dh_next, inputs):
            dy_t, h_t = inputs
            dz = (dy_t + dh_next) * d_act(h_t)  # dh_next = dz_{t+1} U^T: h_t feeds z_{t+1}
            return dz @ UT, dz

        _, dz = lax.scan(step, jnp.zeros_like(h[:, 0]), _time_major(dy, h), reverse=True)
        return self._param_grads(params, x, _shift(h), dz, dz)


@dataclasses.dataclass(frozen=True)
class LSTM(_Recurrent):
    r"""LSTM: z_t = x_t W + h_{t-1} U + b = [i f g o] (pre-activations); i, f, o = sigmoid,
    g = tanh; c_t = f c_{t-1} + i g; h_t = o tanh(c_t).

    BPTT, carry (dh_next, dc_next) from 0: dh = dy_t + dh_next; do = dh tanh(c_t);
    dc = dh o (1 - tanh^2 c_t) + dc_next; di = dc g, df = dc c_{t-1}, dg = dc i;
    dz = [di i(1-i), df f(1-f), dg (1-g^2), do o(1-o)]; dh_prev = dz U^T, dc_prev = dc f.
    x: (batch, T, in) -> h: (batch, T, F). Residuals: x (batch, T, in), gates [i f g o] after
    their activations (batch, T, 4F), c (batch, T, F), h_prev = h_{t-1} (batch, T, F).
    The forget gate's bias starts at 1 (Jozefowicz et al., 2015): f ~ 0.73, so the cell keeps
    its memory and gradients flow back through time from the first step of training.

    **Forward**, from $h_0 = c_0 = 0$, the four gates side by side in $W$, $U$, $b$ (order
    $i, f, g, o$):

    $$
    [\,a^i \;\; a^f \;\; a^g \;\; a^o\,] = x_t W + h_{t-1} U + b
    $$

    $$
    i = \sigma(a^i), \quad f = \sigma(a^f), \quad g = \tanh(a^g), \quad o = \sigma(a^o)
    $$

    $$
    c_t = f \odot c_{t-1} + i \odot g, \qquad h_t = o \odot \tanh c_t, \qquad y_t = h_t
    $$

    **Backward** (BPTT), gate by gate: a reverse scan over $t = T, \dots, 1$ carrying the cotangents
    that step $t+1$ sends back, $\mathrm{d}z_{t+1} U^\top$ to $h_t$ and
    $\mathrm{d}c_{t+1} \odot f_{t+1}$ to $c_t$ (both 0 at $t = T$):

    $$
    \mathrm{d}h_t = \mathrm{d}y_t + \mathrm{d}z_{t+1} U^\top, \qquad
    \mathrm{d}c_t = \mathrm{d}h_t \odot o \odot (1 - \tanh^2 c_t) + \mathrm{d}c_{t+1} \odot f_{t+1}
    $$

    $$
    \mathrm{d}o = \mathrm{d}h_t \odot \tanh c_t, \quad
    \mathrm{d}i = \mathrm{d}c_t \odot g, \quad
    \mathrm{d}f = \mathrm{d}c_t \odot c_{t-1}, \quad
    \mathrm{d}g = \mathrm{d}c_t \odot i
    $$

    $$
    \mathrm{d}z_t = \bigl[\,\mathrm{d}i \odot i(1-i) \;\;\ \mathrm{d}f \odot f(1-f) \;\;\
      \mathrm{d}g \odot (1-g^2) \;\;\ \mathrm{d}o \odot o(1-o)\,\bigr]
    $$

    After the reverse scan, the parameter gradients and $\mathrm{d}x$ are matmuls over all steps
    at once (summed over the batch too):

    $$
    \mathrm{d}W = \sum_t x_t^\top \mathrm{d}z_t, \qquad
    \mathrm{d}U = \sum_t h_{t-1}^\top \mathrm{d}z_t, \qquad
    \mathrm{d}b = \sum_t \mathrm{d}z_t, \qquad
    \mathrm{d}x_t = \mathrm{d}z_t\, W^\top
    $$

    **Shapes.** $x$: `(batch, T, in)`, $y = h$: `(batch, T, F)`; $W$: `(in, 4F)`, $U$: `(F, 4F)`,
    $b$: `(4F,)`.
    """

    gates = 4

    def _bias(self) -> Array:
        F = self.features
        return jnp.zeros((4 * F,)).at[F : 2 * F].set(1.0)

    def forward(self, params, x, *, key=None):
        self._check(params, x)
        U, b = params["U"], params["b"]

        def step(carry, xw_t):
            h_prev, c_prev = carry
            i, f, g, o = jnp.split(xw_t + b + h_prev @ U, 4, axis=-1)
            i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
            c = f * c_prev + i * g
            h = o * jnp.tanh(c)
            return (h, c), (jnp.concatenate([i, f, g, o], -1), c, h_prev, h)

        zero = jnp.zeros((x.shape[0], self.features), x.dtype)
        _, outputs = lax.scan(step, (zero, zero), self._project(params, x))
        gates, c, h_prev, h = _time_major(*outputs)
        return h, (x, gates, c, h_prev)

    def backward(self, params, residuals, dy):
        x, gates, c, h_prev = residuals
        UT = _transposed(params["U"])

        def step(carry, inputs):
            dh_next, dc_next = carry
            dy_t, gates_t, c_t, c_prev = inputs
            i, f, g, o = jnp.split(gates_t, 4, axis=-1)
            tc = jnp.tanh(c_t)
            dh = dy_t + dh_next  # h_t = o tanh(c_t) goes to the output and to step t+1
            do = dh * tc
            dc = dh * o * (1 - tc * tc) + dc_next  # c_t = f c_{t-1} + i g feeds c_{t+1} too
            di, df, dg = dc * g, dc * c_prev, dc * i
            dz = [di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g), do * o * (1 - o)]
            dz = jnp.concatenate(dz, -1)  # [i f g o], W's column order
            return (dz @ UT, dc * f), dz

        zero = jnp.zeros_like(c[:, 0])
        inputs = _time_major(dy, gates, c, _shift(c))
        _, dz = lax.scan(step, (zero, zero), inputs, reverse=True)
        return self._param_grads(params, x, h_prev, dz, dz)


@dataclasses.dataclass(frozen=True)
class GRU(_Recurrent):
    r"""GRU, PyTorch's convention (reset applied after U_n): [a_r a_z a_n] = x_t W + b,
    [u_r u_z u_n] = h_{t-1} U; r = sigmoid(a_r + u_r), z = sigmoid(a_z + u_z),
    n = tanh(a_n + r u_n); h_t = (1 - z) n + z h_{t-1}. (One bias, b_n outside the r product.)

    BPTT, carry dh_next from 0: dh = dy_t + dh_next; dn' = dh (1-z)(1-n^2);
    dz' = dh (h_{t-1} - n) z(1-z); dr' = dn' u_n r(1-r); dx-side gates [dr' dz' dn'], h-side
    gates [dr' dz' dn' r]; dh_prev = dh z + [dr' dz' dn' r] U^T.
    x: (batch, T, in) -> h: (batch, T, F). Residuals: x (batch, T, in), gates [r z n]
    (batch, T, 3F), u_n = h_{t-1} U_n (batch, T, F), h_prev = h_{t-1} (batch, T, F).

    **Forward**, from $h_0 = 0$, gates in the order $r, z, n$ (the bias on the input side only):

    $$
    [\,a^r \;\; a^z \;\; a^n\,] = x_t W + b, \qquad [\,u^r \;\; u^z \;\; u^n\,] = h_{t-1} U
    $$

    $$
    r = \sigma(a^r + u^r), \quad z = \sigma(a^z + u^z), \quad n = \tanh(a^n + r \odot u^n)
    $$

    $$
    h_t = (1 - z) \odot n + z \odot h_{t-1}
    $$

    **Backward** (BPTT), a reverse scan carrying the cotangent step $t+1$ sends to $h_t$ (0 at
    $t = T$):

    $$
    \mathrm{d}h_t = \mathrm{d}y_t
      + \bigl(\mathrm{d}h_{t+1} \odot z_{t+1} + \mathrm{d}u_{t+1} U^\top\bigr)
    $$

    $$
    \mathrm{d}n' = \mathrm{d}h_t \odot (1 - z)(1 - n^2), \quad
    \mathrm{d}z' = \mathrm{d}h_t \odot (h_{t-1} - n)\, z (1 - z)
    $$

    $$
    \mathrm{d}r' = \mathrm{d}n' \odot u^n\, r (1 - r)
    $$

    $$
    \mathrm{d}a_t = [\,\mathrm{d}r' \;\; \mathrm{d}z' \;\; \mathrm{d}n'\,], \qquad
    \mathrm{d}u_t = [\,\mathrm{d}r' \;\; \mathrm{d}z' \;\; \mathrm{d}n' \odot r\,]
    $$

    (the primes: cotangents of the pre-activations; $r$ multiplies $u^n$, so the $n$ gate's
    $h$-side cotangent carries the factor $r$).

    After the reverse scan, the parameter gradients and $\mathrm{d}x$ are matmuls over all steps
    at once (summed over the batch too):

    $$
    \mathrm{d}W = \sum_t x_t^\top \mathrm{d}a_t, \qquad
    \mathrm{d}U = \sum_t h_{t-1}^\top \mathrm{d}u_t, \qquad
    \mathrm{d}b = \sum_t \mathrm{d}a_t, \qquad
    \mathrm{d}x_t = \mathrm{d}a_t\, W^\top
    $$

    **Shapes.** $x$: `(batch, T, in)`, $y = h$: `(batch, T, F)`; $W$: `(in, 3F)`, $U$: `(F, 3F)`,
    $b$: `(3F,)`.
    """

    gates = 3

    def forward(self, params, x, *, key=None):
        self._check(params, x)
        U, b = params["U"], params["b"]

        def step(h_prev, xw_t):
            a_r, a_z, a_n = jnp.split(xw_t + b, 3, axis=-1)
            u_r, u_z, u_n = jnp.split(h_prev @ U, 3, axis=-1)
            r, z = jax.nn.sigmoid(a_r + u_r), jax.nn.sigmoid(a_z + u_z)
            n = jnp.tanh(a_n + r * u_n)
            h = (1 - z) * n + z * h_prev
            return h, (jnp.concatenate([r, z, n], -1), u_n, h_prev, h)

        h0 = jnp.zeros((x.shape[0], self.features), x.dtype)
        _, outputs = lax.scan(step, h0, self._project(params, x))
        gates, u_n, h_prev, h = _time_major(*outputs)
        return h, (x, gates, u_n, h_prev)

    def backward(self, params, residuals, dy):
        x, gates, u_n, h_prev = residuals
        UT = _transposed(params["U"])

        def step(dh_next, inputs):
            dy_t, gates_t, u_n_t, h_prev_t = inputs
            r, z, n = jnp.split(gates_t, 3, axis=-1)
            dh = dy_t + dh_next  # h_t goes to the output and to step t+1
            dn = dh * (1 - z) * (1 - n * n)  # through n = tanh(a_n + r u_n)
            dz = dh * (h_prev_t - n) * z * (1 - z)
            dr = dn * u_n_t * r * (1 - r)
            dzu = jnp.concatenate([dr, dz, dn * r], -1)  # r multiplies u_n = h U_n
            return dh * z + dzu @ UT, (jnp.concatenate([dr, dz, dn], -1), dzu)

        dz, dzu = lax.scan(
            step, jnp.zeros_like(h_prev[:, 0]), _time_major(dy, gates, u_n, h_prev), reverse=True
        )[1]
        return self._param_grads(params, x, h_prev, dz, dzu)
