r"""Checkpoints for distributed training with ``torch.distributed.checkpoint`` (DCP): crash-safe and verified.

:func:`save_checkpoint` writes a whole checkpoint into a fresh hidden
directory, seals it with a manifest (the SHA-256 of every file), renames it
into place (``step-00000008``; a re-save of a step gets ``step-00000008.1``,
never the directory of an earlier save), and only then has rank 0 point
``latest`` at it, by an atomic rename.  Older checkpoints beyond ``keep`` are
deleted after ``latest`` has moved.  SIGKILL at any point of a save leaves
``latest`` naming a complete checkpoint.

One save at a time per root: rank 0 holds an exclusive lock (``flock`` on
``.lock`` in the root, removed when the save ends) from choosing the name to
the last deletion, so a second job saving into the same root (a restarted job
whose predecessor still runs) waits for it (``lock_timeout``), then saves
under a name of its own.  ``flock`` holds between processes of one machine
and, on Linux, across NFS clients (the client maps it onto NFS byte-range
locks) and on most cluster file systems; a file system that refuses it
(some FUSE mounts) gets a warning, and there two writers into one root are
not safe.

Retention deletes only what this module wrote: checkpoint directories sealed
by its manifest (never a folder of yours that happens to be named
``step-00000001``), and, when ``keep`` is set, directories of its own
interrupted saves.  ``keep=None`` deletes nothing.  Which saves are newest
comes from ``latest``'s list of recent saves; checkpoints it does not name
(the pointer lost or damaged) follow, newest sealed first, so that a lost
pointer never costs the last good checkpoints.

:func:`load_latest` verifies that checkpoint before reading anything from it,
loads it into copies, and changes the model and optimizer only once
everything has loaded; any failure raises :class:`CheckpointError` and leaves
both as they were.

What is in a checkpoint, and why a hostile one cannot run code:

* ``state.json``: the structure of the model's and the optimizer's state
  dicts, with every non-tensor value (hyperparameters, group structure, and
  numbers that are not tensors) as JSON.  Nothing non-tensor is pickled.
* DCP's files: the tensors (``*.distcp``, read with torch's weights-only
  unpickler) and DCP's index ``.metadata``, a pickle that this module reads
  with an unpickler that builds only DCP's own metadata records, tensor
  sizes, dtypes and layouts, and refuses every other global.  Items stored as
  pickled bytes are refused; file names in the index must be files of the
  manifest.
* ``manifest.json``: the size and SHA-256 of every other file, checked on
  every rank before anything is read, so that a corrupted, truncated,
  swapped or foreign file is refused before a byte of it is unpickled.

The trust boundary: a checkpoint from a source you do not trust cannot make
:func:`load_latest` run code, read files outside the checkpoint, or change
the model and optimizer unless it loads whole.  Only regular files and
directories inside the root are read: a symbolic link, FIFO or device in
place of ``latest``, a step directory or any of its files is refused, and
sizes are known before anything is read.  Error messages name files, never
quote their contents.  ``latest`` carries the SHA-256 of its own fields, so a
damaged pointer is refused rather than followed to another checkpoint.  The manifest detects
accidents, not forgeries: whoever can write the files can write a matching
manifest, and so can hand you well-formed but wrong weights and
hyperparameters (checked for validity, not for provenance), or a checkpoint
whose declared sizes exhaust memory or disk.  Sign or checksum checkpoints
out of band where provenance matters.

Assumptions: every rank sees the checkpoint directory (a shared file system,
as DCP itself needs for its ``.metadata``); loading holds a copy of the model
and optimizer state besides the live one until it commits.

>>> # inside a training loop, on every rank:
>>> # step = load_latest("ckpt", model, opt) or 0
>>> # ...
>>> # save_checkpoint("ckpt", step, model, opt)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import stat
import time
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from adamax._extras import require

require("torch", extra="torch", what="adamax.distributed")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint import metadata as dcp_metadata  # noqa: E402
from torch.distributed.checkpoint.api import CheckpointException  # noqa: E402
from torch.distributed.checkpoint.filesystem import FileSystemReader, _StorageInfo  # noqa: E402
from torch.distributed.checkpoint.planner import LoadItemType  # noqa: E402
from torch.distributed.checkpoint.state_dict import (  # noqa: E402
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

__all__ = ["CheckpointError", "latest_checkpoint", "latest_step", "load_latest", "save_checkpoint"]

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


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def _agree(error: str | None) -> None:
    """Raise :class:`CheckpointError` on every rank if any rank reports an error (a collective call)."""
    errors = [error]
    if _distributed():
        errors = [None] * dist.get_world_size()
        dist.all_gather_object(errors, error)
    failed = [(rank, e) for rank, e in enumerate(errors) if e is not None]
    if failed:
        rank, message = failed[0]
        raise CheckpointError(message if len(errors) == 1 else f"rank {rank}: {message}")


def _broadcast(value: Any) -> Any:
    if not _distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _reached(point: str) -> None:
    """A named point of a save; fault-injection tests replace this to kill the process there."""


# --- the checkpoint's contents: tensors for DCP, everything else as JSON ---------------------------------------


def _split(tree: Any, path: tuple[str, ...], tensors: dict[str, torch.Tensor]) -> Any:
    """``tree`` as JSON, with tensors replaced by a marker and collected into ``tensors`` by path."""
    if isinstance(tree, torch.Tensor):
        tensors["/".join(path)] = tree
        return {_TENSOR: True}
    if isinstance(tree, Mapping):
        out = {}
        for key, value in tree.items():
            if not isinstance(key, str) or "/" in key or key in (_TENSOR, _TUPLE):
                raise TypeError(f"cannot checkpoint the key {key!r} at {'/'.join(path)}")  # the root's keys are fixed
            out[key] = _split(value, (*path, key), tensors)
        return out
    if isinstance(tree, (list, tuple)):
        items = [_split(value, (*path, str(i)), tensors) for i, value in enumerate(tree)]
        return {_TUPLE: items} if isinstance(tree, tuple) else items
    if tree is None or isinstance(tree, (bool, int, str)) or type(tree) is float:
        return tree
    if isinstance(tree, float):  # float subclasses, such as numpy's float64
        return float(tree)
    raise TypeError(
        f"cannot checkpoint {type(tree).__name__} at {'/'.join(path)}: only tensors, numbers, strings, "
        "bools, None, lists, tuples and dicts are saved (nothing is pickled)"
    )


def _join(skeleton: Any, live: Any, path: tuple[str, ...], load: dict[str, torch.Tensor], stored: Mapping) -> Any:
    """The saved structure ``skeleton`` filled in: JSON values as they are, and for every tensor a fresh copy
    of ``live``'s tensor at the same place (its dtype, device and sharding), collected into ``load`` for DCP.

    Optimizer state the live optimizer has not created yet (its params already had gradients, so DCP did not
    initialise it) gets a plain tensor of the stored size and dtype; the optimizer's loader casts it.  A dict
    holding a marker's key must be that marker: a save never writes such keys (:func:`_split` refuses them).
    """
    key = "/".join(path)
    if isinstance(skeleton, dict) and (_TENSOR in skeleton or _TUPLE in skeleton):
        if skeleton == {_TENSOR: True}:
            if isinstance(live, torch.Tensor):
                copy = live.detach().clone()
            elif path[:2] == ("optim", "state") and isinstance(stored.get(key), dcp_metadata.TensorStorageMetadata):
                copy = torch.empty(stored[key].size, dtype=stored[key].properties.dtype)
            else:
                raise CheckpointError(f"the checkpoint has a tensor at {key}, where this model and optimizer have none")
            load[key] = copy
            return copy
        if skeleton.keys() == {_TUPLE} and isinstance(skeleton[_TUPLE], list):
            return tuple(_join_items(skeleton[_TUPLE], live, path, load, stored))
        raise CheckpointError(f"the checkpoint's structure is malformed at {key}")  # _read_state checked the root
    if isinstance(skeleton, dict):
        live_map = live if isinstance(live, Mapping) else {}
        return {k: _join(value, live_map.get(k), (*path, k), load, stored) for k, value in skeleton.items()}
    if isinstance(skeleton, list):
        return _join_items(skeleton, live, path, load, stored)
    return skeleton


def _join_items(items: list, live: Any, path: tuple[str, ...], load: dict[str, torch.Tensor], stored: Mapping) -> list:
    """:func:`_join` of a list's items, each with the live list's or tuple's item at its index (None past its end)."""
    live_items = live if isinstance(live, (list, tuple)) else ()
    return [
        _join(item, live_items[i] if i < len(live_items) else None, (*path, str(i)), load, stored)
        for i, item in enumerate(items)
    ]


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


