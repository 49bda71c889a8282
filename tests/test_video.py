"""Video I/O: round trips, atomic writes, force, errors, y4m streaming on stdout, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgegen.errors import UserError
from edgegen.video import (
    check_writable,
    open_writer,
    read_video,
    rgb_to_ycbcr,
    to_uint8,
    write_video,
    ycbcr_to_rgb,
)

REPO = Path(__file__).resolve().parents[1]
FILE_NAMES = ["clip.mp4", "clip.gif", "clip.y4m", "frames"]


def moving_shapes(frames: int = 24, height: int = 64, width: int = 64) -> np.ndarray:
    """A saturated red disc and a green square crossing a dark blue field: hard edges, few colours."""
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.empty((frames, height, width, 3), np.uint8)
    for f in range(frames):
        out[f] = (20, 30, 60)
        cx, cy = 8 + f * (width - 16) / frames, height / 2 + 0.15 * height * np.sin(f / 5)
        out[f][(xx - cx) ** 2 + (yy - cy) ** 2 < (min(height, width) / 6) ** 2] = (230, 60, 40)
        square = (abs(xx - (width - 1 - cx)) < width / 10) & (abs(yy - height / 3) < height / 10)
        out[f][square] = (40, 200, 90)
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def run_script(code: str, tmp_path: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env, **kwargs
    )


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (63, 65), (1, 1), (2, 3)])
@pytest.mark.parametrize("name", FILE_NAMES)
def test_round_trip(tmp_path: Path, name: str, size: tuple[int, int]) -> None:
    frames = moving_shapes(12, *size)
    out = write_video(tmp_path / name, frames, fps=24)
    assert out == tmp_path / name
    video = read_video(out)
    assert video.frames.dtype == np.uint8 and video.frames.shape == frames.shape
    assert video.fps == pytest.approx(24, abs=1e-3)
    diff = np.abs(video.frames.astype(int) - frames).max()
    if name == "clip.mp4":
        assert psnr(frames, video.frames) >= 40  # measured ~49 dB at CRF 12
    elif name == "clip.y4m":
        assert diff <= 1  # 8-bit 4:4:4 Y'CbCr rounding only
    else:
        assert diff == 0  # PNG lossless; GIF exact for clips of <= 256 colours per frame
    assert listing(tmp_path) == [name]  # no temp left behind


def test_mp4_psnr_on_64x64_clip(tmp_path: Path) -> None:
    frames = moving_shapes(48)
    write_video(tmp_path / "clip.mp4", frames, fps=24)
    assert psnr(frames, read_video(tmp_path / "clip.mp4").frames) >= 40


def test_mp4_plays_at_twice_the_size_in_other_decoders(tmp_path: Path) -> None:
    import av

    frames = moving_shapes(8)
    write_video(tmp_path / "clip.mp4", frames, fps=24)
    with av.open(os.fspath(tmp_path / "clip.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        seen = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    assert seen.shape == (8, 128, 128, 3)
    assert psnr(frames.repeat(2, 1).repeat(2, 2), seen) >= 30  # swscale's own conversion, untuned


def test_y4m_is_read_by_ffmpeg(tmp_path: Path) -> None:
    import av

    frames = moving_shapes(6)
    write_video(tmp_path / "clip.y4m", frames, fps=24)
    with av.open(os.fspath(tmp_path / "clip.y4m")) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == 24
        seen = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    assert seen.shape == frames.shape
    assert psnr(frames, seen) >= 40  # ffmpeg honours C444 and XCOLORRANGE=FULL


def test_fractional_fps_and_chunked_writes(tmp_path: Path) -> None:
    frames = moving_shapes(8)
    with open_writer(tmp_path / "clip.y4m", fps=30000 / 1001) as writer:
        for chunk in frames.reshape(2, 4, 64, 64, 3):  # chunks of 4 frames, as the runtime yields
            for frame in chunk:
                writer.write(frame)
    assert writer.frames_written == 8
    assert read_video(tmp_path / "clip.y4m").fps == pytest.approx(30000 / 1001)


def test_colour_conversion_round_trips_within_one_level() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (100_000, 3), dtype=np.uint8)
    assert np.abs(ycbcr_to_rgb(rgb_to_ycbcr(rgb, True), True).astype(int) - rgb).max() <= 1
    assert np.abs(ycbcr_to_rgb(rgb_to_ycbcr(rgb, False), False).astype(int) - rgb).max() <= 2


def test_to_uint8_rounds_and_clips() -> None:
    got = to_uint8(np.array([-0.5, 0.0, 0.5, 1.0, 2.0], np.float32))
    assert got.tolist() == [0, 0, 128, 255, 255]


# --- atomicity and force ---------------------------------------------------------------------


@pytest.mark.parametrize("name", FILE_NAMES)
def test_exception_inside_with_leaves_nothing(tmp_path: Path, name: str) -> None:
    with pytest.raises(RuntimeError), open_writer(tmp_path / name, fps=24) as writer:
        for frame in moving_shapes(4):
            writer.write(frame)
        temps = [n for n in listing(tmp_path) if n.startswith(f".{name}.partial-")]
        assert len(temps) == 1, listing(tmp_path)  # the temp sits beside the target
        raise RuntimeError("generation failed")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("name", FILE_NAMES)
def test_force_keeps_the_old_file_when_the_write_fails(tmp_path: Path, name: str) -> None:
    old = moving_shapes(3)
    write_video(tmp_path / name, old, fps=24)
    with (
        pytest.raises(KeyboardInterrupt),
        open_writer(tmp_path / name, fps=24, force=True) as writer,
    ):
        writer.write(np.zeros((64, 64, 3), np.uint8))
        raise KeyboardInterrupt
    assert listing(tmp_path) == [name]
    np.testing.assert_array_equal(read_video(tmp_path / name).frames.shape, old.shape)


@pytest.mark.parametrize("name", FILE_NAMES)
def test_no_overwrite_without_force(tmp_path: Path, name: str) -> None:
    write_video(tmp_path / name, moving_shapes(2), fps=24)
    with pytest.raises(UserError, match="exists; pass --force to overwrite"):
        check_writable(tmp_path / name)
    with pytest.raises(UserError, match="exists; pass --force to overwrite"):
        open_writer(tmp_path / name, fps=24)
    check_writable(tmp_path / name, force=True)
    write_video(tmp_path / name, moving_shapes(5), fps=12, force=True)
    assert len(read_video(tmp_path / name).frames) == 5
    assert listing(tmp_path) == [name]


def test_force_does_not_replace_a_folder_of_other_files(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match="other than frame_"):
        check_writable(tmp_path / "photos", force=True)
    (tmp_path / "clip.mp4").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        check_writable(tmp_path / "clip.mp4", force=True)


def test_zero_frames_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no frames"), open_writer(tmp_path / "clip.mp4", fps=24):
        pass
    assert listing(tmp_path) == []


def test_bad_frames_are_rejected(tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match="uint8"),
        open_writer(tmp_path / "a.y4m", fps=24) as writer,
    ):
        writer.write(np.zeros((8, 8, 3), np.float32))
    with (
        pytest.raises(ValueError, match=r"\[H, W, 3\]"),
        open_writer(tmp_path / "a.y4m", fps=24) as writer,
    ):
        writer.write(np.zeros((8, 8), np.uint8))
    with (
        pytest.raises(ValueError, match="the first was"),
        open_writer(tmp_path / "a.y4m", fps=24) as writer,
    ):
        writer.write(np.zeros((8, 8, 3), np.uint8))
        writer.write(np.zeros((8, 9, 3), np.uint8))
    assert listing(tmp_path) == []


# --- path errors --------------------------------------------------------------------------------


def test_unknown_suffix_lists_the_supported_ones(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"'\.webm'.*\.mp4, \.gif, \.y4m"):
        check_writable(tmp_path / "clip.webm")


def test_folder_formats(tmp_path: Path) -> None:
    write_video(f"{tmp_path}/out.d/", moving_shapes(2), fps=24)  # trailing slash: a folder
    assert listing(tmp_path / "out.d") == ["frame_00000.png", "frame_00001.png"]


def test_format_argument_overrides_the_suffix(tmp_path: Path) -> None:
    write_video(tmp_path / "clip.bin", moving_shapes(2), fps=24, format="y4m")
    assert (tmp_path / "clip.bin").read_bytes().startswith(b"YUV4MPEG2 ")
    assert read_video(tmp_path / "clip.bin", format="y4m").frames.shape == (2, 64, 64, 3)
    with pytest.raises(UserError, match="only y4m can be streamed"):
        check_writable("-", format="mp4")
    with pytest.raises(UserError, match="name a new file or folder"):
        check_writable(".", force=True)


def test_missing_parent_and_file_as_parent(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        check_writable(tmp_path / "nope" / "clip.mp4")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        check_writable(tmp_path / "file" / "clip.mp4")


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permission bits"
)
def test_unwritable_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    try:
        with pytest.raises(UserError, match=r"cannot write .*Permission denied"):
            check_writable(folder / "clip.mp4")
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("name", ["clip.y4m", "clip.mp4", "frames"])
def test_disk_full_is_one_line_and_keeps_the_old_file(tmp_path: Path, name: str) -> None:
    """RLIMIT_FSIZE makes writes past 20 kB fail with EFBIG, the same path as ENOSPC."""
    write_video(tmp_path / name, moving_shapes(1, 8, 8), fps=24)
    before = listing(tmp_path)
    proc = run_script(
        f"""
        import resource, signal
        import numpy as np
        from edgegen.errors import UserError
        from edgegen.video import open_writer
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        frames = np.random.default_rng(0).integers(0, 256, (64, 256, 256, 3), dtype=np.uint8)
        try:
            with open_writer({name!r}, fps=24, force=True) as writer:
                for frame in frames:
                    writer.write(frame)
        except UserError as exc:
            print(exc)
            raise SystemExit(2)
    """,
        tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert out.startswith(f"cannot write {name}: ") and out.count("\n") == 1, out
    assert listing(tmp_path) == before
    assert read_video(tmp_path / name).frames.shape == (1, 8, 8, 3)


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(UserError, match="cannot read"):
        read_video(tmp_path / "bad.mp4")
    (tmp_path / "bad.y4m").write_bytes(b"P6 1 1 255\n")
    with pytest.raises(UserError, match="not a YUV4MPEG2"):
        read_video(tmp_path / "bad.y4m")


# --- streaming to stdout --------------------------------------------------------------------


def test_stdout_streams_each_frame_as_it_is_written(tmp_path: Path) -> None:
    """The child writes frame 0, then waits for us: frame 0 must already be readable in the pipe."""
    frames = moving_shapes(3, 16, 8)
    np.save(tmp_path / "frames.npy", frames)
    proc = run_script(
        """
        import sys
        import numpy as np
        from edgegen.video import open_writer
        frames = np.load("frames.npy")
        with open_writer("-", fps=24) as writer:
            for frame in frames:
                writer.write(frame)
                sys.stdin.readline()  # wait for the parent, which must already see this frame
    """,
        tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    header = proc.stdout.readline()
    assert header == b"YUV4MPEG2 W8 H16 F24:1 Ip A1:1 C444 XCOLORRANGE=FULL\n"
    received = [header]
    for _ in frames:
        received.append(proc.stdout.readline())
        assert received[-1] == b"FRAME\n"
        received.append(proc.stdout.read(3 * 16 * 8))
        proc.stdin.write(b"next\n")
        proc.stdin.flush()
    assert proc.wait(timeout=30) == 0 and proc.stdout.read() == b""
    (tmp_path / "got.y4m").write_bytes(b"".join(received))
    got = read_video(tmp_path / "got.y4m")
    assert got.fps == 24 and np.abs(got.frames.astype(int) - frames).max() <= 1


def test_stdout_refuses_a_terminal(tmp_path: Path) -> None:
    import pty

    leader, follower = pty.openpty()
    try:
        proc = run_script(
            """
            from edgegen.errors import UserError
            from edgegen.video import check_writable
            try:
                check_writable("-")
            except UserError as exc:
                raise SystemExit(str(exc))
        """,
            tmp_path,
            stdout=follower,
            stderr=subprocess.PIPE,
            text=True,
        )
        _, err = proc.communicate(timeout=30)
    finally:
        os.close(leader)
        os.close(follower)
    assert proc.returncode == 1 and "refusing to write video to a terminal" in err


def test_stdout_reader_going_away_raises_broken_pipe_quietly(tmp_path: Path) -> None:
    proc = run_script(
        """
        import sys
        import numpy as np
        from edgegen.video import open_writer
        try:
            with open_writer("-", fps=24) as writer:
                while True:
                    writer.write(np.zeros((64, 64, 3), np.uint8))
        except BrokenPipeError:
            sys.exit(141)
    """,
        tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=30) == 141
    assert proc.stderr.read() == b""  # no "Exception ignored ... BrokenPipeError" at exit


# --- SIGTERM ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["clip.mp4", "frames"])
@pytest.mark.parametrize("existing", [False, True])
def test_sigterm_mid_write_leaves_no_partial_file(
    tmp_path: Path, name: str, existing: bool
) -> None:
    if existing:
        write_video(tmp_path / name, moving_shapes(2), fps=24)
    before = listing(tmp_path)
    proc = run_script(
        f"""
        import signal, sys, time
        import numpy as np
        from edgegen.cli import _on_sigterm
        from edgegen.errors import Interrupted
        from edgegen.video import open_writer
        signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            with open_writer({name!r}, fps=24, force=True) as writer:
                for i in range(10_000):
                    writer.write(np.full((64, 64, 3), i % 256, np.uint8))
                    if i == 2:
                        print("writing", flush=True)
                    time.sleep(0.01)
        except Interrupted as exc:
            sys.exit(128 + exc.signum)
    """,
        tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "writing\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert listing(tmp_path) == before
    if existing:
        assert read_video(tmp_path / name).frames.shape == (2, 64, 64, 3)
