"""A jaxbp sequence model (GPT, character LSTM) as a PyTorch module with the same layers, sizes
and params: the peer the `gpt` and `lstm` benchmarks time. Imports torch, so only peers of the
sequence benchmark import it, and only on demand.

Attention runs through F.scaled_dot_product_attention (is_causal), what a PyTorch user writes;
GELU is the tanh form, jaxbp's Gelu default. An LSTM is either a loop of cell steps over time in
eager PyTorch (what torch.compile sees and fuses) or nn.LSTM, PyTorch's own fused kernel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from jaxbp.layers import LSTM, Dense, Embedding, Gelu, LayerNorm, SelfAttention, Tied
from jaxbp.layers.combinators import Residual, Serial
from jaxbp.layers.gpt2 import GPT2
from jaxbp.layers.position import PositionEmbedding


def _param(a) -> nn.Parameter:
    return nn.Parameter(torch.from_numpy(np.array(a, np.float32)))


def _linear(W, b) -> nn.Linear:
    """nn.Linear computing x @ W + b, or x @ W for b None (PyTorch keeps W transposed)."""
    linear = nn.Linear(*np.shape(W), bias=b is not None)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(np.array(W, np.float32)).T)
        if b is not None:
            linear.bias.copy_(torch.from_numpy(np.array(b, np.float32)))
    return linear


class _Residual(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


class _Positions(nn.Module):
    def __init__(self, table):
        super().__init__()
        self.table = _param(table)

    def forward(self, x):
        return x + self.table[: x.shape[1]]


class _Attention(nn.Module):
    """jaxbp's SelfAttention: qkv = x W_qkv + b_qkv as [q | k | v], heads of d = C / H."""

    def __init__(self, layer: SelfAttention, params):
        super().__init__()
        self.qkv = _linear(params["W_qkv"], params["b_qkv"])
        self.out = _linear(params["W_out"], params["b_out"])
        self.heads, self.causal = layer.num_heads, layer.causal

    def forward(self, x):
        b, t, c = x.shape
        heads = (a.view(b, t, self.heads, -1).transpose(1, 2) for a in self.qkv(x).split(c, -1))
        o = F.scaled_dot_product_attention(*heads, is_causal=self.causal)
        return self.out(o.transpose(1, 2).reshape(b, t, c))


class _LoopLSTM(nn.Module):
    """jaxbp's LSTM written as a Python loop over time: z = x_t W + h U + b = [i f g o]."""

    def __init__(self, params):
        super().__init__()
        self.W, self.U, self.b = (_param(params[k]) for k in ("W", "U", "b"))

    def forward(self, x):
        xw = x @ self.W + self.b  # every step's input projection at once
        h = c = x.new_zeros(x.shape[0], self.U.shape[0])
        hs = []
        for t in range(x.shape[1]):
            i, f, g, o = (xw[:, t] + h @ self.U).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            hs.append(h)
        return torch.stack(hs, 1)


class _FusedLSTM(nn.Module):
    """jaxbp's LSTM as nn.LSTM: the same gate order [i f g o]; weight_ih = W^T, weight_hh = U^T,
    bias_ih = b and bias_hh = 0 (PyTorch adds two biases)."""

    def __init__(self, params):
        super().__init__()
        n_in, F4 = np.shape(params["W"])
        self.lstm = nn.LSTM(n_in, F4 // 4, batch_first=True)
        with torch.no_grad():
            for name, value in (("weight_ih_l0", params["W"]), ("weight_hh_l0", params["U"])):
                getattr(self.lstm, name).copy_(torch.from_numpy(np.array(value, np.float32)).T)
            self.lstm.bias_ih_l0.copy_(torch.from_numpy(np.array(params["b"], np.float32)))
            self.lstm.bias_hh_l0.zero_()

    def forward(self, x):
        return self.lstm(x)[0]


def torch_module(layer: Any, params, *, fused_lstm: bool = False) -> nn.Module:
    """The PyTorch module computing `layer` with `params` (float32; batch-first sequences)."""
    if isinstance(layer, GPT2):
        return torch_module(layer.body, params, fused_lstm=fused_lstm)
    if isinstance(layer, Tied):  # one nn.Parameter: the head's weight (V, C) is the table
        net = torch_module(layer.body, layer._tie(params, ()), fused_lstm=fused_lstm)
        source, target = (_submodule(net, p) for p in (layer.source, layer.target))
        target.weight = source.weight
        return net
    if isinstance(layer, Serial):
        return nn.Sequential(
            *(torch_module(c, p, fused_lstm=fused_lstm) for c, p in zip(layer.layers, params))
        )
    if isinstance(layer, Residual):
        return _Residual(torch_module(layer.body, params, fused_lstm=fused_lstm))
    if isinstance(layer, Embedding):
        return nn.Embedding.from_pretrained(
            torch.from_numpy(np.array(params["table"], np.float32)), freeze=False
        )
    if isinstance(layer, PositionEmbedding):
        return _Positions(params["table"])
    if isinstance(layer, LayerNorm):
        norm = nn.LayerNorm(np.shape(params["scale"])[0], eps=layer.eps)
        with torch.no_grad():
            norm.weight.copy_(torch.from_numpy(np.array(params["scale"], np.float32)))
            norm.bias.copy_(torch.from_numpy(np.array(params["bias"], np.float32)))
        return norm
    if isinstance(layer, SelfAttention):
        return _Attention(layer, params)
    if isinstance(layer, Dense):
        return _linear(params["W"], params.get("b"))
    if isinstance(layer, Gelu):
        return nn.GELU(approximate="tanh" if layer.approximate else "none")
    if isinstance(layer, LSTM):
        return _FusedLSTM(params) if fused_lstm else _LoopLSTM(params)
    raise ValueError(f"no PyTorch peer for layer {layer!r}")


def _submodule(net: nn.Module, path: tuple[int, ...]) -> nn.Module:
    """The module at a jaxbp path: nn.Sequential's children by index, a _Residual's body."""
    for step in path:
        while isinstance(net, _Residual):
            net = net.body
        net = net[step]
    return net


def sgd_step(model, params, *, lr: float, compiled: bool = False, fused_lstm: bool = False):
    """A PyTorch SGD step on next-token cross-entropy (the mean over batch and time):
    step(ids, targets) -> loss; step.convert(x, y) turns the NumPy ids into its inputs."""
    return train_step(model, params, lambda p: torch.optim.SGD(p, lr=lr), compiled, fused_lstm)


def adamw_step(model, params, *, compiled: bool = False, **adamw) -> Any:
    """The same step with torch.optim.AdamW(lr, betas, eps, weight_decay): PyTorch's default
    implementation on the platform (foreach on CPU), as a PyTorch user gets it."""
    return train_step(model, params, lambda p: torch.optim.AdamW(p, **adamw), compiled, False)


def train_step(model, params, optimizer, compiled: bool, fused_lstm: bool) -> Any:
    """step(ids, targets) -> loss with optimizer(parameters) on the torch twin of model."""
    net = torch_module(model, params, fused_lstm=fused_lstm)
    opt = optimizer(net.parameters())
    run = torch.compile(net) if compiled else net

    def step(ids, targets):
        opt.zero_grad(set_to_none=True)
        logits = run(ids)
        value = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        value.backward()
        opt.step()
        return value.detach()

    step.convert = lambda x, y: tuple(torch.from_numpy(np.asarray(a, np.int64)) for a in (x, y))
    step.net = net
    return step
