"""The procedural renderer: a `Scene` and a seed become frames, deterministically.

Geometry is in frame units (the frame is the unit square, y down), so any size renders the same
picture. Shapes are signed distance functions; coverage of a pixel is `clip(0.5 - sdf_px, 0, 1)`
(analytic anti-aliasing, one pixel wide). Everything is vectorised over frames.

Motion depends only on time (24 fps), never on the clip length, so a clip of N frames is exactly
the first N frames of any longer clip: a streaming model sees one consistent world. A steady mover
goes at `SPEED` and then eases out exponentially as it nears the far edge, so it never leaves the
frame however long the clip (in a 10 s clip it mostly creeps along the edge). Bouncing (vertical,
like a ball on a floor) and rotating are periodic; growing / shrinking approach a limit.

All sizes have equal area across shapes (a small star covers as many pixels as a small circle), so
size is "how much of the frame the object covers" whatever its shape.

Two objects get a placement (from 256 seeded candidates) that keeps them apart for the first 2 s
when the geometry allows; otherwise they start apart and touch as briefly as possible.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from edgegen.errors import UserError
from edgegen.world.scene import COLOURS, MOTIONS, SIZES, ObjectSpec, Scene

FPS = 24
MAX_SIZE = 2048

# Object colours (RGB 0-255): far apart so blur and compression cannot turn one into another.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (228, 36, 36),
    "orange": (248, 140, 20),
    "yellow": (240, 226, 40),
    "green": (40, 196, 64),
    "cyan": (36, 214, 226),
    "blue": (44, 84, 246),
    "purple": (152, 56, 226),
    "pink": (250, 104, 196),
    "white": (242, 242, 242),
}
# Backgrounds: plain dark colours; half the clips add a soft linear gradient.
BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (14, 14, 18),
    (20, 26, 46),
    (36, 36, 36),
    (18, 36, 30),
    (42, 20, 26),
    (30, 22, 44),
)
GRADIENT_MAX = 22  # largest change (0-255) across the frame of any channel

# Fraction of the frame an object covers, by size; each step doubles the area.
AREA: dict[str, float] = {"small": 0.015, "medium": 0.03, "large": 0.06}
# Circumradius / radius of the circle with the same area; star = 5 points, inner radius 0.5 R.
STAR_INNER = 0.5
CIRCUMRADIUS: dict[str, float] = {
    "circle": 1.0,
    "square": math.sqrt(math.pi / 2.0),
    "triangle": math.sqrt(4.0 * math.pi / (3.0 * math.sqrt(3.0))),
    "star": math.sqrt(math.pi / (5.0 * STAR_INNER * math.sin(math.pi / 5.0))),
}

SPEED = 0.35  # frame widths per second of a steady mover before it eases out
EASE_S = 0.8  # time constant (s) of the ease-out near the far edge
DIAGONAL_SPEED = 0.75 * SPEED  # per axis
START_SPAN = 0.3  # movers start in this fraction of their free range, away from the far edge
BOUNCE_PERIOD_S = 0.6
BOUNCE_HEIGHT = 0.3
SPIN_RAD_S = 2.0 * math.pi / 3.0  # 120°/s: 5° per frame, well below every shape's symmetry
GROW_FROM, GROW_TO, GROW_S = 0.7, 1.35, 1.0  # scale(t) approaches GROW_TO with time constant GROW_S
EDGE_MARGIN = 0.04  # keep this much of the frame between any object and the border
CANDIDATES = 256  # placements tried for two objects; the first that keeps them apart wins
# Paths are stationary or periodic after ~6 s; the first APART_S seconds are checked finely.
CHECK_TIMES = np.concatenate([np.arange(0.0, 2.0, 0.05), np.arange(2.0, 8.0, 0.25)])
APART_S = 2.0  # two objects are kept apart this long whenever the geometry allows it
MIN_GAP = 0.02
START_APART_S = 0.5  # when they cannot be kept apart, overlap in the first 0.5 s is avoided most
_BATCH = 32


def equal_area_radius(size: str) -> float:
    return math.sqrt(AREA[size] / math.pi)


def scale_at(motion: str, t: np.ndarray) -> np.ndarray:
    """Scale (1 = nominal size) of an object at times `t` (seconds)."""
    if motion == "growing":
        return GROW_TO - (GROW_TO - GROW_FROM) * np.exp(-t / GROW_S)
    if motion == "shrinking":
        return GROW_FROM + (GROW_TO - GROW_FROM) * np.exp(-t / GROW_S)
    return np.ones_like(t)


def _max_scale(motion: str) -> float:
    return GROW_TO if motion in ("growing", "shrinking") else 1.0


def _ease(distance: np.ndarray, speed: float, t: np.ndarray) -> np.ndarray:
    """Distance covered at time t: constant `speed`, then an exponential ease-out that reaches
    `distance` only asymptotically (continuous velocity). distance: [K, 1]; t: [T] -> [K, T]."""
    distance = np.maximum(distance, 1e-6)
    t1 = np.maximum(0.0, (distance - speed * EASE_S) / speed)
    tail = distance - speed * t1  # the distance left for the ease-out
    tau = tail / speed
    return np.where(t <= t1, speed * t, distance - tail * np.exp(-(t - t1) / tau))


def earliest_rest(gap: float) -> float:
    """The earliest time (s) at which any steady or diagonal mover of the world is within `gap`
    (frame units) of where it comes to rest: the shortest run (the largest object, started furthest
    along its range) at the slower diagonal and the straight speed. A judge uses it to tell when a
    still object at the far edge is what the world shows."""
    t = np.arange(0.0, 30.0, 1.0 / FPS)
    best = math.inf
    for size in AREA:
        for factor in CIRCUMRADIUS.values():
            span = max(1.0 - 2.0 * (factor * equal_area_radius(size) + EDGE_MARGIN), 0.0)
            distance = np.array([[span * (1.0 - START_SPAN)]])  # the shortest run
            for speed in (SPEED, DIAGONAL_SPEED):
                close = distance[0, 0] - _ease(distance, speed, t)[0] <= gap
                if close.any():
                    best = min(best, float(t[np.argmax(close)]))
    return best


@dataclass(frozen=True)
class Resolved:
    """An object with every attribute decided and its per-seed randomness drawn."""

    shape: str
    colour: str
    size: str
    motion: str
    phase: float  # bouncing phase
    candidates: np.ndarray  # [CANDIDATES, 4] uniforms: position (x, y), diagonal/spin signs

    @property
    def radius(self) -> float:
        return equal_area_radius(self.size)

    @property
    def extent(self) -> float:
        """Largest distance from the centre to any point of the object over all time."""
        return CIRCUMRADIUS[self.shape] * self.radius * _max_scale(self.motion)


def _resolve(obj: ObjectSpec, rng: np.random.Generator) -> Resolved:
    # The same draws happen whatever the attributes, so changing one word of a prompt changes
    # only that attribute of the clip (same background, same placement).
    colour_pick = COLOURS[int(rng.integers(len(COLOURS)))]
    size_pick = SIZES[int(rng.integers(len(SIZES)))]
    motions = [m for m in MOTIONS if not (obj.shape == "circle" and m == "rotating")]
    motion_pick = motions[int(rng.integers(len(motions)))]
    phase = float(rng.random())
    candidates = rng.random((CANDIDATES, 4))
    return Resolved(
        shape=obj.shape,
        colour=obj.colour or colour_pick,
        size=obj.size or size_pick,
        motion=obj.motion or motion_pick,
        phase=phase,
        candidates=candidates,
    )


def centre_path(obj: Resolved, t: np.ndarray, u: np.ndarray | None = None) -> np.ndarray:
    """Centres (frame units, x right, y down) at times `t` for each row of placement uniforms
    `u` [K, 4] (default: every candidate): [K, T, 2]."""
    lo = obj.extent + EDGE_MARGIN
    hi = 1.0 - lo
    span = max(hi - lo, 0.0)
    u = obj.candidates if u is None else u  # [K, 4]
    k = len(u)
    x = np.broadcast_to((lo + span * u[:, 0:1]), (k, len(t))).copy()
    y = np.broadcast_to((lo + span * u[:, 1:2]), (k, len(t))).copy()
    m = obj.motion
    if m in ("left", "right", "up", "down", "diagonal"):
        axes = []
        if m in ("left", "right"):
            axes = [(x, 0, 1.0 if m == "right" else -1.0, SPEED)]
        elif m in ("up", "down"):
            axes = [(y, 1, 1.0 if m == "down" else -1.0, SPEED)]
        else:
            signs = np.where(u[:, 2:3] < 0.5, -1.0, 1.0), np.where(u[:, 3:4] < 0.5, -1.0, 1.0)
            axes = [(x, 0, signs[0], DIAGONAL_SPEED), (y, 1, signs[1], DIAGONAL_SPEED)]
        for arr, axis, sign, speed in axes:
            start_off = START_SPAN * span * u[:, axis : axis + 1]  # [K, 1]
            start = np.where(sign > 0, lo + start_off, hi - start_off)
            arr[:] = start + sign * _ease(span - start_off, speed, t)
    elif m == "bouncing":  # a ball on an invisible floor, anywhere in the frame
        height = min(BOUNCE_HEIGHT, span)
        floor = lo + height + (span - height) * u[:, 1:2]
        y[:] = floor - height * np.abs(np.sin(math.pi * (t / BOUNCE_PERIOD_S + obj.phase)))
    return np.stack([x, y], axis=-1)


def _choose_placement(objs: list[Resolved]) -> int:
    """Index of the first candidate that keeps two objects apart: never closer than MIN_GAP in
    the first APART_S seconds and never touching later. Some scenes cannot be kept apart (two
    large objects, one moving diagonally; ~4% of sampled two-object scenes touch within 2 s):
    then the one that overlaps least in the first APART_S seconds, overlap in the first
    START_APART_S weighing 100 times more, so objects start apart and touch rather than cross."""
    if len(objs) == 1:
        return 0
    a, b = objs
    reach = (
        CIRCUMRADIUS[a.shape] * a.radius * scale_at(a.motion, CHECK_TIMES)
        + CIRCUMRADIUS[b.shape] * b.radius * scale_at(b.motion, CHECK_TIMES)
    )
    early_times = CHECK_TIMES < APART_S
    start_times = CHECK_TIMES[early_times] < START_APART_S
    fallback, best_overlap, best = None, -np.inf, 0
    for lo in range(0, CANDIDATES, _BATCH):  # most scenes are settled by the first batch
        rows = slice(lo, lo + _BATCH)
        d = centre_path(a, CHECK_TIMES, a.candidates[rows])
        d -= centre_path(b, CHECK_TIMES, b.candidates[rows])
        gap = np.hypot(d[..., 0], d[..., 1]) - reach  # [batch, T]
        early = gap[:, early_times]
        apart = early.min(axis=1) > MIN_GAP
        ok = np.flatnonzero(apart & (gap.min(axis=1) > 0.0))
        if len(ok):
            return lo + int(ok[0])
        if fallback is None and apart.any():
            fallback = lo + int(np.argmax(apart))
        # <= 0: how deep and how long they overlap; overlap at the start counts 100 times more.
        overlap = (np.minimum(early - MIN_GAP, 0.0) * np.where(start_times, 100.0, 1.0)).sum(axis=1)
        if overlap.max() > best_overlap:
            best_overlap, best = float(overlap.max()), lo + int(np.argmax(overlap))
    return fallback if fallback is not None else best


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, size, 3] float32 in 0-255: a dark colour, maybe with a soft linear gradient."""
    base = np.asarray(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], np.float32)
    gradient = rng.random() < 0.5
    angle = rng.random() * 2.0 * math.pi
    delta = rng.uniform(-GRADIENT_MAX, GRADIENT_MAX, size=3).astype(np.float32)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    if not gradient:
        return np.broadcast_to(base, (size, size, 3)).copy()
    ramp = math.cos(angle) * coords[None, :] + math.sin(angle) * coords[:, None]  # [H, W] in ±0.71
    return np.clip(base + ramp[..., None] * delta / math.sqrt(2.0), 0, 255).astype(np.float32)


