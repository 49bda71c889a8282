"""edgegen.files: atomic writes leave the old file or the new one, never a half or a temp."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgegen.files import atomic_path, atomic_write_text


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as temp:
        temp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_written_file_honours_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "shared.txt"
    atomic_write_text(target, "x")
    assert target.stat().st_mode & 0o044 == 0o044  # readable by others under the usual 022 umask


def test_a_writer_that_makes_0600_files_still_gives_a_readable_file(tmp_path: Path) -> None:
    import os

    new, kept = tmp_path / "new.bin", tmp_path / "kept.bin"
    kept.write_bytes(b"old")
    kept.chmod(0o640)
    for target in (new, kept):
        with atomic_path(target) as temp:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT, 0o600)  # as safetensors' writer does
            os.write(fd, b"data")
            os.close(fd)
    assert new.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert kept.stat().st_mode & 0o777 == 0o640  # an existing file keeps its mode


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_temp_left_by_a_killed_writer_is_removed_by_the_next_write(tmp_path: Path) -> None:
    import os
    import time

    target = tmp_path / "engine.bin"
    old = tmp_path / ".engine.bin.0badf00d.partial"  # what a SIGKILL mid-write leaves
    young = tmp_path / ".engine.bin.12345678.partial"  # a writer that may still be at work
    other = tmp_path / ".other.bin.0badf00d.partial"  # another target's: not this write's business
    for temp in (old, young, other):
        temp.write_bytes(b"half")
    two_hours_ago = time.time() - 7200
    for temp in (old, other):
        os.utime(temp, (two_hours_ago, two_hours_ago))
    atomic_write_text(target, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, young.name, other.name])


def test_a_temp_dir_to_build_in_has_a_plain_folder_mode(tmp_path: Path) -> None:
    from edgegen.files import temp_dir_beside

    temp = temp_dir_beside(tmp_path / "sub" / "bundle-int8")
    assert temp.parent == tmp_path / "sub" and temp.name.startswith(".bundle-int8.") and temp.name.endswith(".partial")
    assert temp.stat().st_mode & 0o777 == 0o777 & ~_umask()  # not mkdtemp's 0700


def test_a_temp_dir_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    from edgegen.errors import UserError
    from edgegen.files import temp_dir_beside

    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserError, match=r"cannot write into .*choose another --out"):
        temp_dir_beside(tmp_path / "a-file" / "bundle")