def _read_state(directory: Path) -> dict:
    try:
        state = json.loads(_read_regular(directory / STATE, _JSON_BYTES))
    except _UNREADABLE as err:
        raise CheckpointError(f"{directory / STATE}: {err}") from None
    if not (_has_format(state) and isinstance(state.get("tree"), dict)):
        raise CheckpointError(f"{directory / STATE}: not a format-{FORMAT} adamax checkpoint")
    tree = state["tree"]
    if set(tree) != {"model", "optim"}:
        raise CheckpointError(f"{directory / STATE}: expected the keys 'model' and 'optim'")
    if not (isinstance(tree["optim"], dict) and set(tree["optim"]) == {"state", "param_groups"}):
        raise CheckpointError(f"{directory / STATE}: expected the optimizer's keys 'state' and 'param_groups'")
    return state


# --- the manifest ----------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    """The SHA-256 of a file that :func:`_verify` found regular by ``lstat`` (or that this save wrote)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


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


def _write_manifest(directory: Path) -> None:
    files = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != MANIFEST)
    entries = {
        name: {"bytes": (directory / name).stat().st_size, "sha256": _sha256(directory / name)} for name in files
    }
    _write_atomically(directory / MANIFEST, json.dumps({"format": FORMAT, "files": entries}, indent=1))