_K1 = (math.cos(math.pi / 5.0), -math.sin(math.pi / 5.0))  # mirror normals of the star fold
_SQRT3 = math.sqrt(3.0)


def _sdf(shape: str, qx: np.ndarray, qy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance (pixels, < 0 inside) at offsets (qx, qy) from the centre in the shape's own
    frame, x right and y UP (so triangles and stars point at +y); r = equal-area radius.
    Exact distances (after Inigo Quilez's 2D SDFs), only arithmetic: no trig per pixel."""
    if shape == "circle":
        return np.sqrt(qx * qx + qy * qy) - r
    big = CIRCUMRADIUS[shape] * r
    if shape == "square":
        b = big * (1.0 / math.sqrt(2.0))  # half side
        ax, ay = np.abs(qx) - b, np.abs(qy) - b
        outside = np.sqrt(np.maximum(ax, 0.0) ** 2 + np.maximum(ay, 0.0) ** 2)
        return outside + np.minimum(np.maximum(ax, ay), 0.0)
    if shape == "triangle":
        half = big * (_SQRT3 / 2.0)  # half side
        px = np.abs(qx) - half
        py = qy + half / _SQRT3
        fold = px + _SQRT3 * py > 0.0
        px, py = np.where(fold, (px - _SQRT3 * py) * 0.5, px), np.where(fold, (-_SQRT3 * px - py) * 0.5, py)
        px = px - np.clip(px, -2.0 * half, 0.0)
        return -np.sqrt(px * px + py * py) * np.sign(py)
    assert shape == "star"
    k1x, k1y = _K1
    px, py = np.abs(qx), qy
    d = 2.0 * np.maximum(k1x * px + k1y * py, 0.0)
    px, py = px - d * k1x, py - d * k1y
    d = 2.0 * np.maximum(-k1x * px + k1y * py, 0.0)
    px, py = px + d * k1x, py - d * k1y
    px, py = np.abs(px), py - big
    bax, bay = STAR_INNER * -k1y, STAR_INNER * k1x - 1.0  # tip -> inner corner, per unit of `big`
    h = np.clip((px * bax + py * bay) / (bax * bax + bay * bay), 0.0, big)
    return np.sqrt((px - bax * h) ** 2 + (py - bay * h) ** 2) * np.sign(py * bax - px * bay)


def _coverage(shape: str, dx: np.ndarray, dy: np.ndarray, r_px: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage in [0, 1]. dx: [F, 1, w], dy: [F, w, 1] pixel offsets (image axes,
    y down) from the centre; r_px, angle: [F, 1, 1] (equal-area radius, rotation from the
    canonical pose)."""
    if shape == "circle":
        qx, qy = dx, dy
    else:
        c, s = np.cos(angle), np.sin(angle)
        qx = dx * c + dy * s
        qy = dx * s - dy * c  # rotated, then flipped to y up
    return np.clip(0.5 - _sdf(shape, qx, qy, r_px), 0.0, 1.0)


@dataclass(frozen=True)
class Track:
    """Where an object is in each frame: the ground truth the judge's tests check against."""

    obj: Resolved
    centre: np.ndarray  # [F, 2] frame units (x, y)
    scale: np.ndarray  # [F]
    angle: np.ndarray  # [F] radians, rotation from the canonical pose (triangles/stars point up)


def tracks(scene: Scene, seed: int, frames: int, start: int = 0) -> tuple[np.random.Generator, list[Track]]:
    """The background rng (positioned after the object draws) and each object's trajectory over
    frames `start` .. `start + frames - 1`."""
    rng = np.random.default_rng(seed)
    objs = [_resolve(o, rng) for o in scene.objects]
    k = _choose_placement(objs)
    t = np.arange(start, start + frames, dtype=np.float64) / FPS
    out = []
    for obj in objs:
        centre = centre_path(obj, t, obj.candidates[k : k + 1])[0]
        spin_sign = 1.0 if obj.candidates[k, 2] < 0.5 else -1.0
        spin = spin_sign * SPIN_RAD_S * t if obj.motion == "rotating" else np.zeros_like(t)
        out.append(Track(obj, centre, scale_at(obj.motion, t), spin))
    return rng, out


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_geometry(frames: int, size: int, seed: int = 0) -> None:
    if not _is_int(seed) or seed < 0:
        raise UserError(f"seed must be a whole number >= 0, not {seed!r}")
    if not _is_int(frames) or frames < 1:
        raise UserError(f"frames must be a positive whole number, not {frames!r}")
    if not _is_int(size) or size < 8 or size % 8 or size > MAX_SIZE:
        raise UserError(f"size must be a multiple of 8 between 8 and {MAX_SIZE}, not {size!r}")


def _windows(tr: Track, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An object's coverage in a square window around it in each frame (same width every
    frame, own offset): x0 [F], y0 [F] and alpha [F, w, w]."""
    r_px = tr.obj.radius * size * tr.scale  # [F]
    half = math.ceil(CIRCUMRADIUS[tr.obj.shape] * r_px.max() + 1.5)
    w = min(2 * half, size)
    c = tr.centre * size  # [F, 2] pixels
    x0 = np.clip(np.round(c[:, 0]).astype(np.int64) - half, 0, size - w)  # [F]
    y0 = np.clip(np.round(c[:, 1]).astype(np.int64) - half, 0, size - w)
    ramp = np.arange(w)
    dx = (x0[:, None] + ramp + 0.5 - c[:, :1]).astype(np.float32)[:, None, :]  # [F, 1, w]
    dy = (y0[:, None] + ramp + 0.5 - c[:, 1:]).astype(np.float32)[:, :, None]  # [F, w, 1]
    r = r_px.astype(np.float32)[:, None, None]
    alpha = _coverage(tr.obj.shape, dx, dy, r, tr.angle.astype(np.float32)[:, None, None])
    return x0, y0, alpha


def render(scene: Scene, seed: int, frames: int, size: int) -> np.ndarray:
    """uint8 [frames, size, size, 3]; a deterministic function of (scene, seed) and prefix-stable
    in `frames` (a longer clip starts with the shorter one)."""
    _check_geometry(frames, size, seed)
    return _render(scene, int(seed), 0, int(frames), int(size))


def render_range(scene: Scene, seed: int, start: int, stop: int, size: int) -> np.ndarray:
    """Frames `start`..`stop - 1` of `render(scene, seed, stop, size)`, without rendering the ones before."""
    _check_geometry(stop - start, size, seed)
    if not _is_int(start) or start < 0:
        raise UserError(f"start must be a whole number >= 0, not {start!r}")
    return _render(scene, int(seed), int(start), int(stop), int(size))


def render_chunks(scene: Scene, seed: int, frames: int, size: int, chunk: int = 240) -> Iterator[np.ndarray]:
    """The same frames as `render`, `chunk` at a time (uint8 [<=chunk, size, size, 3]), so a long
    clip never has to fit in memory at once."""
    _check_geometry(frames, size, seed)
    for start in range(0, frames, chunk):
        yield _render(scene, int(seed), start, min(start + chunk, frames), int(size))


def _render(scene: Scene, seed: int, start: int, stop: int, size: int) -> np.ndarray:
    frames = stop - start
    rng, object_tracks = tracks(scene, seed, frames, start)
    video = np.broadcast_to(_background(rng, size), (frames, size, size, 3)).copy()  # [F, H, W, 3]
    for tr in object_tracks:  # later objects in front
        x0, y0, alpha = _windows(tr, size)
        w = alpha.shape[-1]
        colour = np.asarray(PALETTE[tr.obj.colour], np.float32)
        for f in range(frames):  # slicing per frame beats fancy-index gather/scatter
            region = video[f, y0[f] : y0[f] + w, x0[f] : x0[f] + w]  # [w, w, 3] view
            region += alpha[f, :, :, None] * (colour - region)
    return (video + 0.5).astype(np.uint8)


def coverages(scene: Scene, seed: int, frames: int, size: int) -> list[np.ndarray]:
    """Each object's own coverage (ignoring occlusion), float32 [frames, size, size] in [0, 1]:
    the ground truth segmentation, for tests and for validating the judge."""
    _check_geometry(frames, size, seed)
    _, object_tracks = tracks(scene, int(seed), int(frames))
    out = []
    for tr in object_tracks:
        x0, y0, alpha = _windows(tr, size)
        w = alpha.shape[-1]
        full = np.zeros((frames, size, size), np.float32)
        for f in range(frames):
            full[f, y0[f] : y0[f] + w, x0[f] : x0[f] + w] = alpha[f]
        out.append(full)
    return out
