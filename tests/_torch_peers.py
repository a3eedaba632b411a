"""The bench's PyTorch, BackPACK and Opacus peers read back in jaxbp's params tree, so that a test
compares every leaf, whatever the layer (a Dense's W is transposed in torch, a Conv's kernel
permuted, a Flatten's next Dense has its columns permuted, nn.LSTM adds a second bias).

The map needs no knowledge of those layouts: build the peer from params whose entries are their
own positions (1, 2, ... in float32, exact below 2^24), and each torch entry then names the jaxbp
entry it was copied from (0: one with no source, nn.LSTM's bias_hh). Nothing here imports torch.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence

import jax
import numpy as np
import pytest


def peer(name: str):
    """The peer module `name`; the test skips without it, unless JAXBP_TEST_PEERS=1 (.ci/run
    sets it, having installed them) makes a missing peer a failure."""
    if os.environ.get("JAXBP_TEST_PEERS") == "1":
        return importlib.import_module(name)
    return pytest.importorskip(name, exc_type=ImportError)


def to_float64(tree):
    """Every floating leaf rounded to float32 (what the peers copy their params and inputs as)
    and held in float64, exactly: the same numbers on both sides of a float64 check."""

    def cast(a):
        a = np.asarray(a)
        return a.astype(np.float32).astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a

    return jax.tree.map(cast, tree)


class Positions:
    """Where each torch parameter's entries come from in params, for net = build(params)."""

    def __init__(self, build: Callable, params):
        leaves, self.treedef = jax.tree.flatten(params)
        self.shapes = [np.shape(leaf) for leaf in leaves]
        self.size = sum(int(np.prod(s)) for s in self.shapes)
        assert self.size < 2**24, "positions must be exact in float32"
        ids = np.arange(1, self.size + 1, dtype=np.float32)
        bounds = np.cumsum([0, *(int(np.prod(s)) for s in self.shapes)])
        tree = self.treedef.unflatten(
            [ids[a:b].reshape(s) for a, b, s in zip(bounds, bounds[1:], self.shapes)]
        )
        self.of_parameter = [
            np.rint(p.detach().double().numpy()).astype(np.int64).ravel() - 1
            for p in build(tree).parameters()
        ]

    def tree(self, arrays: Sequence, lead: tuple[int, ...] = ()):
        """Torch arrays, one per parameter in net.parameters() order, each (*lead, *p.shape), as
        a tree like params with leaves (*lead, *leaf.shape); every jaxbp entry filled once."""
        flat = np.full((*lead, self.size), np.nan)
        filled = np.zeros(self.size, np.int64)
        assert len(arrays) == len(self.of_parameter), (len(arrays), len(self.of_parameter))
        for where, a in zip(self.of_parameter, arrays):
            a = np.asarray(a, np.float64).reshape(*lead, -1)
            assert a.shape[-1] == where.size
            keep = where >= 0
            flat[..., where[keep]] = a[..., keep]
            np.add.at(filled, where[keep], 1)
        assert (filled == 1).all(), "every jaxbp entry has exactly one torch entry"
        bounds = np.cumsum([0, *(int(np.prod(s)) for s in self.shapes)])
        return self.treedef.unflatten(
            [flat[..., a:b].reshape(*lead, *s) for a, b, s in zip(bounds, bounds[1:], self.shapes)]
        )


def assert_leaves_close(theirs, ours, *, rtol: float, what: str) -> None:
    """Every leaf, in norm: ||theirs - ours|| <= rtol ||ours||. A leaf whose exact value is 0
    (a conv's bias before a BatchNorm, whose mean the BatchNorm removes) is rounding on both
    sides, so there the bound is rtol times the whole tree's norm instead."""
    a, b = jax.tree_util.tree_flatten_with_path(ours)[0], jax.tree.leaves(theirs)
    assert jax.tree.structure(theirs) == jax.tree.structure(ours) and len(a) == len(b)
    whole = np.sqrt(sum(np.sum(np.square(np.asarray(v, np.float64))) for _, v in a))
    for (path, u), v in zip(a, b):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        assert u.shape == v.shape, (what, jax.tree_util.keystr(path), u.shape, v.shape)
        size = np.linalg.norm(u)
        scale = whole if size <= rtol * whole else size  # exactly 0: rounding of the whole
        err = np.linalg.norm(u - v) / scale
        assert err <= rtol, f"{what}{jax.tree_util.keystr(path)}: relative error {err:.2e}"
