"""A small file that the local runtime's processes share (ingestion in the front, queries in the query workers):
changed read-modify-replace under an exclusive lock, read with one plain read."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

_T = TypeVar("_T")


def read_text(path: Path) -> str | None:
    """The file's text (``None``: no file yet)."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def rewrite(path: Path, change: Callable[[str | None], tuple[str, _T]]) -> _T:
    """Replace ``path`` with what ``change`` makes of its current text (``None``: no file yet), holding a lock that
    every process's rewrite takes; returns ``change``'s result. A reader sees the old file or the new one, never a
    half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_name(path.name + ".lock").open("a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text, result = change(read_text(path))
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text(text)
        temporary.replace(path)
        return result
