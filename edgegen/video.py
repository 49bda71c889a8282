"""Video files in and out: mp4 (H.264), gif, a folder of PNGs, y4m; `-` is y4m on stdout.

Writers take frames one at a time (uint8 [H, W, 3]) as the generator makes them and are
atomic: they write to a hidden temp file (or folder) beside the target, `.clip.mp4.partial-<id>`,
and rename it over the target only when `close()` commits. An exception inside the `with`
(including Ctrl-C and `edgegen.errors.Interrupted` from SIGTERM) removes the temp and leaves the
target as it was, so `force=True` never loses the old file to a failed run.

Formats, chosen by suffix (or `format=`):
- `.mp4`: H.264 yuv420p through PyAV/libx264 at CRF 12. Each frame is encoded at 2x its size
  (nearest neighbour): 4:2:0 keeps one chroma sample per 2x2 pixels, which on 64x64 frames with
  saturated edges caps PSNR near 30 dB however high the bitrate; at 2x the chroma plane has the
  frame's own resolution, odd sizes become even, and players show a less tiny picture. The
  container carries `edgegen_pixel_scale=2`, and `read_video` undoes the scale. BT.601 limited
  range, tagged, converted here in numpy (swscale's chroma filter is not a 2x2 box).
- `.gif`: one adaptive 256-colour palette per frame (no dithering), loops forever; GIF delays are
  whole centiseconds, so 24 fps plays as 40/40/50 ms.
- folder (no suffix, or a trailing slash): `frame_00000.png`, ... with the fps in a PNG text chunk.
- `.y4m`: YUV4MPEG2, `C444 XCOLORRANGE=FULL`, BT.601 (JPEG) matrix. No chroma loss; the only
  loss is 8-bit rounding (each channel within 2 levels). ffmpeg, ffplay and mpv read it.
- `-`: y4m on stdout, one flush per frame, so `edgegen ... --out - | mpv -` plays while generating.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np

from edgegen.errors import UserError

log = logging.getLogger(__name__)

SUFFIXES = {".mp4": "mp4", ".gif": "gif", ".y4m": "y4m"}
FORMATS = ("mp4", "gif", "y4m", "png")
STDOUT = "-"
SUPPORTED = ".mp4, .gif, .y4m, a folder (PNG frames) or - (y4m on stdout)"
READABLE = ".mp4, .gif, .y4m or a folder of PNG frames"

MP4_CRF = 12  # 64x64 shapes: 49 dB (CRF 18: 47, CRF 0: 50); uniform noise: 37 dB
MP4_SCALE = 2
_SCALE_KEY = "edgegen_pixel_scale"
_FRAME_RE = re.compile(r"frame_(\d+)\.png")
_DEFAULT_FPS = 24.0  # DESIGN.md default, for PNG folders written by something else


class Video(NamedTuple):
    """What `read_video` returns; unpacks as `frames, fps = read_video(path)`."""

    frames: np.ndarray  # (F, H, W, 3) uint8
    fps: float


# ---------------------------------------------------------------------------------------------
# Format and path checks


def detect_format(path: str | Path, format: str | None = None, reading: bool = False) -> str:
    """The format for `path`: "mp4", "gif", "y4m", "png" (folder) or "stdout" (`reading`: the
    errors list what can be read, which leaves out stdout)."""
    text = os.fspath(path)
    formats = READABLE if reading else SUPPORTED
    if not text.strip():
        raise UserError(f"the video path is empty; name a file such as clip.mp4 (or use {formats})")
    if text == STDOUT:
        if format not in (None, "y4m"):
            raise UserError(
                f"only y4m can be streamed to stdout, not {format}; use --out clip.{format}"
            )
        return "stdout"
    if format is not None:
        if format not in FORMATS:
            raise UserError(f"unknown video format '{format}'; use one of {', '.join(FORMATS)}")
        return format
    suffix = Path(text).suffix.lower()
    if text.endswith(("/", os.sep)) or not suffix:
        return "png"
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    if Path(text).is_dir():  # an existing folder with a dot in its name, e.g. run.v2
        return "png"
    raise UserError(f"unknown video suffix '{suffix}' in {text}; use {formats}")


MAX_FPS = 1000.0  # any format; past this a player drops frames anyway
# GIF frame delays are whole centiseconds in 16 bits: 1 to 65535 per frame.
GIF_MAX_FPS = 100.0
GIF_MIN_FPS = 100.0 / 65535


def check_fps(path: str | Path, fps: float, format: str | None = None) -> None:
    """Fail now (one line) if `path`'s format cannot hold `fps`: outside (0, MAX_FPS], or a GIF past its delays."""
    if not 0 < fps <= MAX_FPS:  # NaN fails too
        raise UserError(f"--fps {fps:g} is out of range; use a value in (0, {MAX_FPS:g}]")
    if detect_format(path, format) != "gif":
        return
    if fps > GIF_MAX_FPS:
        raise UserError(f"--fps {fps:g}: GIF holds at most {GIF_MAX_FPS:g} fps (frame delays are whole 1/100 s); use --fps {GIF_MAX_FPS:g} or less, or write .mp4")
    if fps < GIF_MIN_FPS:
        raise UserError(f"--fps {fps:g}: GIF holds at least {GIF_MIN_FPS:.4f} fps (a frame lasts at most 655.35 s); raise --fps or write .mp4")


