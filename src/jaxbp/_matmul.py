"""dW = x^T dy, laid out so that XLA:CPU runs it on its fast matmul kernel.

XLA:CPU sends a plain row-major product to YNNPACK, but x^T dy as written (contracting dim 0 of
both operands) to Eigen, which is slower: 1.2x for 512x1024 @ 512x1024, and 4-8x for narrow
outputs (512x1024 @ 512x10: 4.8 ms against 0.6 ms). On CPU we therefore hand XLA a layout it
runs fast, behind an optimization barrier so it cannot fold the transpose back into the dot:
(dy^T x)^T for narrow outputs, a copied x^T for large products, or dy^T when dy is the narrower
operand. The copy does not pay for every shape (128x256 @ 128x256 and 512x784 @ 512x1024 run
4-11% slower with it); it does on all four MLP benchmark models. Other platforms get x.T @ dy as
written: GPU and TPU matmuls take transposed operands for free. Same mathematics on every path;
summation order aside, the same numbers.
Re-measure after a jax upgrade: `python benchmarks/weight_grad_layouts.py`.
"""

from __future__ import annotations

from jax import lax

from jaxbp._types import Array

NARROW = 16  # outputs this narrow: (dy^T x)^T is fastest
NARROW_MIN_ROWS_X_IN = 2**13  # below this, every layout runs in the same ~20-30 us
LARGE = 2**21  # batch*in*out from which copying x^T pays (128^3: 148 us against 192 us)


def cpu_layout(batch: int, n_in: int, n_out: int) -> str:
    """Which layout _cpu uses for x: (batch, n_in), dy: (batch, n_out): plain, narrow or large."""
    if n_out <= NARROW and batch * n_in >= NARROW_MIN_ROWS_X_IN:
        return "narrow"
    if batch * n_in * n_out < LARGE:
        return "plain"
    # Large: copy the narrower operand's transpose. A wide x^T copy fused with its producer (GPT's
    # GELU output, 2048x512 against dy 2048x128) runs as a strided loop, 1.3x plain's time;
    # (dy^T x)^T takes 0.6x.
    return "narrow" if n_out < n_in else "large"


def _cpu(x: Array, dy: Array) -> Array:
    layout = cpu_layout(*x.shape, dy.shape[1])
    if layout == "narrow":
        return lax.optimization_barrier(dy.T @ x).T
    if layout == "large":
        return lax.optimization_barrier(x.T) @ dy
    return x.T @ dy


def weight_grad(x: Array, dy: Array) -> Array:
    """x^T dy for x: (batch, in), dy: (batch, out) -> (in, out), in the layout fastest here."""
    return lax.platform_dependent(x, dy, cpu=_cpu, default=lambda x, dy: x.T @ dy)
