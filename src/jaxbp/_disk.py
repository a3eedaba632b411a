"""Writes another process cannot spoil: a file replaced atomically, a folder locked for one writer.

Why a module: checkpoints, run folders, plots and reports all write this way; the checkpoint
format (`jaxbp.checkpoint`, which re-exports these names) is another idea.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows: no flock; lock_folder then locks nothing
    fcntl = None

LOCK_NAME = ".jaxbp.lock"
"""The lock file `lock_folder` holds in a run folder while a run writes it (an `flock`)."""


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Run ``write`` on a temp file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    # O_EXCL: never clobber another writer's temp file; 0o666 lets the umask set permissions.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


class FolderLocked(OSError):
    """Another process holds the lock of `directory`; `holder` is what it wrote, e.g. "pid 7"."""

    def __init__(self, directory: Path, holder: str):
        super().__init__(f"{directory} is in use by another process ({holder or 'pid unknown'})")
        self.directory, self.holder = directory, holder


@contextlib.contextmanager
def lock_folder(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on ``directory`` (created if missing) while the block runs.

    The lock is ``flock`` on ``directory/.jaxbp.lock``, a file that says "pid N on HOST" and is
    removed when the block ends. The kernel drops the lock when its process dies, so a run killed
    with SIGKILL leaves a file but no lock. Raises ``FolderLocked`` at once, without waiting, when
    another process holds it. Where flock is missing (Windows, some network filesystems) nothing
    is locked.
    """
    path = Path(directory) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path)
    try:
        if fd is not None:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield path
    finally:
        if fd is not None:
            path.unlink(missing_ok=True)  # before unlocking: a waiter on this file sees it gone
            os.close(fd)


def _acquire(path: Path) -> int | None:
    """A descriptor of ``path`` locked by this process, or None where flock is unavailable."""
    while fcntl is not None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip()
            os.close(fd)
            raise FolderLocked(path.parent, holder) from None
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return None
            raise
        try:  # the previous holder may have removed the file between our open and our lock
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    return None


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable; only POSIX can open a directory to fsync it."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
