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

from adamax._extras import require

require("torch", extra="torch", what="adamax.distributed")

from adamax.distributed._files import CheckpointError  # noqa: E402
from adamax.distributed._load import load_latest  # noqa: E402
from adamax.distributed._retention import latest_checkpoint, latest_step  # noqa: E402
from adamax.distributed._save import save_checkpoint  # noqa: E402

CheckpointError.__module__ = __name__  # one public home, for repr and pickling

__all__ = ["CheckpointError", "latest_checkpoint", "latest_step", "load_latest", "save_checkpoint"]
