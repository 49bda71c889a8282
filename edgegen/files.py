"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file edgegen writes for a user or a cache (manifests, ONNX, checkpoints, engines, reports,
captured calibration data) goes through `atomic_path`: the data lands in a temporary file beside
the target, is flushed to disk, and is renamed over the target only when writing succeeded. On any
failure, Ctrl-C included, the temporary file is removed and the target is untouched.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once, at import: what a plain open() would give a new file


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` if the block succeeds."""
    target = Path(path)
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        yield temp
        with open(temp, "rb+") as f:  # the writer may have closed it: flush its data to disk
            os.fsync(f.fileno())
        # Some writers (safetensors) create 0600 files: give the file the mode the target had, or
        # the one a plain open() would give a new file, so shipped and shared files stay readable.
        os.chmod(temp, target.stat().st_mode & 0o7777 if target.exists() else 0o666 & ~_UMASK)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as temp:
        temp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode())
