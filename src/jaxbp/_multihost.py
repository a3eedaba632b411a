"""Multi-process runs (`jax.distributed`): one run over every process's devices, written once.

A mesh whose devices belong to several processes makes one run. Every process holds the whole
dataset and runs the same program; each global array is assembled from the calling process's own
copy (`jax.make_array_from_callback`: no data crosses between hosts), so those copies must be
identical, which `check_same` verifies by fingerprint before training. Process 0 alone writes
files, and every process learns whether that write worked, so none waits forever on a collective.
In one process `run_once`, `entered_once` and `agree` are plain calls.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, Sharding


def spans_processes(mesh: Mesh | None) -> bool:
    return mesh is not None and mesh.is_multi_process


def is_writer() -> bool:
    """Process 0 writes checkpoints, logs and reports for the whole run."""
    return jax.process_index() == 0


def devices(per_process: int | None = None) -> list[jax.Device]:
    """The first `per_process` devices of every process (all with None), in jax.devices() order."""
    taken: dict[int, int] = {}
    out = []
    for device in jax.devices():
        taken[device.process_index] = taken.get(device.process_index, 0) + 1
        if per_process is None or taken[device.process_index] <= per_process:
            out.append(device)
    return out


def replicate(tree: Any, sharding: Sharding) -> Any:
    """Each leaf as one global array replicated over `sharding`, built from this process's copy."""

    def one(leaf):
        host = np.asarray(leaf)  # dtypes as jnp.asarray gives them (float64 -> float32 without x64)
        host = host.astype(jax.dtypes.canonicalize_dtype(host.dtype), copy=False)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)


def check_same(items: list[tuple[str, Any, str]]) -> None:
    """Raise ValueError on every process unless each (name, tree, hint) has one value on all.

    One all-gather of a 16-byte fingerprint per item; the first item that differs is named, with
    the lowest process that disagrees with process 0 and the hint.
    """
    mine = np.stack([_fingerprint(tree) for _, tree, _ in items])  # (items, 4) uint32
    every = np.asarray(multihost_utils.process_allgather(mine))  # (processes, items, 4)
    for i, (name, _, hint) in enumerate(items):
        for process in range(1, len(every)):
            if not np.array_equal(every[process, i], every[0, i]):
                raise ValueError(f"{name} differs between process {process} and process 0: {hint}")


def run_once(write: Callable[[], Any], *, shared: bool | None = None, default: Any = None) -> Any:
    """`write()` on process 0 only (returns its result; `default` elsewhere) when `shared`.

    shared: whether the processes make one run (default: more than one process). Every process
    then waits for process 0's write and raises if it failed, so none trains on alone.
    """
    if not (jax.process_count() > 1 if shared is None else shared):
        return write()
    result, error = default, None
    if is_writer():
        try:
            result = write()
        except Exception as e:  # re-raised below, once the others know
            error = e
    failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if error is not None:
        raise error
    if failed:
        raise OSError("process 0 failed to write the run's files (its own error says why)")
    return result


@contextlib.contextmanager
def entered_once(context: contextlib.AbstractContextManager, default: Any = None) -> Iterator:
    """Enter `context` on process 0 only (the others get `default`), all learning if that failed."""
    with contextlib.ExitStack() as stack:
        yield run_once(lambda: stack.enter_context(context), default=default)


def agree(value: int) -> int:
    """Process 0's `value`, on every process."""
    if jax.process_count() == 1:
        return value
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def _fingerprint(tree: Any) -> np.ndarray:
    """16 bytes that change with any leaf's dtype, shape or bits, as 4 uint32."""
    h = hashlib.blake2b(digest_size=16)
    for leaf in jax.tree.leaves(tree):
        a = np.ascontiguousarray(leaf)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return np.frombuffer(h.digest(), np.uint32)