def check_writable(path: str | Path, force: bool = False, format: str | None = None) -> None:
    """Fail now, before any generating, if `path` cannot be written (UserError, one line).

    Checks the format, an existing target (needs `force`), the parent folder, and creates and
    removes a probe file there (permission bits alone lie for root, ACLs, read-only mounts).
    """
    kind = detect_format(path, format)
    if kind == "stdout":
        _check_stdout()
        return
    target = Path(path)
    try:
        _check_target(target, kind, force)
    except OSError as exc:  # e.g. a folder on the way that this user may not enter
        raise _write_error(target, exc) from exc
    _remove_temp(_make_temp(target, kind))


def _check_stdout() -> None:
    with contextlib.suppress(AttributeError, ValueError):
        if sys.stdout.isatty():
            raise UserError(
                "refusing to write video to a terminal; pipe it into a player: --out - | mpv -"
            )


def _check_target(target: Path, kind: str, force: bool) -> None:
    if target.name in ("", ".", ".."):
        raise UserError(f"cannot write video to {target}; name a new file or folder")
    if target.exists() or target.is_symlink():
        if not force:
            raise UserError(f"{target} exists; pass --force to overwrite")
        if kind == "png" and not target.is_dir():
            raise UserError(
                f"{target} is a file, not a folder of frames; remove it or choose another name"
            )
        if kind != "png" and target.is_dir():
            raise UserError(f"{target} is a folder; remove it or choose another file name")
        if kind == "png" and any(not _is_frame_file(p) for p in target.iterdir()):
            raise UserError(
                f"{target} holds files other than frame_*.png; not replacing it, choose another name"
            )
    parent = target.parent
    if not parent.exists():
        raise UserError(f"cannot write {target}: folder {parent} does not exist; create it first")
    if not parent.is_dir():
        raise UserError(f"cannot write {target}: {parent} is not a folder")


def _is_frame_file(p: Path) -> bool:
    return p.is_file() and _FRAME_RE.fullmatch(p.name) is not None


def _make_temp(target: Path, kind: str) -> Path:
    """Create the hidden temp file/folder beside `target` (same filesystem, so rename is atomic)."""
    temp = target.with_name(f".{target.name}.partial-{os.urandom(4).hex()}")
    try:
        if kind == "png":
            temp.mkdir()
        else:
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except OSError as exc:
        raise _write_error(target, exc) from exc
    return temp


