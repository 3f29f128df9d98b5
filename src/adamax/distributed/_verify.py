"""Verification: the manifest (size and SHA-256 of every file) written at a save and checked before a load reads
anything, and the allow-list unpickler that reads DCP's index."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import stat
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.filesystem import FileSystemReader, _StorageInfo
from torch.distributed.checkpoint.planner import LoadItemType

from adamax.distributed._files import (
    _JSON_BYTES,
    _UNREADABLE,
    FORMAT,
    MANIFEST,
    STATE,
    CheckpointError,
    _has_format,
    _is_real_dir,
    _read_regular,
    _write_atomically,
)


def _sha256(path: Path) -> str:
    """The SHA-256 of a file that :func:`_verify` found regular by ``lstat`` (or that this save wrote)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


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