def _is_manifest(document: Any) -> bool:
    """A manifest of this format: its files, by name, ``state.json`` among them."""
    return _has_format(document) and isinstance(document.get("files"), dict) and STATE in document["files"]


def _verify(directory: Path) -> list[str]:
    """Check every file of the checkpoint against its manifest; returns the file names.  Reads no pickle."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory} does not exist")
    if not _is_real_dir(directory):
        raise CheckpointError(f"{directory} is a symbolic link: only directories inside the root are read")
    try:
        manifest = json.loads(_read_regular(directory / MANIFEST, _JSON_BYTES))
    except FileNotFoundError:
        raise CheckpointError(f"{directory} has no {MANIFEST}: not a complete adamax checkpoint") from None
    except _UNREADABLE as err:
        raise CheckpointError(f"{directory / MANIFEST}: {err}") from None
    if not _is_manifest(manifest):
        raise CheckpointError(f"{directory / MANIFEST}: not a format-{FORMAT} manifest")
    files = manifest["files"]
    present = {p.name for p in directory.iterdir()} - {MANIFEST}
    if present != set(files):
        extra, missing = sorted(present - set(files)), sorted(set(files) - present)
        raise CheckpointError(f"{directory}: files differ from its manifest (missing {missing}, unexpected {extra})")
    for name, entry in files.items():
        path = directory / name
        info = os.lstat(path)
        if not (isinstance(entry, dict) and stat.S_ISREG(info.st_mode)):
            raise CheckpointError(f"{path}: not a file of the manifest (a link, directory or device: only regular "
                                  "files are read)")  # fmt: skip
        size = info.st_size
        if size != entry.get("bytes"):
            raise CheckpointError(f"{path}: {size} bytes, the manifest says {entry.get('bytes')}")
        if _sha256(path) != entry.get("sha256"):
            raise CheckpointError(f"{path}: its SHA-256 differs from the manifest's (corrupted or replaced)")
    return sorted(files)


# --- reading DCP's files without running code from them --------------------------------------------------------

_METADATA_CLASSES = {
    ("torch.distributed.checkpoint.metadata", name): getattr(dcp_metadata, name)
    for name in (
        "Metadata",
        "TensorStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
}
_METADATA_CLASSES |= {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): _StorageInfo,
    ("torch", "Size"): torch.Size,
    ("pathlib", "PosixPath"): PurePosixPath,  # a path is kept as a name; nothing touches the file system
    ("pathlib", "WindowsPath"): PureWindowsPath,
    ("pathlib", "PurePosixPath"): PurePosixPath,
    ("pathlib", "PureWindowsPath"): PureWindowsPath,
}


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata records and nothing else: any other global is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        found = _METADATA_CLASSES.get((module, name))
        if found is not None:
            return found
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) == ("torch.serialization", "_get_layout"):
            return _layout
        raise pickle.UnpicklingError(f"refused to load {module}.{name} from a checkpoint's .metadata")


def _layout(name: str) -> torch.layout:
    layout = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(layout, torch.layout):
        raise pickle.UnpicklingError(f"unknown tensor layout {name!r}")
    return layout


class _VerifiedReader(FileSystemReader):
    """DCP's file reader, restricted to tensors in files of the manifest, with a safe ``.metadata`` unpickler.

    The index is read and checked when the reader is made, before DCP starts, so that a refusal is one
    :class:`CheckpointError` on every rank rather than DCP's fallbacks and tracebacks.
    """

    def __init__(self, path: Path, files: list[str]) -> None:
        super().__init__(path)
        where = Path(path) / ".metadata"
        try:
            with open(where, "rb") as f:
                metadata = _MetadataUnpickler(f).load()
        except Exception as err:
            raise CheckpointError(f"{where}: {err}") from None
        if not isinstance(metadata, dcp_metadata.Metadata) or not isinstance(metadata.storage_data, dict):
            raise CheckpointError(f"{where}: not DCP metadata")
        for index, info in metadata.storage_data.items():
            if not isinstance(info, _StorageInfo) or info.relative_path not in set(files):
                raise CheckpointError(f"{where} points {getattr(index, 'fqn', index)} outside the checkpoint's files")
        self._metadata = metadata

    def stored(self) -> Mapping[str, Any]:
        """What the index says each stored item is (size, dtype), by key."""
        return self._metadata.state_dict_metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        if kwargs.get("rank") is not None:
            raise CheckpointError("per-rank DCP metadata is not supported")
        metadata = self._metadata
        if metadata.storage_meta is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def read_data(self, plan, planner):
        if any(item.type == LoadItemType.BYTE_IO for item in plan.items):
            raise CheckpointError("the checkpoint stores pickled objects; only tensors are read")
        return super().read_data(plan, planner)


# --- names and the pointer -------------------------------------------------------------------------------------


def _order(name: str) -> tuple[int, int] | None:
    match = _NAME.fullmatch(name)
    return None if match is None else (int(match[1]), int(match[2] or 0))


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


# --- saving and loading ----------------------------------------------------------------------------------------


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    optimizer,
    *,
    keep: int | None = KEEP,
    lock_timeout: float = LOCK_TIMEOUT,
) -> Path:
    """Save model and optimizer state after ``step`` steps; a collective call on every rank.

    Returns the checkpoint's directory.  ``keep``: how many checkpoints to
    keep, the newest first (``None``: all); older ones are deleted after
    ``latest`` has moved to the new one.  ``lock_timeout``: how many seconds
    to wait for another save into ``root`` to end before refusing.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep must be an integer >= 1 or None, got {keep!r}")
    if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float)) or not lock_timeout >= 0:
        raise ValueError(f"lock_timeout must be a number of seconds >= 0, got {lock_timeout!r}")
    root = Path(root)
    model_state, optim_state = get_state_dict(model, optimizer)
    tensors: dict[str, torch.Tensor] = {}
    error = None
    try:
        tree = _split({"model": model_state, "optim": optim_state}, (), tensors)
    except TypeError as err:
        error = str(err)
    _agree(error)  # refused on every rank before anything is written, the lock file included
    name, lock = None, None
    if _rank() == 0:
        try:
            root.mkdir(parents=True, exist_ok=True)
            lock = _lock(root, lock_timeout)  # held until this save has pointed and pruned
            name = _fresh_name(root, step)
        except (OSError, CheckpointError) as err:
            error = f"saving into {root}: {err}"
    try:
        _agree(error)
        return _save_locked(root, _broadcast(name), step, tensors, tree, keep)
    finally:
        if lock is not None:
            lock.release()


