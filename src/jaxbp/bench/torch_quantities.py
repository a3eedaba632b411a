"""The quantity benchmark's peers: BackPACK's extensions and Opacus's DP-SGD steps on the same
network, sizes and starting params as jaxbp's (torch_nets.torch_module), on the CPU.

Imports torch, so quantities.py imports it only on demand. Every call here returns None and
frees what it computed (grads, grad_batch, ...) before returning, as the jax calls do, so that
a 4 GB result never lives on while the next candidate runs. Peak memory: the peak of the CPU
allocator's running total (allocations minus frees) during one call, as torch.profiler records
it with profile_memory=True, counted from what was allocated when the call began.
"""

from __future__ import annotations

import copy
import itertools
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from jaxbp.bench import torch_nets

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's start/stop lines, not wanted
# BackPACK's and Opacus's hooks on a network whose input needs no gradient: expected, harmless
warnings.filterwarnings("ignore", message="Full backward hook is firing")
BACKPACK = {
    "BatchGrad": lambda e: e.BatchGrad(),
    "BatchL2Grad": lambda e: e.BatchL2Grad(),
    "Variance": lambda e: e.Variance(),
    "SumGradSquared": lambda e: e.SumGradSquared(),
    "DiagGGNExact": lambda e: e.DiagGGNExact(),
    "DiagGGNMC": lambda e: e.DiagGGNMC(mc_samples=1),
    "KFLR": lambda e: e.KFLR(),
    "KFAC": lambda e: e.KFAC(mc_samples=1),
}
GROUPS = {
    "first_order": ("torch backward", "BatchGrad", "BatchL2Grad", "Variance", "SumGradSquared"),
    "curvature": ("torch backward", "DiagGGNExact", "DiagGGNMC", "KFLR", "KFAC"),
    "dp": ("torch step", "Opacus hooks", "Opacus ghost"),
}


def network(model: Any, params: Any, input_shape: tuple[int, ...]) -> nn.Sequential:
    """jaxbp's network in torch (NCHW), its channels-last Flatten replaced by nn.Flatten with the
    next Linear's columns permuted to match: the same function, in modules BackPACK knows."""
    net = torch_nets.torch_module(model, params, tuple(input_shape))[0]
    if not isinstance(net, nn.Sequential):
        net = nn.Sequential(net)
    for i, module in enumerate(net):
        if type(module).__name__ != "_ChannelsLastFlatten":
            continue
        with torch.no_grad():
            shape = net[:i](torch.zeros(1, *_nchw(input_shape))).shape[1:]
            net[i] = nn.Flatten()
            if len(shape) > 1:
                dense = next(m for m in net[i + 1 :] if isinstance(m, nn.Linear))
                w = dense.weight  # columns in channels-last order (*spatial, C)
                rows = w.reshape(len(w), *shape[1:], shape[0])
                w.copy_(rows.movedim(-1, 1).reshape(len(w), -1))
    return net


def _nchw(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[-1], *shape[:-1]) if len(shape) > 1 else tuple(shape)


def inputs(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    return torch_nets.to_nchw(np.asarray(x)), torch.from_numpy(np.asarray(y, np.int64))


def candidates(
    group: str, net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, clip_norm: float,
    noise_multiplier: float, lr: float,
) -> tuple[dict[str, Callable], dict[str, str]]:  # fmt: skip
    """({name: call}, {name: why missing}) for GROUPS[group], each on its own copy of net."""
    fns, missing = {}, {}
    for name in GROUPS[group]:
        try:
            if name == "torch backward":
                fns[name] = _backward(copy.deepcopy(net), x, y)
            elif name == "torch step":
                fns[name] = _step(copy.deepcopy(net), x, y, lr)
            elif name.startswith("Opacus"):
                ghost = name.endswith("ghost")
                fns[name] = _opacus(net, x, y, clip_norm, noise_multiplier, lr, ghost)
            else:
                fns[name] = _backpack(copy.deepcopy(net), x, y, name)
            fns[name]()  # a peer that cannot run this network is reported, not fatal
        except ImportError as error:
            fns.pop(name, None)
            missing[name] = f"{error.name or 'a package'} not installed"
        except Exception as error:  # noqa: BLE001 - BackPACK and Opacus raise many kinds
            fns.pop(name, None)
            missing[name] = f"failed: {type(error).__name__}: {str(error)[:80]}"
    return fns, missing


def _backward(net, x, y) -> Callable:
    criterion = nn.CrossEntropyLoss()

    def call():
        net.zero_grad(set_to_none=True)
        criterion(net(x), y).backward()
        net.zero_grad(set_to_none=True)

    return call


def _step(net, x, y, lr) -> Callable:
    opt, criterion = torch.optim.SGD(net.parameters(), lr=lr), nn.CrossEntropyLoss()

    def call():
        opt.zero_grad(set_to_none=True)
        criterion(net(x), y).backward()
        opt.step()

    return call


def _backpack(net, x, y, name: str) -> Callable:
    import backpack
    from backpack import extensions

    net, criterion = backpack.extend(net), backpack.extend(nn.CrossEntropyLoss())
    extension = BACKPACK[name](extensions)

    def call():
        with backpack.backpack(extension):
            criterion(net(x), y).backward()
        for p in net.parameters():
            p.grad = None
            if hasattr(p, extension.savefield):
                delattr(p, extension.savefield)

    return call


def _opacus(net, x, y, clip_norm, noise_multiplier, lr, ghost: bool) -> Callable:
    """An Opacus DP-SGD step as make_private builds it (no Poisson sampling: the same fixed
    batch as everyone), per-sample grads by hooks, or ghost clipping's two backward passes."""
    from opacus import PrivacyEngine

    net = copy.deepcopy(net)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=len(x))
    with warnings.catch_warnings():  # secure RNG and accountant advice: not what is timed
        warnings.simplefilter("ignore")
        made = PrivacyEngine().make_private(
            module=net, optimizer=opt, criterion=nn.CrossEntropyLoss(), data_loader=loader,
            noise_multiplier=noise_multiplier, max_grad_norm=clip_norm, poisson_sampling=False,
            grad_sample_mode="ghost" if ghost else "hooks",
        )  # fmt: skip
    module, opt = made[0], made[1]
    criterion = made[2] if ghost else nn.CrossEntropyLoss()

    def call():
        opt.zero_grad(set_to_none=True)
        criterion(module(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    call.net = net  # the network it steps, for a test to read back
    return call


def peak_bytes(call: Callable) -> int:
    """The CPU allocator's peak running total during one call, from torch.profiler's records."""
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            call()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    return int(max(0, max(itertools.accumulate(n for _, n in events), default=0)))
