"""Writing files so that a crash, an interruption or a second writer never leaves a torn one."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file (or a folder, where the platform allows) by its path."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """Write via `write(temporary)` beside `target`, fsync, rename over `target`, fsync the
    folder: `target` then holds either what it held before or the whole new content.

    The temporary name is unique to the call (process id and a random token), so two
    processes or threads writing the same target (two trainings sharing a cache) never write
    into one temporary file; the last rename wins with a whole file. It starts with a dot and
    ends in `.tmp`. `write` creates the file, so it gets the usual permissions (the umask's),
    not `mkstemp`'s owner-only ones."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    try:
        write(temporary)
        fsync_path(temporary)
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    with contextlib.suppress(OSError):  # not every platform can fsync a directory
        fsync_path(target.parent)