def _save_locked(root: Path, name: str, step: int, tensors: dict, tree: Any, keep: int | None) -> Path:
    """The save once its name is chosen (rank 0 holding the root's lock): shards, seal, rename, pointer, prune."""
    partial = root / f"{_PARTIAL}{name}"
    if _rank() == 0 and partial.exists():
        shutil.rmtree(partial)  # left by a save killed before its rename (saves into this root are one at a time)
    _barrier()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to save in a single process")
            dcp.save(tensors, checkpoint_id=str(partial))
    except (Exception, CheckpointException) as err:
        raise CheckpointError(f"saving {name}: {err}") from err
    _barrier()  # every rank's files are written
    _reached("saved")
    error = None
    if _rank() == 0:
        try:
            _write_atomically(partial / STATE, json.dumps({"format": FORMAT, "step": step, "tree": tree}))
            _write_manifest(partial)
            _reached("sealed")
            os.rename(partial, root / name)  # a directory that did not exist: no earlier checkpoint is touched
            _fsync_dir(root)
            _reached("renamed")
            try:
                previous = _read_pointer(root)
            except CheckpointError:  # an unreadable pointer is replaced, not a reason to fail the save
                previous = None
            recent = _newest_first(root, name, (previous or {}).get("recent", []))
            pointer = {"checkpoint": name, "step": step, "recent": recent[:keep] if keep is not None else recent}
            pointer["sha256"] = _pointer_digest(pointer)
            _write_atomically(root / LATEST, json.dumps(pointer))  # atomic: the old pointer or the new one
            _reached("pointed")
            if keep is not None:
                _prune(root, keep, recent)
        except (OSError, CheckpointError) as err:
            error = f"saving {name}: {err}"
    _agree(error)
    return root / name