def _remove_temp(temp: Path) -> None:
    if temp.is_dir() and not temp.is_symlink():
        shutil.rmtree(temp, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


_FULL_HINTS = {
    errno.ENOSPC: "; free some space or choose another disk",
    errno.EDQUOT: "; free some space or choose another disk",
    errno.EFBIG: "; the file is over this system's size limit (ulimit -f): write fewer frames or to another disk",
}


def _write_error(target: Path | str, exc: OSError) -> UserError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = _FULL_HINTS.get(exc.errno, "")
    return UserError(f"cannot write {target}: {reason}{hint}".replace("\n", " "))


# ---------------------------------------------------------------------------------------------
# Colour conversion (BT.601), numpy so mp4 and y4m control chroma exactly

_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB
_RGB_TO_YCC = np.array(
    [
        [_KR, _KG, _KB],
        [-_KR / (2 * (1 - _KB)), -_KG / (2 * (1 - _KB)), 0.5],
        [0.5, -_KG / (2 * (1 - _KR)), -_KB / (2 * (1 - _KR))],
    ]
)
_YCC_TO_RGB = np.array(
    [
        [1.0, 0.0, 2 * (1 - _KR)],
        [1.0, -2 * _KB * (1 - _KB) / _KG, -2 * _KR * (1 - _KR) / _KG],
        [1.0, 2 * (1 - _KB), 0.0],
    ]
)
_FULL = (np.ones(3), np.array([0.0, 128.0, 128.0]))
_LIMITED = (np.array([219.0, 224.0, 224.0]) / 255.0, np.array([16.0, 128.0, 128.0]))


def rgb_to_ycbcr(rgb: np.ndarray, full_range: bool) -> np.ndarray:
    """uint8 RGB (..., 3) -> uint8 Y'CbCr (..., 3), BT.601, full (JPEG) or limited (TV) range."""
    scale, offset = _FULL if full_range else _LIMITED
    m = (_RGB_TO_YCC * scale[:, None]).astype(np.float32)
    ycc = rgb.astype(np.float32) @ m.T + offset.astype(np.float32)
    return np.clip(np.rint(ycc), 0, 255).astype(np.uint8)


def ycbcr_to_rgb(ycc: np.ndarray, full_range: bool) -> np.ndarray:
    """Inverse of `rgb_to_ycbcr`; takes uint8 or float Y'CbCr (..., 3)."""
    scale, offset = _FULL if full_range else _LIMITED
    m = (_YCC_TO_RGB / scale[None, :]).astype(np.float32)
    rgb = (ycc.astype(np.float32) - offset.astype(np.float32)) @ m.T
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] (the VAE decoder's output) -> uint8, rounded and clipped."""
    return np.clip(np.rint(np.asarray(frames, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Writers


class VideoWriter:
    """Writes frames as they arrive; `close()` commits (rename temp -> target), `abort()` discards.

    Use as a context manager: leaving the block normally commits, any exception aborts.
    OSErrors while writing (disk full, I/O error) become a one-line UserError with the temp removed.
    """

    def __init__(self, target: Path | str, fps: float, temp: Path | None, force: bool) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(target)  # the final path (Path("-") for stdout)
        self.fps = float(fps)
        self.frames_written = 0
        self._temp = temp
        self._force = force
        self._size: tuple[int, int] | None = None  # (H, W) of the first frame
        self._state = "open"

    # -- public API --------------------------------------------------------------------------

    def write(self, frame: np.ndarray) -> None:
        """Append one uint8 [H, W, 3] frame; every frame must have the first frame's size."""
        assert self._state == "open", f"write() on a {self._state} writer"
        frame = self._validate(frame)
        with self._abort_on_error():
            if self._size is None:
                self._size = frame.shape[:2]
                self._start(*self._size)
            self._write(frame)
        self.frames_written += 1

    def close(self) -> None:
        """Finish the file and move it into place. Zero frames -> UserError, nothing written."""
        if self._state != "open":
            return
        if self.frames_written == 0:
            self.abort()
            raise UserError(f"no frames to write to {self.path}; nothing was written")
        with self._abort_on_error():
            self._finish()
            self._commit()
        self._state = "closed"
        log.debug("wrote %d frames to %s", self.frames_written, self.path)

    def abort(self) -> None:
        """Stop and remove the temp file/folder; the target is left as it was. Idempotent."""
        if self._state != "open":
            return
        self._state = "aborted"
        try:
            self._discard()
        finally:
            if self._temp is not None:
                _remove_temp(self._temp)

    @contextlib.contextmanager
    def _abort_on_error(self) -> Iterator[None]:
        """Any failure kills the writer; OSErrors (disk full, ...) become one-line UserErrors."""
        try:
            yield
        except BaseException as exc:
            self.abort()
            # A closed stdout pipe is not an error to report: the CLI exits quietly (141).
            if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
                raise _write_error(self.path, exc) from exc
            raise

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- for subclasses ----------------------------------------------------------------------

    def _start(self, height: int, width: int) -> None:
        """Called once with the first frame's size, before its `_write`."""

    def _write(self, frame: np.ndarray) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        """Flush and close the temp file (success path)."""

    def _discard(self) -> None:
        """Release handles without caring about a valid file (failure path); must not raise."""

    def _commit(self) -> None:
        assert self._temp is not None
        if not self._force and (self.path.exists() or self.path.is_symlink()):
            raise UserError(f"{self.path} exists; pass --force to overwrite")
        os.replace(self._temp, self.path)

    def _validate(self, frame: np.ndarray) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(
                f"a frame must be uint8 [H, W, 3], got {frame.dtype} {list(frame.shape)}"
            )
        if self._size is not None and frame.shape[:2] != self._size:
            raise ValueError(
                f"frame {self.frames_written} is {frame.shape[:2]}, the first was {self._size}"
            )
        return np.ascontiguousarray(frame)


class _Y4mWriter(VideoWriter):
    """YUV4MPEG2 4:4:4 full range; the header goes out with the first frame."""

    def __init__(
        self, target: Path | str, fps: float, temp: Path | None, force: bool, stream: IO[bytes]
    ) -> None:
        super().__init__(target, fps, temp, force)
        self._stream = stream

    def _start(self, height: int, width: int) -> None:
        rate = _rate(self.fps)
        header = f"YUV4MPEG2 W{width} H{height} F{rate.numerator}:{rate.denominator} Ip A1:1 C444 XCOLORRANGE=FULL\n"
        self._stream.write(header.encode("ascii"))

    def _write(self, frame: np.ndarray) -> None:
        planes = rgb_to_ycbcr(frame, full_range=True).transpose(2, 0, 1)  # (3, H, W): Y, Cb, Cr
        self._stream.write(b"FRAME\n")
        self._stream.write(np.ascontiguousarray(planes).data)
        self._stream.flush()  # a player on the other end of a pipe sees each frame at once

    def _finish(self) -> None:
        self._stream.flush()
        if self._temp is not None:
            self._stream.close()

    def _discard(self) -> None:
        if self._temp is not None:
            with contextlib.suppress(OSError):
                self._stream.close()


class _StdoutWriter(_Y4mWriter):
    """y4m on stdout: nothing to rename; a pipe closed by the reader raises BrokenPipeError."""

    def _write(self, frame: np.ndarray) -> None:
        try:
            super()._write(frame)
        except BrokenPipeError:
            # Point stdout at devnull so the interpreter's final flush does not complain again.
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            raise

    def _commit(self) -> None:
        pass


class _AvWriter(VideoWriter):
    """mp4 / gif through PyAV; the stream is set up when the first frame gives the size."""

    def __init__(self, target: Path, fps: float, temp: Path, force: bool, kind: str) -> None:
        super().__init__(target, fps, temp, force)
        self._kind = kind
        self._container: Any = None
        self._stream: Any = None

    def _start(self, height: int, width: int) -> None:
        import av

        rate = _rate(self.fps)
        if self._kind == "mp4":
            container = av.open(
                os.fspath(self._temp),
                "w",
                format="mp4",
                options={"movflags": "+faststart+use_metadata_tags"},
            )
            container.metadata[_SCALE_KEY] = str(MP4_SCALE)
            stream = container.add_stream(_h264_encoder(), rate=rate)
            stream.width, stream.height = width * MP4_SCALE, height * MP4_SCALE
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(MP4_CRF), "preset": "medium"}
            cc = stream.codec_context
            cc.colorspace = cc.color_primaries = cc.color_trc = 6  # SMPTE 170M = BT.601 (525)
            cc.color_range = 1  # limited (MPEG/TV)
        else:
            container = av.open(
                os.fspath(self._temp), "w", format="gif"
            )  # muxer loops forever by default
            stream = container.add_stream("gif", rate=rate)
            stream.width, stream.height = width, height
            stream.pix_fmt = "pal8"
        self._container, self._stream = container, stream

    def _write(self, frame: np.ndarray) -> None:
        av_frame = _mp4_frame(frame) if self._kind == "mp4" else _gif_frame(frame)
        av_frame.pts = self.frames_written
        self._container.mux(self._stream.encode(av_frame))

    def _finish(self) -> None:
        self._container.mux(self._stream.encode(None))
        container, self._container = self._container, None
        container.close()

    def _discard(self) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):  # the file is deleted next; any state will do
                self._container.close()
            self._container = None


class _PngWriter(VideoWriter):
    """A folder of frame_00000.png, ...; the temp folder is renamed into place at commit."""

    def _start(self, height: int, width: int) -> None:
        from PIL.PngImagePlugin import PngInfo

        self._info = PngInfo()
        self._info.add_text("fps", repr(self.fps))  # read back by _read_png_folder

    def _write(self, frame: np.ndarray) -> None:
        from PIL import Image

        assert self._temp is not None
        name = f"frame_{self.frames_written:05d}.png"
        Image.fromarray(frame).save(self._temp / name, pnginfo=self._info)

    def _commit(self) -> None:
        target = self.path
        assert self._temp is not None
        if not target.exists():
            os.rename(self._temp, target)
            return
        if not self._force:
            raise UserError(f"{target} exists; pass --force to overwrite")
        # A folder cannot be replaced in one rename: move the old one aside, then swap.
        old = target.with_name(f".{target.name}.old-{os.urandom(4).hex()}")
        os.rename(target, old)
        try:
            os.rename(self._temp, target)
        except BaseException:
            os.rename(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001 * 1000)


def _h264_encoder() -> str:
    import av

    if "libx264" in av.codecs_available:
        return "libx264"
    raise UserError(
        "this PyAV build has no libx264 encoder; write .y4m or .gif, or install the PyAV wheel from PyPI"
    )


def _mp4_frame(frame: np.ndarray) -> Any:
    """uint8 RGB (H, W, 3) -> yuv420p VideoFrame at 2x: chroma (H, W), luma (2H, 2W) nearest."""
    import av

    ycc = rgb_to_ycbcr(frame, full_range=False)  # (H, W, 3)
    luma = ycc[..., 0].repeat(MP4_SCALE, 0).repeat(MP4_SCALE, 1)  # (2H, 2W)
    planes = np.concatenate([luma.ravel(), ycc[..., 1].ravel(), ycc[..., 2].ravel()])
    packed = planes.reshape(-1, luma.shape[1])  # PyAV's yuv420p layout: (2H * 3/2, 2W)
    return av.VideoFrame.from_ndarray(packed, format="yuv420p")


def _gif_frame(frame: np.ndarray) -> Any:
    """uint8 RGB -> pal8 VideoFrame with this frame's own 256-colour palette (exact if <= 256)."""
    import av
    from PIL import Image

    image = Image.fromarray(frame).quantize(256, dither=Image.Dither.NONE)
    rgb = np.zeros((256, 3), np.uint8)
    palette = np.asarray(image.getpalette() or [], np.uint8).reshape(-1, 3)[:256]
    rgb[: len(palette)] = palette
    argb = np.concatenate([np.full((256, 1), 255, np.uint8), rgb], axis=1)  # opaque
    return av.VideoFrame.from_ndarray((np.asarray(image), argb), format="pal8")


def open_writer(
    path: str | Path, fps: float, force: bool = False, format: str | None = None
) -> VideoWriter:
    """A streaming, atomic writer for `path`; the format comes from the suffix unless `format` is given.

    `.mp4`, `.gif`, `.y4m`; a folder (no suffix or trailing slash) gets PNG frames; "-" streams
    y4m to stdout. An existing target needs `force=True` and is replaced only at commit.
    """
    kind = detect_format(path, format)
    check_fps(path, fps, format)
    if kind == "stdout":
        _check_stdout()
        return _StdoutWriter(STDOUT, fps, None, force, sys.stdout.buffer)
    target = Path(path)
    _check_target(target, kind, force)
    temp = _make_temp(target, kind)
    try:
        if kind == "png":
            return _PngWriter(target, fps, temp, force)
        if kind == "y4m":
            return _Y4mWriter(target, fps, temp, force, open(temp, "wb"))  # closed by the writer
        return _AvWriter(target, fps, temp, force, kind)
    except BaseException:
        _remove_temp(temp)
        raise


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float,
    force: bool = False,
    format: str | None = None,
) -> Path:
    """Write all `frames` (an array [F, H, W, 3] or any iterable of [H, W, 3]) atomically; returns the path."""
    with open_writer(path, fps, force=force, format=format) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.path


# ---------------------------------------------------------------------------------------------
# Readers


def read_video(path: str | Path, format: str | None = None) -> Video:
    """Read any format this module writes -> `Video(frames uint8 [F, H, W, 3], fps)`.

    mp4 files written here come back at their original size (the 2x encode is undone). PNG
    folders without an fps text chunk report 24 fps (the project default).
    """
    kind = detect_format(path, format, reading=True)
    if kind == "stdout":
        raise UserError("reading video from stdin is not supported; save it to a .y4m file first")
    target = Path(path)
    try:
        exists = target.exists()
    except OSError as exc:  # e.g. a folder on the way that this user may not enter
        raise UserError(f"cannot read {target}: {exc.strerror or exc}; check its permissions") from exc
    if not exists:
        raise UserError(f"{target} does not exist; check the path")
    try:
        reader = {"mp4": _read_av, "gif": _read_gif, "y4m": _read_y4m, "png": _read_png_folder}[
            kind
        ]
        video = reader(target)
    except UserError:
        raise
    except Exception as exc:  # corrupt or foreign files: PyAV/Pillow raise many kinds
        raise UserError(f"cannot read {target}: {exc}".replace("\n", " ")) from exc
    if len(video.frames) == 0:
        raise UserError(f"{target} holds no frames")
    return video


def _read_av(path: Path) -> Video:
    import av

    with av.open(os.fspath(path)) as container:
        stream = container.streams.video[0]
        scale = int(container.metadata.get(_SCALE_KEY, "1"))
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        frames = [
            _unscale(f, scale) if scale > 1 else f.to_ndarray(format="rgb24")
            for f in container.decode(stream)
        ]
    return Video(
        np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8), float(rate or 0.0)
    )


