"""The ``latest`` pointer, the names of saves, which checkpoints retention keeps and deletes, and the lock that
lets one save at a time into a root."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

from adamax.distributed._files import (
    _JSON_BYTES,
    _PARTIAL,
    _POINTER_BYTES,
    _UNREADABLE,
    LATEST,
    LOCK,
    MANIFEST,
    CheckpointError,
    _is_real_dir,
    _order,
    _read_regular,
)
from adamax.distributed._verify import _is_manifest


def _pointer_digest(pointer: Mapping) -> str:
    """The SHA-256 a pointer carries: of its other fields, as canonical JSON."""
    fields = {k: v for k, v in pointer.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _read_pointer(root: Path) -> dict | None:
    where = root / LATEST
    try:
        text = _read_regular(where, _POINTER_BYTES).decode()
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:  # a directory, a link, a FIFO, too big, unreadable, or not UTF-8
        reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise CheckpointError(f"{where} does not name a checkpoint: {reason}") from None
    try:
        pointer = json.loads(text)
    except (ValueError, RecursionError):  # the plain name that earlier versions wrote (or worse: refused below)
        pointer = {"checkpoint": text.strip(), "recent": [text.strip()]}
    name = pointer.get("checkpoint") if isinstance(pointer, dict) else None
    if not isinstance(name, str) or _order(name) is None:
        raise CheckpointError(f"{where} does not name a checkpoint: not a pointer this library wrote "
                              f"({len(text)} characters; its contents are not shown)")  # fmt: skip
    if "sha256" in pointer and pointer["sha256"] != _pointer_digest(pointer):
        raise CheckpointError(f"{where} does not name a checkpoint: its SHA-256 differs from its contents' (damaged)")
    recent = pointer.get("recent")
    pointer["recent"] = [n for n in recent if isinstance(n, str) and _order(n)] if isinstance(recent, list) else []
    return pointer


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The directory of the last complete checkpoint under ``root``, or None when there is none."""
    pointer = _read_pointer(Path(root))
    return None if pointer is None else Path(root) / pointer["checkpoint"]


def latest_step(root: str | os.PathLike) -> int | None:
    """The step of the last complete checkpoint under ``root``, or None."""
    pointer = _read_pointer(Path(root))
    return None if pointer is None else _order(pointer["checkpoint"])[0]


def _fresh_name(root: Path, step: int) -> str:
    """``step-00000008``, or ``step-00000008.N`` when that step was saved before: never an existing directory."""
    taken = {_order(p.name) for p in root.iterdir()} if root.is_dir() else set()
    n = 0
    while (step, n) in taken:
        n += 1
    return f"step-{step:08d}" + (f".{n}" if n else "")


def _sealed(path: Path) -> bool:
    """Whether ``path`` is a checkpoint this module wrote and sealed: a directory (not a link) named as one,
    holding a manifest of this format that lists a ``state.json``."""
    if _order(path.name) is None or not _is_real_dir(path):
        return False
    try:
        manifest = json.loads(_read_regular(path / MANIFEST, _JSON_BYTES))
    except _UNREADABLE:
        return False
    return _is_manifest(manifest)


def _newest_first(root: Path, name: str, earlier: list[str]) -> list[str]:
    """Every sealed checkpoint under ``root``, newest save first: ``name`` (this save), then those ``latest``'s
    recent list names, in its order, then any others (a lost or damaged pointer's), by when they were sealed."""
    sealed = {p.name: p for p in root.iterdir() if p.name != name and _sealed(p)}
    named = [n for n in dict.fromkeys(earlier) if n in sealed]
    others = sorted(set(sealed) - set(named), key=lambda n: (os.lstat(sealed[n] / MANIFEST).st_mtime_ns, _order(n)))
    return [name, *named, *reversed(others)]


def _prune(root: Path, keep: int, newest_first: list[str]) -> None:
    """Delete the sealed checkpoints past the ``keep`` newest (``newest_first``: every sealed one, from
    :func:`_newest_first`), and this module's interrupted saves (under the lock)."""
    interrupted = [
        path
        for path in root.iterdir()
        if path.name.startswith(_PARTIAL) and _order(path.name[len(_PARTIAL) :]) is not None and _is_real_dir(path)
    ]
    for path in [*interrupted, *(root / name for name in newest_first[keep:])]:
        shutil.rmtree(path, ignore_errors=True)


class _SaveLock:
    """An exclusive ``flock`` on ``root/.lock``, held by rank 0 for a whole save and removed at its end.  A waiter
    that got the lock on a file already removed (its holder finished) tries again on the new one."""

    def __init__(self, root: Path, timeout: float) -> None:
        import fcntl

        self.path, self.fd = root / LOCK, None
        deadline = time.monotonic() + timeout
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise CheckpointError(
                                f"another save into {root} has held {self.path} for {timeout:g} s "
                                f"(process {self._holder(fd)}); not saving beside it"
                            ) from None
                        time.sleep(0.05)
                try:
                    same = os.path.samestat(os.fstat(fd), os.lstat(self.path))
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                break
            os.close(fd)  # the file this lock was on was removed by the save that held it: lock the new one
            if time.monotonic() > deadline:  # never locking the file that is there (it is not the one opened)
                raise CheckpointError(f"could not lock {self.path} within {timeout:g} s: it keeps changing")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            return os.pread(fd, 32, 0).decode().strip() or "unknown"
        except (OSError, ValueError):
            return "unknown"

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still held: a waiter sees its file gone and locks a fresh one
        os.close(self.fd)  # releases the flock
        self.fd = None


def _lock(root: Path, timeout: float) -> _SaveLock | None:
    try:
        return _SaveLock(root, timeout)
    except ImportError:  # no fcntl (Windows)
        warnings.warn(f"no flock on this platform: a save into {root} is not protected from another save into it",
                      RuntimeWarning, stacklevel=3)  # fmt: skip
        return None
    except OSError as err:
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            warnings.warn(
                f"{root}'s file system refuses flock ({err.strerror}): this save is not protected from another "
                "save into the same root",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        raise
