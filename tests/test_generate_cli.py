"""`edgegen generate` end to end on the tiny exported bundle: files, stdout, one-line errors."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgegen.cli import main
from edgegen.runtime.generator import Generator
from edgegen.video import read_video

PROMPT = "a red ball moving right"
ROOT = Path(__file__).resolve().parents[1]


def _run(bundle: Path, *args: str) -> int:
    return main(["generate", PROMPT, "--bundle", str(bundle), *args])


def test_generate_writes_the_clip_the_runtime_makes(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "clip.y4m"
    assert _run(tiny_bundle, "--out", str(out), "--frames", "5", "--seed", "3", "--backend", "ort-cpu") == 0
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    video = read_video(out)
    expected = Generator.load(tiny_bundle, backend="ort-cpu").generate(PROMPT, seed=3, frames=5)
    assert video.frames.shape == expected.shape and video.fps == 24
    assert np.abs(video.frames.astype(int) - expected.astype(int)).max() <= 2  # y4m: 8-bit YCbCr rounding
    assert "wrote 5 frames" in summary and "ort-cpu" in summary and "fp32" in summary and "first frame" in summary


def test_existing_output_needs_force(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "clip.gif"
    out.write_bytes(b"keep me")
    assert _run(tiny_bundle, "--out", str(out), "--frames", "2") == 2
    assert "--force" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert _run(tiny_bundle, "--out", str(out), "--frames", "6", "--force", "--fps", "12") == 0
    video = read_video(out)
    assert len(video.frames) == 6


def test_stdout_streams_y4m(tiny_bundle: Path) -> None:
    cmd = [sys.executable, "-m", "edgegen", "-q", "generate", PROMPT, "--bundle", str(tiny_bundle), "--out", "-", "--frames", "9", "--steps", "1"]
    out = subprocess.run(cmd, capture_output=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.startswith(b"YUV4MPEG2 W32 H32 F24:1")
    assert out.stdout.count(b"FRAME\n") == 9
    assert out.stderr == b""  # -q: nothing but the video


@pytest.mark.parametrize(("args", "expect"), [
    (["--frames", "0"], "1 to 100000"),
    (["--frames", "100001"], "1 to 100000"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**63)], "--seed"),
    (["--steps", "3"], "valid: 1, 2, 4"),
    (["--backend", "vulkan"], "ort-cpu"),
    (["--precision", "fp64"], "fp32, fp16, int8, fp8"),
    (["--precision", "int8"], "valid --precision: fp32, fp16"),
    (["--fps", "0"], "--fps 0 is out of range; use a value in (0, 1000]"),
    (["--fps", "1001"], "--fps 1001 is out of range; use a value in (0, 1000]"),
    (["--fps", "nan"], "--fps nan is out of range"),
])
def test_bad_flags_are_one_line_errors(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expect: str) -> None:
    out = tmp_path / "clip.mp4"
    assert _run(tiny_bundle, "--out", str(out), *args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("edgegen: error:")]
    assert len(err) == 1 and expect in err[0], err
    assert not out.exists()


def test_bad_prompt_and_bad_paths(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "a zebra moving right", "--bundle", str(tiny_bundle), "--out", str(tmp_path / "c.mp4")]) == 2
    assert "'zebra'" in capsys.readouterr().err
    assert _run(tiny_bundle, "--out", str(tmp_path / "no" / "such" / "dir" / "c.mp4")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert _run(tmp_path / "not-a-bundle", "--out", str(tmp_path / "c.mp4")) == 2
    assert "not-a-bundle" in capsys.readouterr().err



@pytest.mark.parametrize(("args", "expect"), [
    (["--fps", "150", "--out", "{tmp}/clip.gif"], "GIF holds at most 100 fps"),
    (["--fps", "0.001", "--out", "{tmp}/clip.gif"], "GIF holds at least"),
    (["--out", ""], "the video path is empty; name a file such as clip.mp4"),
    (["--bundle", "{tmp}/clip.mp4", "--out", "{tmp}/out.mp4"], "clip.mp4 is a file, not a folder; pass the bundle folder"),
    (["extra", "words", "--out", "{tmp}/out.mp4"], 'quote it and name the output with --out, e.g. edgegen generate "a red ball moving right extra words"'),
    (["{tmp}/out.mp4"], 'e.g. edgegen generate "a red ball moving right" --out {tmp}/out.mp4'),
])
def test_output_bundle_and_unquoted_prompt_errors_say_what_to_do(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expect: str
) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"a clip, not a bundle")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    bundle = [] if "--bundle" in args else ["--bundle", str(tiny_bundle)]
    assert main(["generate", PROMPT, *bundle, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgegen: error:") and "\n" not in err and expect.replace("{tmp}", str(tmp_path)) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_prompt_is_checked_before_the_bundle_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_load(*_: object, **__: object) -> None:
        raise AssertionError("the bundle was loaded before the prompt was checked")

    monkeypatch.setattr(Generator, "load", no_load)
    assert main(["generate", "a zebra moving right", "--out", str(tmp_path / "c.mp4")]) == 2
    assert "'zebra'" in capsys.readouterr().err


@pytest.mark.parametrize(("code", "words"), [(errno.ENOSPC, "no space left to write"), (errno.EACCES, "Permission denied")])
def test_a_full_disk_or_a_denied_write_is_one_line(tmp_path: Path, capsys, monkeypatch, code: int, words: str) -> None:
    import edgegen.world.renderer as renderer

    def fail(*_args, **_kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "clip.mp4"))
        yield  # a generator, as render_chunks is

    monkeypatch.setattr(renderer, "render_chunks", fail)
    capsys.readouterr()
    rc = main(["world", "render", "a red circle", "--out", str(tmp_path / "clip.mp4")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("edgegen:")]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("edgegen: error: ") and words in lines[0], err
    assert "internal error" not in err and "clip.mp4" in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_root_flags_work_after_the_subcommand(tmp_path: Path, capsys, monkeypatch) -> None:
    import logging

    from edgegen.errors import PromptError

    root = logging.getLogger()  # main() reconfigures logging: give the next tests what they had
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    assert main(["world", "render", "a red circle", "--frames", "4", "--out", str(tmp_path / "a.gif"), "-q"]) == 0
    assert "wrote" not in capsys.readouterr().err  # --quiet took effect
    with pytest.raises(PromptError):  # --debug: the traceback instead of the one line
        main(["world", "render", "a red qqq", "--out", str(tmp_path / "b.gif"), "--debug"])