def _unscale(av_frame: Any, scale: int) -> np.ndarray:
    """Invert `_mp4_frame`: average each scale x scale block of luma, keep chroma as it is."""
    assert av_frame.format.name == "yuv420p" and scale == 2, (av_frame.format.name, scale)
    h2, w2 = av_frame.height, av_frame.width
    h, w = h2 // scale, w2 // scale
    flat = av_frame.to_ndarray().ravel()  # (2H * 3/2, 2W) packed planes
    luma = flat[: h2 * w2].reshape(h, scale, w, scale).astype(np.float32).mean(axis=(1, 3))
    cb = flat[h2 * w2 : h2 * w2 + h * w].reshape(h, w)
    cr = flat[h2 * w2 + h * w : h2 * w2 + 2 * h * w].reshape(h, w)
    return ycbcr_to_rgb(np.stack([luma, cb, cr], axis=-1), full_range=False)


def _read_gif(path: Path) -> Video:
    from PIL import Image, ImageSequence

    with Image.open(path) as image:
        frames, durations = [], []
        for frame in ImageSequence.Iterator(image):
            frames.append(np.asarray(frame.convert("RGB")))
            durations.append(frame.info.get("duration", 0) or 100)  # 0 plays as 100 ms in browsers
    fps = round(1000.0 * len(frames) / sum(durations), 3)
    return Video(np.stack(frames), fps)