def _tensors_of(model: torch.nn.Module):
    """The model's params and buffers by name (not through ``state_dict()``, whose hooks may act)."""
    yield from model.named_parameters(remove_duplicate=False)
    yield from ((f"buffer:{k}", v) for k, v in model.named_buffers(remove_duplicate=False))


class _Snapshot:
    """What a failed load must put back: the model's values, and the optimizer's state and groups as objects."""

    def __init__(self, model: torch.nn.Module, optimizer) -> None:
        self.model = model
        self.values = {k: v.detach().clone() for k, v in _tensors_of(model)}
        self.optimizer = optimizer
        self.attributes = dict(optimizer.__dict__)
        # dicts the optimizer keeps besides its state (caches, lazy tables' bookkeeping), by content
        self.contents = {k: dict(v) for k, v in self.attributes.items() if isinstance(v, dict) and k != "state"}
        lazy = getattr(optimizer, "_lazy", None)  # adamax.torch.Adamax's lazy tables: their bookkeeping, by content
        self.tables = dict(lazy.tables) if isinstance(getattr(lazy, "tables", None), dict) else None
        self.state = optimizer.state
        self.entries = {p: (entry, dict(entry)) for p, entry in optimizer.state.items()}
        self.groups = [(group, dict(group)) for group in optimizer.param_groups]
        self.grads = [(p, p.grad) for group in optimizer.param_groups for p in group["params"]]

    def restore(self) -> None:
        opt = self.optimizer
        opt.__dict__.clear()
        opt.__dict__.update(self.attributes)
        for key, items in self.contents.items():
            opt.__dict__[key].clear()
            opt.__dict__[key].update(items)
        if self.tables is not None:
            opt._lazy.tables.clear()
            opt._lazy.tables.update(self.tables)
        plans = getattr(opt, "_plans", None)
        if plans is not None:
            plans.clear()  # a cache; rebuilt at the next step
        for p in [p for p in self.state if p not in self.entries]:
            del self.state[p]
        for p, (entry, items) in self.entries.items():
            entry.clear()
            entry.update(items)
            if self.state.get(p) is not entry:
                self.state[p] = entry
        for group, items in self.groups:
            group.clear()
            group.update(items)
        for p, grad in self.grads:
            p.grad = grad
        with torch.no_grad():
            for key, value in _tensors_of(self.model):
                value.copy_(self.values[key])
        if self.tables is not None:  # lazy tables: values and bookkeeping are as they were
            for group in opt.param_groups:
                for p in group["params"]:
                    opt._lazy.accept_write(p)


