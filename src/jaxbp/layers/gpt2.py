"""GPT-2 (Radford et al. 2019) at its published sizes, with its own initialisation."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxbp._state import init_state
from jaxbp._types import Params, PRNGKey, Shape
from jaxbp.layers.activations import Gelu
from jaxbp.layers.attention import SelfAttention
from jaxbp.layers.combinators import CombinatorBase, Residual, check_layers, serial
from jaxbp.layers.dense import Dense
from jaxbp.layers.embedding import Embedding
from jaxbp.layers.models import _positive
from jaxbp.layers.norm import LayerNorm
from jaxbp.layers.position import PositionEmbedding
from jaxbp.layers.tied import Tied
from jaxbp.walk import sweep_backward, sweep_forward

__all__ = ["gpt2", "GPT2", "SIZES", "VOCAB_SIZE", "INIT_STD"]

VOCAB_SIZE = 50257  # GPT-2's byte-pair vocabulary
INIT_STD = 0.02  # every matrix starts N(0, 0.02^2); the residual projections / sqrt(2 layers)
# size: (layers, features, heads), from the GPT-2 paper's table 2 and OpenAI's released models
SIZES: dict[str, tuple[int, int, int]] = {
    "124M": (12, 768, 12),
    "350M": (24, 1024, 16),
    "774M": (36, 1280, 20),
    "1558M": (48, 1600, 25),
}


@dataclasses.dataclass(frozen=True)
class GPT2(CombinatorBase):
    """GPT-2: a `gpt`-shaped body (Tied embedding and head, pre-norm blocks, final LayerNorm),
    whose init is GPT-2's. The body sits at GPT2's own path (GPT2 adds no step), so layer paths
    are those of `gpt`: [0] tokens, [1] positions, [2 + 2l] attention block l, [3 + 2l] its MLP,
    [-2] the final LayerNorm, [-1] the head (params {}: W is the token table transposed).

    init: every matrix (the token and position tables, W_qkv, W_out, the MLP's two W) drawn
    N(0, 0.02^2), except the two projections that write into the residual stream (attention's
    W_out and the MLP's second W), N(0, (0.02 / sqrt(2 num_layers))^2); biases 0, LayerNorm
    scales 1 and biases 0. Forward and backward: the body's walk, unchanged.
    """

    body: Any
    num_layers: int
    size: str = "custom"
    params_disjoint = True  # the body reads GPT2's params as they are
    examples_independent = True  # tokens mix within their own sequence only

    def __post_init__(self):
        check_layers("GPT2", (self.body,))

    def __repr__(self):
        return f"gpt2({self.size!r})" if self.size in SIZES else f"GPT2({self.body!r})"

    def sublayers(self):
        return (((), self.body),)

    def with_sublayers(self, layers):
        return dataclasses.replace(self, body=layers[0])

    def init(self, key: PRNGKey, input_shape: Shape) -> tuple[Shape, Params]:
        box = {}

        def params_only(k):
            box["shape"], params = self.body.init(k, input_shape)
            return params

        structure = jax.eval_shape(params_only, key)  # shapes alone: nothing drawn twice
        flat, treedef = jax.tree_util.tree_flatten_with_path(structure)
        keys = jax.random.split(key, max(len(flat), 1))
        out_std = INIT_STD / math.sqrt(2 * self.num_layers)
        leaves = []
        for (path, leaf), k in zip(flat, keys):
            steps = tuple(p.idx for p in path if isinstance(p, jax.tree_util.SequenceKey))
            name = path[-1].key if isinstance(path[-1], jax.tree_util.DictKey) else None
            if len(leaf.shape) >= 2:
                std = out_std if _writes_residual(steps, name) else INIT_STD
                leaves.append(std * jax.random.normal(k, leaf.shape, leaf.dtype))
            elif name == "scale":
                leaves.append(jnp.ones(leaf.shape, leaf.dtype))
            else:
                leaves.append(jnp.zeros(leaf.shape, leaf.dtype))
        return box["shape"], jax.tree_util.tree_unflatten(treedef, leaves)

    def init_state(self, params):
        return init_state(self.body, params)

    def walk_forward(self, params, state, x, key, path, sweep):
        return sweep_forward(self.body, params, state, x, key, path, sweep)

    def walk_backward(self, params, residuals, dy, path, sweep):
        return sweep_backward(self.body, params, residuals, dy, path, sweep)


def _writes_residual(steps: tuple[int, ...], name: Any) -> bool:
    """Attention's W_out at (2 + 2l, 1) and the MLP's second Dense at (3 + 2l, 3)."""
    if len(steps) != 2 or steps[0] < 2:
        return False
    block, inner = steps
    return (block % 2 == 0 and inner == 1 and name == "W_out") or (
        block % 2 == 1 and inner == 3 and name == "W"
    )


def gpt2(size: str = "124M", *, context: int = 1024, recompute: bool = False) -> GPT2:
    """GPT-2 at one of its published sizes ("124M", "350M", "774M", "1558M"): int ids (batch,
    T <= context) -> logits (batch, T, 50257). Token and learned position embeddings; per layer
    x + SelfAttention(LayerNorm(x)) [causal] and x + Dense(C)(Gelu(Dense(4C)(LayerNorm(x))))
    (tanh GELU); a final LayerNorm; the head tied to the token table, without a bias. 124M has
    124,439,808 parameters at context 1024. recompute: attention keeps lse, not its (T, T)
    weights, and rebuilds them in backward."""
    if size not in SIZES:
        raise ValueError(f"gpt2: size must be one of {', '.join(SIZES)}, got {size!r}")
    num_layers, features, heads = SIZES[size]
    return build_gpt2(
        VOCAB_SIZE, context, num_layers, features, heads, recompute=recompute, size=size
    )


def build_gpt2(
    vocab_size: int, context: int, num_layers: int, features: int, num_heads: int, *,
    recompute: bool = False, size: str = "custom",
) -> GPT2:  # fmt: skip
    """GPT-2's architecture and init at any size (the tests' small ones); gpt2 names the four."""
    _positive("gpt2", vocab_size=vocab_size, context=context, num_layers=num_layers,
              features=features, num_heads=num_heads)  # fmt: skip
    if features % num_heads:
        raise ValueError(f"gpt2: features = {features} do not split into {num_heads} heads")
    if not isinstance(recompute, bool):
        raise TypeError(f"gpt2: recompute must be a bool, got {recompute!r}")
    C = features
    attention = Residual(
        serial(LayerNorm(), SelfAttention(num_heads, causal=True, recompute=recompute))
    )
    mlp_block = Residual(serial(LayerNorm(), Dense(4 * C), Gelu(), Dense(C)))
    body = serial(
        Embedding(vocab_size, C), PositionEmbedding(context, C),
        *[attention, mlp_block] * num_layers, LayerNorm(), Dense(vocab_size, use_bias=False),
    )  # fmt: skip
    tied = Tied(body, (0,), (len(body.layers) - 1,))
    return GPT2(tied, num_layers, size)
