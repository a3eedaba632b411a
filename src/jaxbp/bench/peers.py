"""Peers for the benchmark: the same MLP step written by hand in NumPy, and in PyTorch eager.

Both are optional references, never dependencies: torch is used only when it is installed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_ACT = {
    "relu": (lambda z: np.maximum(z, 0), lambda y: (y > 0).astype(y.dtype)),
    "tanh": (np.tanh, lambda y: 1 - y * y),
    "sigmoid": (lambda z: 1 / (1 + np.exp(-z)), lambda y: y * (1 - y)),
}


def numpy_step(sizes, activation, output_activation, loss, lr=1e-2) -> Callable:
    """A float32 NumPy SGD step for mlp(sizes[1:]): step(x, y) -> loss, updating in place."""
    rng = np.random.default_rng(0)
    Ws = [
        (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        for a, b in zip(sizes, sizes[1:])
    ]
    bs = [np.zeros(b, np.float32) for b in sizes[1:]]
    f, df = _ACT[activation]
    out_f, out_df = _ACT[output_activation] if output_activation else (None, None)

    def step(x, y):
        acts = [x]
        for i, (W, b) in enumerate(zip(Ws, bs)):
            z = acts[-1] @ W + b
            last = i == len(Ws) - 1
            acts.append(f(z) if not last else (out_f(z) if out_f else z))
        value, d = _loss(loss, acts[-1], y)
        if out_df is not None:
            d = d * out_df(acts[-1])
        for i in reversed(range(len(Ws))):
            dW, db = acts[i].T @ d, d.sum(0)
            if i:  # the first layer's input cotangent is never needed
                d = (d @ Ws[i].T) * df(acts[i])
            Ws[i] -= lr * dW
            bs[i] -= lr * db
        return value

    return step


def _loss(kind, y_pred, y):
    m = len(y_pred)
    if kind == "mse":
        diff = y_pred - y
        return 0.5 * float((diff * diff).sum()) / m, diff / m
    z = y_pred - y_pred.max(1, keepdims=True)
    e = np.exp(z)
    p = e / e.sum(1, keepdims=True)
    value = -float(np.log(p[np.arange(m), y]).mean())
    p[np.arange(m), y] -= 1
    return value, p / m


def torch_step(sizes, activation, output_activation, loss, lr=1e-2) -> Callable | None:
    """The same step in PyTorch eager on the CPU, or None when torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    acts = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid}
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(acts[activation]())
    if output_activation:
        layers.append(acts[output_activation]())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    criterion = (
        (lambda p, t: 0.5 * ((p - t) ** 2).sum() / len(p))
        if loss == "mse"
        else torch.nn.CrossEntropyLoss()
    )

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        value = criterion(model(x), y)
        value.backward()
        opt.step()
        return value

    def to_torch(x, y):
        return torch.from_numpy(np.array(x)), torch.from_numpy(
            np.array(y).astype(np.int64 if loss != "mse" else np.float32)
        )

    step.convert = to_torch
    return step


def torch_net_step(model, params, input_shape, loss, *, lr=1e-2, compiled=False):
    """A PyTorch SGD step on a jaxbp layer tree (conv nets included), the same layers, sizes and
    starting params, in NCHW: step(x, y) -> loss, or None when torch is not installed.

    BatchNorm runs in training mode; compiled=True hands the network to torch.compile (inductor
    compiles its forward and backward), the SGD update staying eager. step.convert(x, y) turns
    channels-last NumPy arrays into its inputs.
    """
    try:
        import torch

        from jaxbp.bench import torch_nets
    except ImportError:
        return None
    if loss != "softmax_cross_entropy":
        raise ValueError(f"torch_net_step: only softmax_cross_entropy is supported, got {loss!r}")
    net = torch_nets.torch_module(model, params, tuple(input_shape))[0]
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    run, criterion = (torch.compile(net) if compiled else net), torch.nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        value = criterion(run(x), y)
        value.backward()
        opt.step()
        return value.detach()

    step.convert = lambda x, y: (torch_nets.to_nchw(x), torch.from_numpy(np.asarray(y, np.int64)))
    step.net = net
    return step
