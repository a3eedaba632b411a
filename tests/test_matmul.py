"""weight_grad: every layout is x^T dy, and the CPU-only layouts stay on CPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _docs import documentation
from conftest import assert_trees_close

from jaxbp import _matmul
from jaxbp._matmul import weight_grad
from jaxbp.layers import Dense

# (batch, in, out) reaching each branch of _matmul._cpu: as written, narrow output, large product.
SHAPES = {"plain": (8, 5, 3), "narrow": (256, 64, 10), "large": (128, 128, 128)}


def _operands(key, batch, n_in, n_out, dtype=jnp.float32):
    kx, kdy = jax.random.split(key)
    x = jax.random.normal(kx, (batch, n_in), dtype)
    return x, jax.random.normal(kdy, (batch, n_out), dtype)


@pytest.mark.parametrize("branch", SHAPES)
def test_shapes_reach_the_branch_they_name(branch):
    assert _matmul.cpu_layout(*SHAPES[branch]) == branch


def _readme_layout_table() -> dict[tuple[int, int, int], str]:
    """The README's dW layout table: each row's (batch, in, out) and the layout in bold (its
    columns x.T @ dy, copy(x.T) @ dy, (dy.T @ x).T are the plain, large and narrow branches)."""
    text = documentation()
    header = "| dW product (batch, in, out) | x.T @ dy | copy(x.T) @ dy | (dy.T @ x).T |"
    assert header in text
    rows = text.split(header, 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    table = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        shape = tuple(int(n) for n in cells[0].split("(")[0].split(","))
        (bold,) = [i for i, c in enumerate(cells[1:]) if c.startswith("**")]
        table[shape] = ("plain", "large", "narrow")[bold]
    return table


try:  # read at collection for the parametrization; a README it cannot read fails the next test
    README_TABLE = _readme_layout_table()
except (AssertionError, ValueError, IndexError):
    README_TABLE = {}


def test_the_readmes_layout_table_has_its_five_layers():
    assert len(_readme_layout_table()) == 5 and (512, 1024, 10) in README_TABLE


@pytest.mark.parametrize("shape", README_TABLE)
def test_the_readmes_bold_layouts_are_the_ones_used(shape):
    assert _matmul.cpu_layout(*shape) == README_TABLE[shape]


@pytest.mark.parametrize("branch", SHAPES)
def test_every_layout_is_x_transpose_dy_float64(branch, key, x64):
    x, dy = _operands(key, *SHAPES[branch], jnp.float64)
    # float64: only the summation order differs between layouts
    assert_trees_close(jax.jit(weight_grad)(x, dy), x.T @ dy, rtol=1e-13, what=branch)


@pytest.mark.parametrize("branch", SHAPES)
def test_layouts_under_jit_vmap_and_jvp_float32(branch, key):
    x, dy = _operands(key, *SHAPES[branch])
    exact = np.asarray(x, np.float64).T @ np.asarray(dy, np.float64)
    # float32 sums of up to 256 products of unit normals, in any order: each entry off by
    # ~u sqrt(256) = 1e-6 of its terms' size, about its own size: ~1e-6 relative in norm. vmap and
    # jvp are other programs, which may sum in another order (AVX-512 kernels do): same bound.
    assert_trees_close(jax.jit(weight_grad)(x, dy), jnp.asarray(exact, jnp.float32), rtol=1e-5)
    both = jax.jit(jax.vmap(weight_grad, (0, None)))(jnp.stack([x, 2 * x]), dy)
    assert_trees_close(both[1], 2 * both[0], rtol=1e-5, what="vmap")
    _, tangent = jax.jvp(weight_grad, (x, dy), (x, jnp.zeros_like(dy)))
    assert_trees_close(tangent, weight_grad(x, dy), rtol=1e-5, what="jvp")


@pytest.mark.parametrize("branch", ["narrow", "large"])
def test_dense_rule_matches_jax_vjp_on_every_branch_float64(branch, key, x64):
    batch, n_in, n_out = SHAPES[branch]
    layer = Dense(n_out)
    _, params = layer.init(key, (n_in,))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x, dy = _operands(jax.random.PRNGKey(1), batch, n_in, n_out, jnp.float64)
    _, residuals = layer.forward(params, x)
    mine = jax.jit(layer.backward)(params, residuals, dy)
    _, vjp = jax.vjp(layer.apply, params, x)
    assert_trees_close(mine, vjp(dy), rtol=1e-12, what=f"Dense {branch}")


@pytest.mark.parametrize("branch", SHAPES)
def test_only_cpu_gets_the_copied_layouts(branch):
    batch, n_in, n_out = SHAPES[branch]
    x, dy = (jax.ShapeDtypeStruct(s, jnp.float32) for s in ((batch, n_in), (batch, n_out)))
    for platform in ("cuda", "rocm", "tpu", "cpu"):
        mlir = jax.export.export(jax.jit(weight_grad), platforms=[platform])(x, dy).mlir_module()
        copied = platform == "cpu" and branch != "plain"
        assert ("optimization_barrier" in mlir) == copied, (platform, branch)