def _read_png_folder(path: Path) -> Video:
    from PIL import Image

    files = sorted(
        (int(m.group(1)), p) for p in path.iterdir() if (m := _FRAME_RE.fullmatch(p.name))
    )
    if not files:
        raise UserError(f"{path} holds no frame_*.png files")
    frames, fps = [], _DEFAULT_FPS
    for i, (_, file) in enumerate(files):
        with Image.open(file) as image:
            if i == 0 and "fps" in image.info:
                fps = float(image.info["fps"])
            frames.append(np.asarray(image.convert("RGB")))
    if len({f.shape for f in frames}) > 1:
        raise UserError(f"the frames in {path} differ in size")
    return Video(np.stack(frames), fps)


def _read_y4m(path: Path) -> Video:
    with open(path, "rb") as f:
        data = f.read()
    end = data.find(b"\n")
    header = data[:end].split() if end >= 0 else []
    if not header or header[0] != b"YUV4MPEG2":
        raise UserError(f"{path} is not a YUV4MPEG2 file (bad magic)")
    params = {t[:1].decode(): t[1:].decode() for t in header[1:]}
    width, height = int(params["W"]), int(params["H"])
    num, _, den = params.get("F", "25:1").partition(":")
    fps = int(num) / int(den or 1)
    chroma = params.get("C", "420jpeg")
    full = any(t == b"XCOLORRANGE=FULL" for t in header)
    if chroma == "444":
        cw, ch = width, height
    elif chroma.startswith("420"):
        cw, ch = (width + 1) // 2, (height + 1) // 2
    elif chroma == "mono":
        cw = ch = 0
    else:
        raise UserError(
            f"{path}: y4m chroma 'C{chroma}' is not supported; use C444, C420* or Cmono"
        )
    luma_size, chroma_size = width * height, cw * ch
    frames, pos = [], end + 1
    while pos < len(data):
        line_end = data.find(b"\n", pos)
        if not data.startswith(b"FRAME", pos) or line_end < 0:
            raise UserError(f"{path}: broken y4m frame header at byte {pos}")
        pos = line_end + 1
        size = luma_size + 2 * chroma_size
        if pos + size > len(data):
            raise UserError(f"{path}: y4m file ends inside frame {len(frames)}")
        buf = np.frombuffer(data, np.uint8, size, pos)
        pos += size
        y = buf[:luma_size].reshape(height, width)
        if chroma == "mono":
            cb = cr = np.full((height, width), 128, np.uint8)
        else:
            cb = _upsample(buf[luma_size : luma_size + chroma_size].reshape(ch, cw), height, width)
            cr = _upsample(buf[luma_size + chroma_size :].reshape(ch, cw), height, width)
        frames.append(ycbcr_to_rgb(np.stack([y, cb, cr], axis=-1), full_range=full))
    return Video(np.stack(frames) if frames else np.zeros((0, height, width, 3), np.uint8), fps)


def _upsample(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour chroma upsampling to (height, width); identity for 4:4:4."""
    if plane.shape == (height, width):
        return plane
    return plane.repeat(2, 0).repeat(2, 1)[:height, :width]
