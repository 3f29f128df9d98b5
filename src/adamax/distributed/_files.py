"""The checkpoint layout's names and limits, its error, and the file primitives every path shares: reading a
regular file of known size without following links, and writing one atomically."""

from __future__ import annotations

import errno
import os
import re
import stat
import uuid
from pathlib import Path
from typing import Any

LATEST = "latest"


MANIFEST = "manifest.json"


STATE = "state.json"


LOCK = ".lock"


FORMAT = 1


KEEP = 3


LOCK_TIMEOUT = 600.0  # seconds a save waits for another save into the same root


_NAME = re.compile(r"step-(\d{8,})(?:\.(\d+))?")


_PARTIAL = ".partial-"


_POINTER_BYTES = 1 << 20  # the most a pointer may hold


_JSON_BYTES = 1 << 30  # the most a manifest may hold (state.json's size is the manifest's)


_TENSOR = "__tensor__"  # state.json's marker for a value stored by DCP


_TUPLE = "__tuple__"  # ... and for a tuple, which JSON would turn into a list


_UNREADABLE = (OSError, ValueError, RecursionError)  # a JSON file that cannot be read, decoded or parsed


class CheckpointError(Exception):
    """A checkpoint could not be saved or loaded; nothing was changed.  (DCP's own errors derive from
    ``BaseException``; this one can be caught with ``except Exception``.)"""


def _has_format(document: Any) -> bool:
    """A JSON object of this format: its ``format`` is the integer ``FORMAT`` (not ``true`` or ``1.0``)."""
    return isinstance(document, dict) and type(document.get("format")) is int and document["format"] == FORMAT


def _read_regular(path: Path, limit: int) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes (not a link, FIFO, device or directory:
    refused with an ``OSError`` before a byte is read)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "a symbolic link, which is not followed", str(path)) from None
        raise
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, device or socket)", str(path))
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"{info.st_size} bytes, more than the {limit} this file may hold", str(path))
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise OSError(errno.EFBIG, f"more than the {limit} bytes this file may hold", str(path))
        return data
    finally:
        os.close(fd)


def _is_real_dir(path: Path) -> bool:
    """A directory itself, not a symbolic link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not every platform opens directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never part of one."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _order(name: str) -> tuple[int, int] | None:
    match = _NAME.fullmatch(name)
    return None if match is None else (int(match[1]), int(match[2] or 0))
