"""Child processes for the tests: each in a session of its own, so that a test that gives up (a timeout, a failed
assertion, an interrupt) ends every process it started, grandchildren included (``torchrun``'s workers), instead
of leaving them orphaned and waiting on a collective.

Timeouts here are for a process that hangs, not for a slow machine: they are generous (15 minutes by default),
so that a loaded machine makes a test slower, never a failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

TIMEOUT = 900.0  # seconds; a hang, not a slow machine


def run(cmd: list[str], *, timeout: float = TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True)``, ending the whole process group however it ends."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        end_group(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def popen(cmd: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen`` in a session of its own; pair it with :func:`end_group`."""
    return subprocess.Popen(cmd, start_new_session=True, **kwargs)


def end_group(proc: subprocess.Popen) -> None:
    """SIGKILL every process still in ``proc``'s group (its own session), then reap ``proc``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.communicate(timeout=30)


def rerun_tests(path: str, env: dict[str, str]) -> None:
    """Run a test file again in a child pytest with ``env`` added to the environment (another Keras backend, say),
    and fail with its output unless all of it passed."""
    done = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning", path],
        env={**os.environ, **env}, cwd=Path(path).resolve().parents[1],
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
