"""A jaxbp layer tree as a PyTorch module with the same layers, sizes and params: the peer the
convolutional benchmarks time. Imports torch, so only peers.py imports it, and only on demand.

Tensors are NCHW, PyTorch's native layout (the step converts channels-last inputs once);
Flatten puts channels last first, so the network computes exactly jaxbp's function.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from jaxbp.layers import BatchNorm, Conv, Dense, Flatten, GlobalAvgPool, MaxPool, Relu
from jaxbp.layers.combinators import Parallel, Residual, Serial


def _tensor(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, np.float32))


class _Sum(nn.Module):
    """Residual (identity + body) and Parallel(merge="sum"): the branches' outputs added."""

    def __init__(self, branches):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        return sum(branch(x) for branch in self.branches)


class _BatchNorm(nn.Module):
    """jaxbp's BatchNorm over every axis but the channels (dim 1 here), in training mode."""

    def __init__(self, layer: BatchNorm, params):
        super().__init__()
        self.weight, self.bias = (nn.Parameter(_tensor(params[k])) for k in ("scale", "bias"))
        self.register_buffer("running_mean", torch.zeros(self.weight.shape))
        self.register_buffer("running_var", torch.ones(self.weight.shape))
        # PyTorch's momentum weighs the batch; jaxbp's the running value.
        self.momentum, self.eps = 1 - layer.momentum, layer.eps

    def forward(self, x):
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, True, self.momentum,
            self.eps,
        )  # fmt: skip


class _ChannelsLastFlatten(nn.Module):
    def forward(self, x):
        return x.movedim(1, -1).flatten(1) if x.ndim > 2 else x


class _GlobalAvgPool(nn.Module):
    def forward(self, x):
        return x.mean(dim=tuple(range(2, x.ndim)))


def _conv(layer: Conv, params, spatial: tuple[int, ...]) -> nn.Module:
    """Conv{1,2,3}d with W (*k, in/g, out) as (out, in/g, *k); asymmetric padding (SAME with a
    stride, say) as an explicit zero pad before an unpadded convolution."""
    *k, c, f = np.shape(params["W"])
    pairs = layer._padding(spatial)
    symmetric = all(lo == hi for lo, hi in pairs)
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[len(k) - 1](
        c * layer.groups, f, tuple(k), layer.strides,
        tuple(lo for lo, _ in pairs) if symmetric else 0, layer.dilation, layer.groups,
    )  # fmt: skip
    with torch.no_grad():
        conv.weight.copy_(_tensor(params["W"]).permute(len(k) + 1, len(k), *range(len(k))))
        conv.bias.copy_(_tensor(params["b"]))
    if symmetric:
        return conv
    torch_pads = [p for pair in reversed(pairs) for p in pair]  # last axis first, as F.pad
    return nn.Sequential(_Pad(torch_pads), conv)


class _Pad(nn.Module):
    def __init__(self, pads):
        super().__init__()
        self.pads = pads

    def forward(self, x):
        return F.pad(x, self.pads)


def torch_module(layer: Any, params, input_shape: tuple[int, ...]) -> tuple[nn.Module, tuple]:
    """(the module, its output shape) for `layer` on channels-last inputs of `input_shape`."""
    if isinstance(layer, Serial):
        modules, shape = [], input_shape
        for child, p in zip(layer.layers, params):
            module, shape = torch_module(child, p, shape)
            modules.append(module)
        return nn.Sequential(*modules), shape
    out_shape = tuple(layer.init(jax.random.PRNGKey(0), input_shape)[0])  # small: shapes only
    if isinstance(layer, Residual):
        return _Sum([nn.Identity(), torch_module(layer.body, params, input_shape)[0]]), out_shape
    if isinstance(layer, Parallel) and layer.merge == "sum":
        branches = [torch_module(b, p, input_shape)[0] for b, p in zip(layer.branches, params)]
        return _Sum(branches), out_shape
    if isinstance(layer, Conv):
        return _conv(layer, params, tuple(input_shape[:-1])), out_shape
    if isinstance(layer, BatchNorm) and layer.train:
        return _BatchNorm(layer, params), out_shape
    if isinstance(layer, Dense):
        dense = nn.Linear(*np.shape(params["W"]))
        with torch.no_grad():
            dense.weight.copy_(_tensor(params["W"]).T)
            dense.bias.copy_(_tensor(params["b"]))
        return dense, out_shape
    if isinstance(layer, MaxPool) and layer.padding == "VALID":
        pool = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[len(layer.window) - 1]
        return pool(layer.window, layer.strides), out_shape
    simple = {Relu: nn.ReLU, Flatten: _ChannelsLastFlatten, GlobalAvgPool: _GlobalAvgPool}
    if type(layer) in simple:
        return simple[type(layer)](), out_shape
    raise ValueError(f"no PyTorch peer for layer {layer!r}")


def to_nchw(x) -> torch.Tensor:
    """Channels-last (batch, *spatial, C) as a contiguous (batch, C, *spatial) tensor."""
    x = np.asarray(x, np.float32)
    return torch.from_numpy(np.array(np.moveaxis(x, -1, 1) if x.ndim > 2 else x, order="C"))
