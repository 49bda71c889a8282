"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file edgegen writes for a user or a cache (manifests, ONNX, checkpoints, engines, reports,
captured calibration data) goes through `atomic_path`: the data lands in a temporary file beside
the target, is flushed to disk, and is renamed over the target only when writing succeeded. On any
failure, Ctrl-C included, the temporary file is removed and the target is untouched. Only a
SIGKILL or a power cut can leave a temporary behind; the next write of the same target removes
those older than `STALE_AFTER_S` (younger ones may belong to a writer still at work).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

STALE_AFTER_S = 3600.0
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once, at import: what a plain open() would give a new file


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` if the block succeeds."""
    target = Path(path)
    remove_stale_temps(target)
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


def remove_stale_temps(target: Path, older_than_s: float = STALE_AFTER_S) -> None:
    """Remove temporaries of `target` that a killed writer left behind (`older_than_s` or older)."""
    cutoff = time.time() - older_than_s
    for temp in target.parent.glob(f".{target.name}.*.partial"):
        with contextlib.suppress(OSError):  # gone already, or not ours to remove: leave it
            if temp.stat().st_mtime < cutoff:
                temp.unlink()
                log.debug("removed %s, left by an interrupted write", temp)


def temp_dir_beside(target: Path) -> Path:
    """A new hidden folder beside `target` to build into and rename onto it at the end; its mode
    is what a plain mkdir gives (mkdtemp's is 0700), so the finished folder is readable by others."""
    from edgegen.errors import UserError

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    except OSError as exc:
        raise UserError(f"cannot write into {target.parent} ({exc.strerror or exc}); choose another --out") from None
    temp.chmod(0o777 & ~_UMASK)
    return temp


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as temp:
        temp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode())
