"""Timestep-aware calibration data: the real inputs each component sees while sampling.

The fp32 bundle is run through the runtime's own streaming loop (`Generator.stream`) with every
session wrapped in a recorder, so the captured feeds are exactly what a quantized component will
be fed: every denoising step and the commit pass of every chunk, with the rolling KV cache filling
up and then rolling, and the VAE decoder's carried state. No loop is re-implemented here.

Captures are cached as `.npz` files keyed by everything that determines them (bundle digest and
fp32 file hashes, prompts, seeds, steps, frames), so a second calibration reuses them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgegen.bundle import Bundle
from edgegen.errors import UserError
from edgegen.files import atomic_path

log = logging.getLogger(__name__)

CAPTURE_VERSION = 2  # bump when what is recorded changes (2: the denoiser split into context/denoiser/commit)

Feeds = dict[str, np.ndarray]
Captured = dict[str, list[Feeds]]  # component -> one feed dict per call, in call order


@dataclass(frozen=True)
class CapturePlan:
    """What to run: one stream per (prompt, seed, steps) triple, `frames` frames each."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: tuple[int, ...]
    frames: int

    def __post_init__(self) -> None:
        assert len(self.prompts) == len(self.seeds) == len(self.steps)

    def key(self, bundle: Bundle) -> str:
        """sha256 over the bundle's identity (manifest digest + fp32 files) and the plan."""
        fp32 = bundle.components["fp32"]
        files = {name: bundle.file_sha256(entry.file) for name, entry in sorted(fp32.items())}
        blob = json.dumps(
            {"v": CAPTURE_VERSION, "bundle": bundle.digest, "files": files, **dataclasses.asdict(self)},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()


def plan(prompts: Sequence[str], seed: int, steps: Sequence[int], frames: int) -> CapturePlan:
    """Stream i uses seed `seed + i` and step count `steps[i % len(steps)]` (every schedule covered)."""
    return CapturePlan(
        prompts=tuple(prompts),
        seeds=tuple(seed + i for i in range(len(prompts))),
        steps=tuple(steps[i % len(steps)] for i in range(len(prompts))),
        frames=frames,
    )


class RecordingSession:
    """Wraps a runtime Session and keeps a copy of every feed (the loop reuses its buffers)."""

    def __init__(self, inner: object, sink: list[Feeds]) -> None:
        self._inner = inner
        self._sink = sink

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._sink.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self._inner.run(feeds)  # type: ignore[attr-defined]


def run_capture(bundle: Bundle, capture_plan: CapturePlan, backend: str = "ort-cpu") -> Captured:
    """Run the fp32 bundle through the streaming loop and record every component's feeds."""
    from edgegen.runtime.generator import Generator

    gen = Generator.load(bundle, backend=backend, precision="fp32")
    captured: Captured = {name: [] for name in gen.sessions}
    recording = {name: RecordingSession(session, captured[name]) for name, session in gen.sessions.items()}
    gen = dataclasses.replace(gen, sessions=recording)
    for prompt, seed, steps in zip(capture_plan.prompts, capture_plan.seeds, capture_plan.steps, strict=True):
        for _ in gen.stream(prompt, seed=seed, frames=capture_plan.frames, steps=steps):
            pass
    log.info("captured %s", ", ".join(f"{len(v)} {k} calls" for k, v in captured.items()))
    return captured


def default_cache_dir() -> Path:
    root = os.environ.get("EDGEGEN_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "edgegen")
    return Path(root) / "calibration"


def capture(bundle: Bundle, capture_plan: CapturePlan, cache_dir: Path | None = None) -> tuple[Captured, str, bool]:
    """(captured feeds, cache key, reused?): loads the cached capture for this bundle and plan, or
    runs it and saves it (atomically) under `cache_dir`."""
    key = capture_plan.key(bundle)
    cap = _cache_cap()  # a bad setting fails now, not after the capture
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    path = cache_dir / f"capture-{key[:32]}.npz"
    if path.is_file():
        try:
            data = load_npz(path)
            os.utime(path)  # recently used: the last to be pruned
            log.info("calibration inputs: reusing %s", path)
            return data, key, True
        except (OSError, ValueError, KeyError) as exc:
            log.warning("calibration cache %s is unreadable (%s); capturing again", path, exc)
    data = run_capture(bundle, capture_plan)
    save_npz(path, data, key)
    log.info("calibration inputs: captured and cached at %s", path)
    prune_cache(cache_dir, keep=path, max_bytes=cap)
    return data, key, False


CACHE_MAX_BYTES = 2 * 1024**3  # captures of a few bundles; EDGEGEN_CALIBRATION_CACHE_GB overrides


def _cache_cap() -> int:
    text = os.environ.get("EDGEGEN_CALIBRATION_CACHE_GB")
    if text is None:
        return CACHE_MAX_BYTES
    try:
        gb = float(text)
    except ValueError:
        gb = -1.0
    if not gb >= 0:
        raise UserError(f"EDGEGEN_CALIBRATION_CACHE_GB={text!r} is not a size in GB; set a number such as 2, or unset it")
    return int(gb * 1024**3)


def prune_cache(cache_dir: Path, keep: Path, max_bytes: int | None = None) -> list[Path]:
    """Delete the least recently used captures until the cache holds at most `max_bytes`
    (never `keep`, the one just written); returns what was deleted."""
    if max_bytes is None:
        max_bytes = _cache_cap()
    files = sorted(cache_dir.glob("capture-*.npz"), key=lambda p: p.stat().st_mtime)
    total = sum(p.stat().st_size for p in files)
    removed = []
    for old in files:
        if total <= max_bytes:
            break
        if old == keep:
            continue
        total -= old.stat().st_size
        old.unlink(missing_ok=True)
        removed.append(old)
    if removed:
        log.info("calibration cache: removed %d least recently used capture(s) to stay under %.1f GB", len(removed), max_bytes / 1024**3)
    return removed


def save_npz(path: Path, data: Captured, key: str) -> None:
    """One array per (component, input) stacked along the batch axis, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"__key__": np.array(key)}
    for comp, feeds in data.items():
        if not feeds:
            continue
        for name in feeds[0]:
            arrays[f"{comp}/{name}"] = np.concatenate([f[name] for f in feeds], axis=0)
        arrays[f"{comp}/__calls__"] = np.array(len(feeds))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_npz(path: Path) -> Captured:
    with np.load(path) as npz:
        comps: dict[str, dict[str, np.ndarray]] = {}
        for name in npz.files:
            if name == "__key__":
                continue
            comp, _, tensor = name.partition("/")
            comps.setdefault(comp, {})[tensor] = npz[name]
    data: Captured = {}
    for comp, tensors in comps.items():
        calls = int(tensors.pop("__calls__"))
        data[comp] = [{k: v[i : i + 1] for k, v in tensors.items()} for i in range(calls)]
    return data


def data_sha256(feeds: Sequence[Feeds]) -> str:
    """A hash of exactly the calibration inputs used (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for feed in feeds:
        for name in sorted(feed):
            arr = np.ascontiguousarray(feed[name])
            digest.update(f"{name}|{arr.dtype}|{arr.shape}|".encode())
            digest.update(arr.tobytes())
    return digest.hexdigest()


def subsample(feeds: Sequence[Feeds], n: int) -> list[Feeds]:
    """`n` feeds spread evenly over the calls (so every step, chunk and cache fill is represented)."""
    if len(feeds) <= n:
        return list(feeds)
    index = np.unique(np.linspace(0, len(feeds) - 1, n).round().astype(int))
    return [feeds[i] for i in index]