def _group_params(optim_state: Any) -> list[list[str]]:
    """The params of each param group of a flattened optimizer state dict, by name, in order of groups."""
    groups = optim_state.get("param_groups", []) if isinstance(optim_state, Mapping) else []
    return [sorted(map(str, g.get("params", []))) if isinstance(g, Mapping) else [] for g in groups]


def load_latest(root: str | os.PathLike, model: torch.nn.Module, optimizer) -> int | None:
    """Load the last complete checkpoint into ``model`` and ``optimizer``; returns its step, or None if there is none.

    A collective call on every rank.  The checkpoint is verified against its
    manifest first, then loaded into copies; the model and optimizer change
    only when all of it has loaded.  Any failure raises
    :class:`CheckpointError` and leaves them as they were.
    """
    root = Path(root)
    error, pointer, state, reader = None, None, None, None
    try:
        pointer = _read_pointer(root)
        if pointer is not None:
            directory = root / pointer["checkpoint"]
            files = _verify(directory)
            state = _read_state(directory)
            reader = _VerifiedReader(directory, files)
    except CheckpointError as err:
        error = str(err)
    _agree(error)
    if pointer is None:
        return None
    directory = root / pointer["checkpoint"]
    snapshot = _Snapshot(model, optimizer)
    try:
        live_model, live_optim = get_state_dict(model, optimizer)  # a fresh optimizer's state is created here
        load: dict[str, torch.Tensor] = {}
        stored = reader.stored()
        tree = _join(state["tree"], {"model": live_model, "optim": live_optim}, (), load, stored)
        if set(tree["model"]) != set(live_model):
            missing, unexpected = (
                sorted(set(live_model) - set(tree["model"])),
                sorted(set(tree["model"]) - set(live_model)),
            )
            raise CheckpointError(f"the model's keys differ (missing {missing}, unexpected {unexpected})")
        saved_groups, live_groups = _group_params(tree["optim"]), _group_params(live_optim)
        if saved_groups != live_groups:  # DCP would load them anyway, each group's values onto whichever params
            raise CheckpointError(f"the optimizer's param groups differ: the checkpoint's hold {saved_groups}, "
                                  f"this optimizer's {live_groups}")  # fmt: skip
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            dcp.load(load, storage_reader=reader)
        set_optimizer_state_dict(model, optimizer, tree["optim"])
        set_model_state_dict(model, tree["model"])
    except BaseException as err:
        snapshot.restore()
        if isinstance(err, CheckpointError):
            raise
        if isinstance(err, (Exception, CheckpointException)):
            raise CheckpointError(f"loading {directory}: {err}") from err
        raise
    return _order(pointer["checkpoint"])[0]
