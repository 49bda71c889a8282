"""The judge: does a clip show what its prompt says? Plus PSNR/SSIM, contact sheets and reports.

It knows how the world is drawn and measures each property directly, with no learned parts:

1. Background: a plane (per channel `a + b x + c y`, which covers plain and gradient backgrounds)
   fitted robustly to the temporal median, plus a per-frame offset (that offset's wobble is
   flicker).
2. Objects: pixels far from the background, split into connected components per frame (a higher
   threshold splits blurred neighbours) and linked into tracks across frames (constant-velocity
   prediction, colour and shape). Frames where two tracks share one component (objects touching
   or overlapping) count both objects but are left out of the measurements.
3. Per track, from the soft coverage `alpha = <p - bg, c - bg> / |c - bg|^2` (blur moves coverage
   around but keeps its sum, so areas survive blurry model output):
   - colour: the nearest palette colour to the object's core pixels;
   - shape: rotation-invariant angular harmonics `|sum alpha r^2 e^{-ik theta}| / sum alpha r^2`
     for k = 3, 4, 5 (triangle, square, star; all near 0 for a circle), each divided by its value
     for a sharp shape so blur only shrinks them;
   - size: the area (fraction of the frame) rescaled to the nominal (scale 1) size along the
     growth curve of the prompt's motion (the found motion's when the prompt gives none), at each
     frame's time in its stream (`first_frame`: a window cut late from a long stream holds a
     grown object), compared with the world's size classes;
   - motion: centroid trajectory (net displacement, vertical back-and-forth for bouncing), area
     trend, orientation (the phase of the shape's harmonic) for rotating.
4. Count (components per frame), consistency (no flicker, no identity swaps or jumps, no
   vanishing), and sharpness (steepest edge per unit of contrast: ~1 for the renderer's one-pixel
   anti-aliasing, ~0.2 for a Gaussian blur of sigma 2 px).

Attributes the prompt leaves unspecified are measured and reported but not judged. A rotating
circle is indistinguishable from a still one, so "still" is accepted for it. Late in a long stream
(a clip's `first_frame`) the world's motions finish: movers rest at their far edge, growth stops;
a still object there shows the prompt's motion as the world does (`settled_motions`).
`JudgeResult.passed` = the object count and every specified attribute match; consistency and
sharpness are reported beside it (the evaluation report has their rates).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.files import atomic_path
from edgegen.world.renderer import (
    AREA,
    CIRCUMRADIUS,
    EASE_S,
    EDGE_MARGIN,
    FPS,
    PALETTE,
    earliest_rest,
    scale_at,
)
from edgegen.world.scene import SIZES, ObjectSpec, Scene

log = logging.getLogger(__name__)

ATTRIBUTES = ("colour", "shape", "size", "motion")
ORDER = ("shape", "colour", "size", "motion")  # as ObjectSpec lists them

# Foreground threshold: a pixel is "object" when it is this far (RGB distance, 0-255) from the
# background; scaled down for low-contrast (e.g. blurry) clips, never below MIN_CONTRAST.
FG_FRACTION, MIN_CONTRAST, MAX_THRESHOLD = 0.3, 30.0, 70.0
MIN_AREA = 0.003  # components smaller than this fraction of the frame are noise
MAX_EXTRA = 3  # at most this many components beyond the expected count are measured per frame
DILATE_PX = 2  # coverage is measured this far around a component (anti-aliasing, blur)
# Harmonic magnitude of a sharp triangle (k=3), square (k=4), star (k=5); a circle has ~0.
HARMONIC_K = {"triangle": 3, "square": 4, "star": 5}
HARMONIC_SHARP = {3: 0.549, 4: 0.287, 5: 0.524}
# A shape is a circle when every normalised harmonic is below its threshold, else the shape
# whose harmonic is furthest above its own. Set between circles and the other shapes under
# H.264 at CRF 28 (block artefacts raise k=4 for circles to ~0.2) and Gaussian blur of 1.5 px.
SHAPE_THRESHOLD = {"triangle": 0.2, "square": 0.18, "star": 0.085}
ALPHA_FLOOR = 0.15  # coverage below this is ignored for the harmonics (noise in the ring around)
# Motion thresholds (frame units, fractions of the frame) and trends.
MOVE_MIN = 0.035  # net displacement of a mover
DIAGONAL_RATIO = 0.45  # min(|dx|, |dy|) / max(|dx|, |dy|) of a diagonal mover
BOUNCE_RANGE = 0.05  # vertical extent of a bounce
BOUNCE_BACKTRACK = 0.04  # vertical path beyond the vertical extent (= it turned back)
GROW_LOG = 0.2  # |log(area at end / area at start)| of a growing / shrinking object
ROTATE_DEG = 10.0
# Consistency and sharpness.
FLICKER_LEVELS = 6.0  # std (0-255) of the per-frame background offset
AREA_JITTER = 0.15  # median |log area ratio| between consecutive frames
PRESENT_FRACTION = 0.9  # an object must be found in this fraction of frames
SWAP_FRACTION = 0.1  # frames whose colour is far from the track's colour, or that jump
COLOUR_MIX_MIN = 0.6  # an object's core may be this diluted with background (blur) and keep its colour
SWAP_COLOUR = 60.0  # RGB distance from the track's median colour that counts as another object
JUMP = 0.2  # centroid jump (frame units) in one frame = a swap / teleport
SHARP_MIN = 0.3
COUNT_FRACTION = 0.75  # frames with the right number of objects
GROWTH_CURVES = ("still", "growing", "shrinking")  # the scale curves of `scale_at`
_MAX_CIRCUMRADIUS = max(CIRCUMRADIUS.values())
_SIZE_EDGES = tuple(math.sqrt(AREA[a] * AREA[b]) for a, b in itertools.pairwise(SIZES))
_HARMONIC_SCALE = np.array([HARMONIC_SHARP[k] for k in (3, 4, 5)])
_PALETTE_NAMES = tuple(PALETTE)
_PALETTE_RGB = np.array([PALETTE[c] for c in _PALETTE_NAMES], np.float32)


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class ObjectResult:
    """One expected object and what the judge found for it. A check is None when the prompt did
    not specify the attribute (or no object could be matched: then every check is False)."""

    expected: ObjectSpec
    found: dict[str, str | None]
    checks: dict[str, bool | None]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(v is not False for v in self.checks.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "expected": {a: getattr(self.expected, a) for a in ORDER},
            "found": self.found,
            "checks": self.checks,
            "details": self.details,
        }


@dataclass
class JudgeResult:
    """The verdict on one clip: per-object checks, count, consistency and sharpness."""

    objects: list[ObjectResult]
    count: bool
    count_found: int
    count_expected: int
    consistent: bool
    sharp: bool
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """The object count and every specified attribute of every object match."""
        return self.count and all(o.passed for o in self.objects)

    @property
    def count_frames(self) -> tuple[int, int]:
        """(frames that show the expected number of objects, all frames): `count` needs COUNT_FRACTION of them."""
        counts = self.details.get("counts", {})
        frames = self.details.get("frames", sum(counts.values()))
        return int(counts.get(str(self.count_expected), 0)), int(frames)

    def attribute(self, name: str) -> bool | None:
        """All objects' check for one attribute (None when no object specifies it)."""
        values = [o.checks[name] for o in self.objects if o.checks[name] is not None]
        return None if not values else all(values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "count": {"ok": self.count, "found": self.count_found, "expected": self.count_expected},
            "consistent": self.consistent,
            "sharp": self.sharp,
            "objects": [o.to_dict() for o in self.objects],
            "details": self.details,
        }


# ---------------------------------------------------------------------------------------------
# Background and segmentation


def _plane_basis(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([np.ones_like(x), x / w - 0.5, y / h - 0.5], axis=-1).reshape(-1, 3)


def estimate_background(video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Background image float32 [H, W, 3] (a plane per channel) and per-frame offsets [F, 3]."""
    f, h, w, _ = video.shape
    pick = np.unique(np.linspace(0, f - 1, min(f, 16)).round().astype(int))
    median = np.median(video[pick], axis=0).reshape(-1, 3)  # [H*W, 3]
    basis = _plane_basis(h, w)  # [H*W, 3]
    residual = np.linalg.norm(median - np.median(median, axis=0), axis=-1)
    keep = residual <= np.quantile(residual, 0.6)  # the background covers most of the frame
    for _ in range(3):
        coef, *_ = np.linalg.lstsq(basis[keep], median[keep], rcond=None)
        residual = np.linalg.norm(median - basis @ coef, axis=-1)
        keep = residual < max(12.0, 3.0 * float(np.median(residual[keep])))
    background = (basis @ coef).reshape(h, w, 3).astype(np.float32)
    # Per-frame offset over pixels that are background in that frame.
    diff = video - background  # [F, H, W, 3]
    near = (np.einsum("fhwc,fhwc->fhw", diff, diff) < 400.0)[..., None]  # within 20 levels
    n_near = near.sum(axis=(1, 2))  # [F, 1]
    offsets = (diff * near).sum(axis=(1, 2)) / np.maximum(n_near, 1)
    offsets[n_near[:, 0] < 0.1 * h * w] = 0.0
    return background, offsets.astype(np.float32)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean [H, W] mask: int32 labels (0 = none, 1..n) and n.

    Vectorised over runs (horizontal segments): runs in consecutive rows that touch are linked,
    and labels spread along the links by min-propagation with pointer jumping. No SciPy."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    ys, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)  # exclusive; same (row, order) as starts
    runs = len(ys)
    labels = np.zeros((h, w), np.int32)
    if runs == 0:
        return labels, 0
    # Run b in row y+1 touches run a in row y (diagonals too) when b.start <= a.end and
    # b.end >= a.start; in sorted (row, x) keys those b are one contiguous slice.
    stride = w + 2
    start_key, end_key = ys * stride + starts, ys * stride + ends
    below = (ys + 1) * stride
    lo = np.searchsorted(end_key, below + starts, side="left")
    hi = np.searchsorted(start_key, below + ends, side="right")
    count = np.maximum(hi - lo, 0)
    a = np.repeat(np.arange(runs), count)
    b = np.repeat(lo, count) + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
    root = np.arange(runs)
    while True:
        low = np.minimum(root[a], root[b])
        new = root.copy()
        np.minimum.at(new, a, low)
        np.minimum.at(new, b, low)
        new = new[new]  # pointer jumping
        if np.array_equal(new, root):
            break
        root = new
    roots, compact = np.unique(root, return_inverse=True)
    lengths = ends - starts
    run_of_pixel = np.repeat(np.arange(runs), lengths)
    x = starts[run_of_pixel] + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    labels[ys[run_of_pixel], x] = compact[run_of_pixel] + 1
    return labels, len(roots)


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(r):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


@dataclass
class Blob:
    """One component in one frame, measured."""

    frame: int
    area: float  # soft coverage, fraction of the frame
    centre: tuple[float, float]  # (x, y) frame units
    colour: np.ndarray  # RGB float of the core
    background: np.ndarray  # RGB float of the background behind the core
    colour_name: str
    colour_distance: float
    harmonics: np.ndarray  # |M_k| for k = 3, 4, 5
    phases: np.ndarray  # arg(M_k) for k = 3, 4, 5
    sharpness: float
    pixels: int  # thresholded pixel count


def _nearest_colour(rgb: np.ndarray, background: np.ndarray) -> tuple[str, float]:
    """The palette colour nearest to `rgb`, allowing it to be mixed with the background down to
    COLOUR_MIX_MIN (blur darkens small objects: a blurred white triangle looks grey): the
    distance from `rgb` to the segment background -> palette colour, over mixes in [min, 1]."""
    towards = _PALETTE_RGB - background  # [K, 3]
    mix = np.clip(((rgb - background) * towards).sum(-1) / np.maximum((towards**2).sum(-1), 1.0), COLOUR_MIX_MIN, 1.0)
    d = np.linalg.norm(background + mix[:, None] * towards - rgb, axis=-1)
    i = int(np.argmin(d))
    return _PALETTE_NAMES[i], float(d[i])


def _measure(frame: int, pixels: np.ndarray, bg: np.ndarray, contrast: np.ndarray,
             region: np.ndarray, core: np.ndarray, origin: tuple[int, int], size: tuple[int, int]) -> Blob:
    """pixels/bg: [h, w, 3] float of a window at `origin` (x0, y0) of a frame of `size` (H, W);
    region: where coverage counts; core: the component's pixels."""
    h_frame, w_frame = size
    d = contrast[core]
    top = d >= np.quantile(d, 0.6)
    colour = pixels[core][top].mean(axis=0)
    background = bg[core][top].mean(axis=0)
    name, dist = _nearest_colour(colour, background)
    delta = colour - bg  # [h, w, 3] object minus background, per pixel
    alpha = np.einsum("hwc,hwc->hw", pixels - bg, delta) / np.maximum(np.einsum("hwc,hwc->hw", delta, delta), 1.0)
    alpha = np.clip(alpha, 0.0, 1.0) * region
    total = float(alpha.sum())
    yy, xx = np.nonzero(region)
    a = alpha[yy, xx]
    cx = float((a * (xx + 0.5)).sum() / max(total, 1e-6))
    cy = float((a * (yy + 0.5)).sum() / max(total, 1e-6))
    z = (xx + 0.5 - cx) + 1j * (yy + 0.5 - cy)
    r = np.abs(z) + 1e-9
    a = np.clip((a - ALPHA_FLOOR) / (1.0 - ALPHA_FLOOR), 0.0, 1.0)
    weight = a * r * r
    unit = np.conj(z) / r
    moments = np.array([(weight * unit**k).sum() for k in (3, 4, 5)]) / max(float(weight.sum()), 1e-6)
    # Sharpness: steepest one-pixel step of the object's contrast, per unit of its contrast.
    c_obj = float(np.linalg.norm(delta[core], axis=-1).mean())
    step = max(
        float(np.abs(np.diff(contrast, axis=0)).max(initial=0.0)),
        float(np.abs(np.diff(contrast, axis=1)).max(initial=0.0)),
    )
    return Blob(
        frame=frame,
        area=total / (h_frame * w_frame),
        centre=((cx + origin[0]) / w_frame, (cy + origin[1]) / h_frame),
        colour=colour,
        background=background,
        colour_name=name,
        colour_distance=dist,
        harmonics=np.abs(moments),
        phases=np.angle(moments),
        sharpness=step / max(c_obj, 1.0),
        pixels=int(core.sum()),
    )


def _frame_blobs(i: int, video: np.ndarray, background: np.ndarray, offsets: np.ndarray,
                 contrast: np.ndarray, threshold: float, dilate: int, keep: int) -> list[Blob]:
    """Measured components of frame i at `threshold`: the `keep` largest, largest first."""
    _, h, w, _ = video.shape
    labels, n = label_components(contrast[i] > threshold)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    min_px = max(4, int(MIN_AREA * h * w))
    blobs = []
    for label in np.argsort(-sizes, kind="stable")[:keep]:
        if sizes[label] < min_px:
            break
        ys, xs = np.nonzero(labels == label)
        y0, y1 = max(ys.min() - dilate, 0), min(ys.max() + dilate + 1, h)
        x0, x1 = max(xs.min() - dilate, 0), min(xs.max() + dilate + 1, w)
        window = labels[y0:y1, x0:x1]
        core = window == label
        region = _dilate(core, dilate) & ((window == 0) | core)
        bg = background[y0:y1, x0:x1] + offsets[i]
        blobs.append(_measure(
            i, video[i, y0:y1, x0:x1], bg, contrast[i, y0:y1, x0:x1], region, core, (x0, y0), (h, w)
        ))
    blobs.sort(key=lambda b: -b.area)
    return blobs


def _blobs(video: np.ndarray, background: np.ndarray, offsets: np.ndarray, want: int) -> tuple[list[list[Blob]], float]:
    """Measured components of every frame (largest first) and the foreground threshold used.

    Where a frame has fewer than `want` components (blur or contact joins objects), higher
    thresholds are tried to split them; their cores shrink, so coverage is measured further out."""
    contrast = np.linalg.norm(video - background - offsets[:, None, None, :], axis=-1)  # [F, H, W]
    peak = float(np.quantile(contrast, 0.999))
    threshold = float(np.clip(FG_FRACTION * peak, MIN_CONTRAST, MAX_THRESHOLD))
    out: list[list[Blob]] = []
    for i in range(len(video)):
        blobs = _frame_blobs(i, video, background, offsets, contrast, threshold, DILATE_PX, want + MAX_EXTRA)
        if 0 < len(blobs) < want:
            for factor, extra in ((1.6, 1), (2.4, 2)):
                if factor * threshold > 0.8 * peak:
                    break
                split = _frame_blobs(i, video, background, offsets, contrast, factor * threshold, DILATE_PX + extra, want + MAX_EXTRA)
                if len(split) >= want:
                    blobs = split
                    break
        out.append(blobs)
    return out, threshold


# ---------------------------------------------------------------------------------------------
# Tracking


def _match_cost(history: list[Blob], blob: Blob) -> float:
    """How unlikely `blob` continues a track: distance from the constant-velocity prediction,
    plus colour and shape differences (distinct palette colours are >= 0.34 apart)."""
    last = history[-1]
    px, py = last.centre
    if len(history) > 1:  # extrapolate, so objects that cross while merged keep their identity
        prev = history[-2]
        steps = (blob.frame - last.frame) / max(last.frame - prev.frame, 1)
        px += (last.centre[0] - prev.centre[0]) * steps
        py += (last.centre[1] - prev.centre[1]) * steps
    colour = float(np.linalg.norm(last.colour - blob.colour)) / 255.0
    shape = float(np.abs((last.harmonics - blob.harmonics) / _HARMONIC_SCALE).sum())
    return math.hypot(px - blob.centre[0], py - blob.centre[1]) + colour + 0.2 * shape


@dataclass
class _Track:
    blobs: list[Blob | None]  # per frame; None where missing or merged
    merged: list[bool]  # per frame: hidden in a blob shared with another track (touching)

    @property
    def seen(self) -> list[Blob]:
        return [b for b in self.blobs if b is not None]


def _track(per_frame: list[list[Blob]], n: int) -> list[_Track]:
    """Link blobs into up to `n` tracks (nearest to the last position, colour as a tie-breaker).

    A frame with fewer blobs than tracks is a merge when two tracks' nearest blob is the same
    and it is bigger than either: those tracks are marked merged there (present, not measured)."""
    f = len(per_frame)
    counts = [len(b) for b in per_frame]
    if max(counts, default=0) == 0:
        return []
    m = min(n, max(counts))
    # Start from the first frame that shows m separate objects.
    start = next(i for i, c in enumerate(counts) if c >= m)
    tracks = [_Track([None] * f, [False] * f) for _ in range(m)]
    for k, blob in enumerate(per_frame[start][:m]):
        tracks[k].blobs[start] = blob
    for order in (range(start + 1, f), range(start - 1, -1, -1)):
        history = [[t.blobs[start]] for t in tracks]
        for i in order:
            blobs = per_frame[i]
            if not blobs:
                continue
            if len(blobs) < m:
                cost = [[_match_cost(h, b) for b in blobs] for h in history]
                nearest = [int(np.argmin(c)) for c in cost]
                for k, j in enumerate(nearest):
                    sharing = [q for q in range(m) if nearest[q] == j]
                    if len(sharing) > 1 and blobs[j].area > 1.15 * max(history[q][-1].area for q in sharing):
                        tracks[k].merged[i] = True
                    elif len(sharing) == 1:
                        tracks[k].blobs[i] = blobs[j]
                        history[k] = [*history[k][-1:], blobs[j]]
                continue
            cost = [[_match_cost(h, b) for b in blobs] for h in history]
            best = min(
                itertools.permutations(range(len(blobs)), m),
                key=lambda perm: sum(cost[k][j] for k, j in enumerate(perm)),
            )
            for k, j in enumerate(best):
                tracks[k].blobs[i] = blobs[j]
                history[k] = [*history[k][-1:], blobs[j]]
    return tracks


# ---------------------------------------------------------------------------------------------
# Per-track classification


def classify_shape(harmonics: np.ndarray) -> tuple[str, dict[str, float]]:
    """Shape from mean harmonic magnitudes (k = 3, 4, 5), each normalised by a sharp shape's."""
    norm = {s: float(harmonics[k - 3] / HARMONIC_SHARP[k]) for s, k in HARMONIC_K.items()}
    best = max(norm, key=lambda s: norm[s] / SHAPE_THRESHOLD[s])
    shape = best if norm[best] >= SHAPE_THRESHOLD[best] else "circle"
    return shape, {k: round(v, 3) for k, v in norm.items()}


def _series(track: _Track, values: Sequence[float]) -> np.ndarray:
    """Values at every frame, linearly interpolated over frames where the track is not measured."""
    frames = np.array([b.frame for b in track.seen], np.float64)
    return np.interp(np.arange(len(track.blobs)), frames, np.asarray(values, np.float64))


def _smooth(x: np.ndarray) -> np.ndarray:
    if len(x) < 3:
        return x
    padded = np.concatenate([x[:1], x, x[-1:]])
    return (padded[:-2] + padded[1:-1] + padded[2:]) / 3.0


def end_frames(frames: int) -> int:
    """How many frames at each end of a clip `classify_motion` averages to measure a change."""
    return max(1, frames // 8)


def classify_motion(track: _Track, shape: str) -> tuple[str, dict[str, float]]:
    seen = track.seen
    f = len(track.blobs)
    x = _smooth(_series(track, [b.centre[0] for b in seen]))
    y = _smooth(_series(track, [b.centre[1] for b in seen]))
    area = _series(track, [b.area for b in seen])
    k = end_frames(f)
    dx = float(x[-k:].mean() - x[:k].mean())
    dy = float(y[-k:].mean() - y[:k].mean())
    path_y = float(np.abs(np.diff(y)).sum())
    range_y, range_x = float(np.ptp(y)), float(np.ptp(x))
    grow = float(np.log(max(area[-k:].mean(), 1e-6) / max(area[:k].mean(), 1e-6)))
    rotation = 0.0
    if shape in HARMONIC_K:
        order = HARMONIC_K[shape]
        phase = -np.unwrap([b.phases[order - 3] for b in seen]) / order  # orientation, radians
        rotation = float(np.degrees(phase[-1] - phase[0]))
    details = {
        "dx": round(dx, 4), "dy": round(dy, 4), "path_y": round(path_y, 4),
        "range_x": round(range_x, 4), "range_y": round(range_y, 4),
        "log_area_ratio": round(grow, 3), "rotation_deg": round(rotation, 1),
    }
    if range_y > BOUNCE_RANGE and path_y > range_y + BOUNCE_BACKTRACK and range_x < 0.5 * range_y:
        return "bouncing", details
    move = math.hypot(dx, dy)
    if move >= MOVE_MIN:
        if min(abs(dx), abs(dy)) > DIAGONAL_RATIO * max(abs(dx), abs(dy)):
            return "diagonal", details
        if abs(dx) >= abs(dy):
            return ("right" if dx > 0 else "left"), details
        return ("down" if dy > 0 else "up"), details
    if grow > GROW_LOG:
        return "growing", details
    if grow < -GROW_LOG:
        return "shrinking", details
    if abs(rotation) >= ROTATE_DEG:
        return "rotating", details
    return "still", details


def nominal_areas(track: _Track, first_frame: int = 0) -> dict[str, float]:
    """The track's median area rescaled to the nominal (scale 1) size under each growth curve the
    world draws ("still": none), with frame i of the clip at stream time (first_frame + i) / FPS."""
    seen = track.seen
    t = (first_frame + np.array([b.frame for b in seen], np.float64)) / FPS
    areas = np.array([b.area for b in seen])
    return {m: float(np.median(areas / scale_at(m, t) ** 2)) for m in GROWTH_CURVES}


def size_class(area: float) -> str:
    """The world's size class nearest a nominal area (edges: geometric means of neighbouring classes)."""
    return SIZES[int(np.searchsorted(_SIZE_EDGES, area))]


def growth_curve(motion: str | None) -> str:
    """The growth curve an object of this motion follows ("still": constant scale)."""
    return motion if motion in GROWTH_CURVES else "still"


def settled_motions(found: str, centre: tuple[float, float], area: float, first_frame: int, frames: int) -> frozenset[str]:
    """The prompt motions a still object satisfies at this stream time, as the world draws a stream:
    growth that no longer changes the area visibly over the clip, and a mover easing out so close to
    its far edge that it moves less than MOVE_MIN over the clip (`resting_gap`), once the world's
    movers can be there. Empty for a moving object, and at a stream's start (the world's movers start
    well away from their far edge)."""
    if found != "still":
        return frozenset()
    k = end_frames(frames)
    t = (first_frame + np.array([(k - 1) / 2, frames - 1 - (k - 1) / 2])) / FPS  # the two end groups' centres
    # growth too slow to see over the clip: the world's log area change between those means under GROW_LOG
    done = {m for m in ("growing", "shrinking") if 2 * np.ptp(np.log(scale_at(m, t))) < GROW_LOG}
    gap, earliest = resting_gap(frames)
    if first_frame / FPS >= earliest:
        # the world rests a mover at 1 - extent - EDGE_MARGIN; extent <= the largest circumradius of this area
        reach = _MAX_CIRCUMRADIUS * math.sqrt(area / math.pi) + EDGE_MARGIN + gap
        x, y = centre
        edges = {"left": x <= reach, "right": x >= 1 - reach, "up": y <= reach, "down": y >= 1 - reach}
        done |= {m for m, at in edges.items() if at}
        if (edges["left"] or edges["right"]) and (edges["up"] or edges["down"]):
            done.add("diagonal")  # in a corner
    return frozenset(done)


@functools.lru_cache(maxsize=256)
def resting_gap(frames: int) -> tuple[float, float]:
    """For a clip of `frames` frames: how far from its far edge a world mover can be while its
    measured displacement stays under MOVE_MIN (its ease-out has a time constant of at most EASE_S;
    `classify_motion` compares the means of the first and last k frames), and the earliest stream
    time (s) at which any world mover is that close."""
    k = end_frames(frames)
    w = (frames - k) / FPS  # between the two groups' centres
    gap = MOVE_MIN / -math.expm1(-w / EASE_S) if w > 0 else math.inf
    return gap, earliest_rest(gap)


@dataclass
class _TrackSummary:
    found: dict[str, str]  # shape, colour, motion; the size depends on the prompt (`found_for`)
    details: dict[str, Any]
    colour_rgb: np.ndarray
    present: float  # fraction of frames where the object is seen or merged with another
    swaps: int  # frames whose colour is another object's, plus jumps
    areas: dict[str, float]  # nominal area under each growth curve (`nominal_areas`)
    settled: frozenset[str]  # motions the world has finished by this clip's stream time, as this object shows them (`settled_motions`)

    def curve_for(self, expected: ObjectSpec) -> str:
        """The growth curve the size is read under: the prompt's motion's (a growing object is judged
        by its nominal size at each frame's stream time, even where it has stopped growing), or the
        found motion's when the prompt gives none."""
        return growth_curve(expected.motion or self.found["motion"])

    def found_for(self, expected: ObjectSpec) -> dict[str, str]:
        """What was found, the size read under `curve_for(expected)`."""
        found = {**self.found, "size": size_class(self.areas[self.curve_for(expected)])}
        return {a: found[a] for a in ORDER}


def _summarise(track: _Track, first_frame: int = 0) -> _TrackSummary:
    seen = track.seen
    colour = np.median(np.stack([b.colour for b in seen]), axis=0)
    background = np.median(np.stack([b.background for b in seen]), axis=0)
    colour_name, colour_dist = _nearest_colour(colour, background)
    shape, shape_scores = classify_shape(np.mean([b.harmonics for b in seen], axis=0))
    motion, motion_details = classify_motion(track, shape)
    areas = nominal_areas(track, first_frame)
    centre = np.median(np.array([b.centre for b in seen]), axis=0)
    settled = settled_motions(motion, (float(centre[0]), float(centre[1])), areas["still"], first_frame, len(track.blobs))
    recoloured = sum(1 for b in seen if np.linalg.norm(b.colour - colour) > SWAP_COLOUR)
    jumps = sum(
        1 for a, b in itertools.pairwise(seen)
        if math.dist(a.centre, b.centre) > JUMP * (b.frame - a.frame)
    )
    return _TrackSummary(
        found={"shape": shape, "colour": colour_name, "motion": motion},
        details={
            "colour_rgb": [round(float(c), 1) for c in colour],
            "colour_distance": round(colour_dist, 1),
            "shape_scores": shape_scores,
            "motion": motion_details,
            "frames_seen": len(seen),
            "frames_merged": sum(track.merged),
            "recoloured_frames": recoloured,
            "jumps": jumps,
            "sharpness": round(float(np.median([b.sharpness for b in seen])), 3),
            "centre": [round(float(c), 3) for c in centre],
            "settled": sorted(settled),
        },
        colour_rgb=colour,
        present=(len(seen) + sum(track.merged)) / len(track.blobs),
        swaps=recoloured + jumps,
        areas=areas,
        settled=settled,
    )


def _checks(expected: ObjectSpec, found: dict[str, str | None], settled: frozenset[str] = frozenset()) -> dict[str, bool | None]:
    """Per attribute, whether the found value is the asked one (None: not asked). `settled`: the
    motions the world has finished by then, which a still object therefore shows (`settled_motions`)."""
    out: dict[str, bool | None] = {}
    for name in ORDER:
        want = getattr(expected, name)
        if want is None:
            out[name] = None
        elif name == "motion" and want == "rotating" and expected.shape == "circle":
            out[name] = found["motion"] in ("rotating", "still")  # a spinning disc looks still
        elif name == "motion":
            out[name] = found["motion"] == want or want in settled
        else:
            out[name] = found[name] == want
    return out


# ---------------------------------------------------------------------------------------------
# The judge


def _as_uint8_video(video: np.ndarray) -> np.ndarray:
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or min(video.shape) == 0:
        raise ValueError(f"expected a video [F, H, W, 3], got shape {video.shape}")
    if video.dtype != np.uint8:  # float frames in [0, 1]
        video = np.clip(video.astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return video


@dataclass
class Analysis:
    """What a clip shows, measured once for a given expected object count; `score` compares it
    with any scene of that count (cheap, so one clip can be scored against many prompts)."""

    n_expected: int
    summaries: list[_TrackSummary]
    counts: list[int]  # objects per frame
    consistent: bool
    sharpness: float
    details: dict[str, Any]


def analyse(video: np.ndarray, n_objects: int, first_frame: int = 0) -> Analysis:
    """Segment, track and classify the objects of a clip expected to hold `n_objects`;
    `first_frame`: the clip's first frame is frame `first_frame` of its stream (a window cut from a
    longer stream: sizes of growing and shrinking objects, and motions the world has finished, are
    read at their stream time)."""
    frames = _as_uint8_video(video).astype(np.float32)
    f, h, w, _ = frames.shape
    background, offsets = estimate_background(frames)
    per_frame, threshold = _blobs(frames, background, offsets, n_objects)
    tracks = [t for t in _track(per_frame, n_objects) if t.seen]
    # Objects per frame: blobs, plus the tracks hidden in a merged blob beyond the first.
    counts = [len(b) for b in per_frame]
    for i in range(f):
        counts[i] += max(sum(t.merged[i] for t in tracks) - 1, 0)
    summaries = [_summarise(t, first_frame) for t in tracks]
    flicker = float(offsets.std(axis=0).max()) if f > 1 else 0.0
    jitter = 0.0
    for t in tracks:
        areas = [b.area for b in t.seen]
        if len(areas) > 1:
            jitter = max(jitter, float(np.median(np.abs(np.diff(np.log(areas))))))
    present = min((s.present for s in summaries), default=0.0)
    swaps = max((s.swaps for s in summaries), default=0)
    consistent = (
        flicker <= FLICKER_LEVELS
        and jitter <= AREA_JITTER
        and present >= PRESENT_FRACTION
        and swaps <= SWAP_FRACTION * f
    )
    sharpness = float(np.median([s.details["sharpness"] for s in summaries])) if summaries else 0.0
    details = {
        "frames": f,
        "size": [h, w],
        "threshold": round(threshold, 1),
        "counts": {str(k): v for k, v in sorted(Counter(counts).items())},
        "flicker": round(flicker, 2),
        "area_jitter": round(jitter, 3),
        "present": round(present, 3),
        "swaps": swaps,
        "sharpness": round(sharpness, 3),
    }
    return Analysis(n_objects, summaries, counts, consistent, sharpness, details)


def score(analysis: Analysis, scene: Scene) -> JudgeResult:
    """Compare an analysed clip with a scene of the same object count."""
    n = len(scene.objects)
    assert n == analysis.n_expected, "analyse the clip for this scene's object count"
    summaries = analysis.summaries
    # Assign tracks to expected objects: the assignment with the most matching attributes
    # (closest colours break ties).
    best_score, best_perm = -math.inf, ()
    for perm in itertools.permutations(range(len(summaries)), min(n, len(summaries))):
        total = 0.0
        for obj, k in zip(scene.objects, perm, strict=False):
            total += sum(1 for v in _checks(obj, summaries[k].found_for(obj), summaries[k].settled).values() if v)
            if obj.colour is not None:
                target = _PALETTE_RGB[_PALETTE_NAMES.index(obj.colour)]
                total -= 1e-3 * float(np.linalg.norm(summaries[k].colour_rgb - target))
        if total > best_score:
            best_score, best_perm = total, perm
    objects = []
    for i, obj in enumerate(scene.objects):
        if i < len(best_perm):
            s = summaries[best_perm[i]]
            found = s.found_for(obj)
            details = {**s.details, "area": round(s.areas[s.curve_for(obj)], 4)}
            objects.append(ObjectResult(obj, found, _checks(obj, found, s.settled), details))
        else:  # no object left to match: every specified attribute fails
            found: dict[str, str | None] = dict.fromkeys(ORDER)
            checks = {a: (None if getattr(obj, a) is None else False) for a in ORDER}
            objects.append(ObjectResult(obj, found, checks, {"frames_seen": 0}))
    counts = analysis.counts
    return JudgeResult(
        objects=objects,
        count=sum(c == n for c in counts) >= COUNT_FRACTION * len(counts),
        count_found=Counter(counts).most_common(1)[0][0],
        count_expected=n,
        consistent=analysis.consistent,
        sharp=analysis.sharpness >= SHARP_MIN,
        details=analysis.details,
    )


def judge(video: np.ndarray, scene: Scene, first_frame: int = 0) -> JudgeResult:
    """Score a clip (uint8 [F, H, W, 3], or float in [0, 1]) against the scene it should show;
    `first_frame`: where the clip starts in its stream (`analyse`)."""
    return score(analyse(video, len(scene.objects), first_frame), scene)


# ---------------------------------------------------------------------------------------------
# PSNR / SSIM


def _luma(video: np.ndarray) -> np.ndarray:
    """BT.601 luma, float64 0-255: [F, H, W]."""
    v = np.asarray(video, np.float64)
    return v[..., 0] * 0.299 + v[..., 1] * 0.587 + v[..., 2] * 0.114


def _gaussian_filter(x: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    """Separable Gaussian, 'valid' region only (as Wang et al.'s reference): [F, H, W] ->
    [F, H - 2r, W - 2r]."""
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    n = 2 * radius + 1
    h, w = x.shape[1] - n + 1, x.shape[2] - n + 1
    rows = sum(k[i] * x[:, i : i + h, :] for i in range(n))
    return sum(k[i] * rows[:, :, i : i + w] for i in range(n))


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """PSNR (RGB, 8-bit peak) and SSIM (luma, 11x11 Gaussian window sigma 1.5, 'valid' region,
    K1 = 0.01, K2 = 0.03) per frame and overall, between two uint8 clips of the same shape.
    Overall PSNR comes from the mean squared error of the whole clip (identical clips: inf)."""
    a, b = _as_uint8_video(a), _as_uint8_video(b)
    if a.shape != b.shape:
        raise ValueError(f"clips differ in shape: {a.shape} vs {b.shape}")
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = (diff**2).mean(axis=(1, 2, 3))

    def psnr(m: np.ndarray | float) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return 10.0 * np.log10(255.0**2 / np.asarray(m, np.float64))

    out: dict[str, Any] = {"psnr": float(psnr(mse.mean())), "psnr_per_frame": psnr(mse).tolist()}
    if min(a.shape[1:3]) >= 11:
        x, y = _luma(a), _luma(b)
        c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
        mx, my = _gaussian_filter(x), _gaussian_filter(y)
        sxx = _gaussian_filter(x * x) - mx * mx
        syy = _gaussian_filter(y * y) - my * my
        sxy = _gaussian_filter(x * y) - mx * my
        ssim_map = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        per_frame = ssim_map.mean(axis=(1, 2))
        out.update(ssim=float(per_frame.mean()), ssim_per_frame=per_frame.tolist())
    return out


# ---------------------------------------------------------------------------------------------
# Contact sheets and evaluation reports


def _atomic_write(path: Path, write: Any) -> None:
    """Call `write(temp_path)`, then rename the temp file over `path` (nothing half-written)."""
    with atomic_path(path) as temp:
        write(temp)


def contact_sheet(videos: Sequence[np.ndarray], labels: Sequence[str], path: str | Path,
                  frames_per_row: int = 8) -> Path:
    """A PNG grid: one row per clip (`frames_per_row` frames spread over it), its label above.
    Frames are enlarged (nearest neighbour) to at least 96 px. Written atomically."""
    from PIL import Image, ImageDraw

    if len(videos) != len(labels) or not videos:
        raise ValueError("contact_sheet needs one label per clip and at least one clip")
    clips = [_as_uint8_video(v) for v in videos]
    h = max(c.shape[1] for c in clips)
    w = max(c.shape[2] for c in clips)
    zoom = max(1, math.ceil(96 / max(h, w)))
    tile_h, tile_w, label_h, pad = h * zoom, w * zoom, 14, 2
    sheet = Image.new("RGB", (frames_per_row * (tile_w + pad) + pad, len(clips) * (tile_h + label_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, (clip, label) in enumerate(zip(clips, labels, strict=True)):
        top = pad + row * (tile_h + label_h + pad)
        draw.text((pad, top), label[:160], fill=(0, 0, 0))
        picks = np.unique(np.linspace(0, len(clip) - 1, min(frames_per_row, len(clip))).round().astype(int))
        for col, i in enumerate(picks):
            tile = Image.fromarray(clip[i]).resize((clip.shape[2] * zoom, clip.shape[1] * zoom), Image.NEAREST)
            sheet.paste(tile, (pad + col * (tile_w + pad), top + label_h))
    path = Path(path)
    _atomic_write(path, lambda p: sheet.save(p, format="PNG"))
    return path


REPORT_ROWS = ("colour", "shape", "size", "motion", "count", "consistent", "sharp", "passed")


def _empty_tally() -> dict[str, list[int]]:
    return {row: [0, 0] for row in REPORT_ROWS}


def _perturbations(scene: Scene, rng: np.random.Generator) -> dict[str, Scene]:
    """The scene with one attribute of one object changed: colour, shape, direction."""
    from edgegen.world.scene import COLOURS, SHAPES

    k = int(rng.integers(len(scene.objects)))
    obj = scene.objects[k]

    def swap(**change: str) -> Scene:
        objects = list(scene.objects)
        objects[k] = ObjectSpec(**{**{a: getattr(obj, a) for a in ORDER}, **change})
        return Scene(tuple(objects))

    out = {}
    if obj.colour is not None:
        out["colour"] = swap(colour=str(rng.choice([c for c in COLOURS if c != obj.colour])))
    shapes = [s for s in SHAPES if s != obj.shape and not (s == "circle" and obj.motion == "rotating")]
    out["shape"] = swap(shape=str(rng.choice(shapes)))
    directions = ("left", "right", "up", "down")
    if obj.motion in directions:
        out["direction"] = swap(motion=str(rng.choice([d for d in directions if d != obj.motion])))
    return out


NOT_FOUND = "none"  # the confusion tables' name for an expected object no track was matched to
UNSPECIFIED = "unspecified"  # the per-motion table's name for objects whose prompt gives no motion


def _confuse(confusion: dict[str, Counter[tuple[str, str]]], result: JudgeResult) -> None:
    """Tally (expected, found) per specified attribute of each object, and the clip's object count."""
    for obj in result.objects:
        for a in ATTRIBUTES:
            want = getattr(obj.expected, a)
            if want is not None:
                confusion[a][(want, obj.found[a] or NOT_FOUND)] += 1
    confusion["count"][(str(result.count_expected), str(result.count_found))] += 1


def _nested(pairs: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (want, got), k in sorted(pairs.items()):
        out.setdefault(want, {})[got] = k
    return out


class Evaluation:
    """Judges (prompt, seed, video) samples one at a time and tallies them; `report()` gives the
    figures so far. One per judged span, so one stream can feed several (`evaluate` over windows)."""

    def __init__(self, rejection: bool = False, rejection_seed: int = 0) -> None:
        self.rejection = rejection
        self.tallies = {"all": _empty_tally(), "one_object": _empty_tally(), "two_objects": _empty_tally()}
        self.confusion: dict[str, Counter[tuple[str, str]]] = {a: Counter() for a in (*ATTRIBUTES, "count")}
        self.by_motion: dict[str, dict[str, list[int]]] = {}
        self.rejected: dict[str, list[int]] = {}
        self.clips: list[dict[str, Any]] = []
        self.rng = np.random.default_rng(rejection_seed)

    def add(self, prompt: str, seed: int, video: np.ndarray, first_frame: int = 0) -> None:
        """Judge one clip against its prompt and tally it (`first_frame`: where it starts in its stream)."""
        from edgegen.world import parse_prompt

        scene = parse_prompt(prompt)
        analysis = analyse(video, len(scene.objects), first_frame)
        result = score(analysis, scene)
        group = "one_object" if len(scene.objects) == 1 else "two_objects"
        marks: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
        for obj in result.objects:
            per_motion = self.by_motion.setdefault(obj.expected.motion or UNSPECIFIED, {a: [0, 0] for a in ATTRIBUTES})
            for a in ATTRIBUTES:
                if obj.checks[a] is not None:
                    marks[a].append(bool(obj.checks[a]))
                    per_motion[a][0] += bool(obj.checks[a])
                    per_motion[a][1] += 1
        for name, ok in (("count", result.count), ("consistent", result.consistent),
                         ("sharp", result.sharp), ("passed", result.passed)):
            marks[name] = [ok]
        for tally in (self.tallies["all"], self.tallies[group]):
            for name, oks in marks.items():
                tally[name][0] += sum(oks)
                tally[name][1] += len(oks)
        _confuse(self.confusion, result)
        failed = sorted({a for a, oks in marks.items() if not all(oks)} - {"passed"})
        entry: dict[str, Any] = {"prompt": prompt, "seed": seed, "passed": result.passed, "failed": failed}
        if self.rejection:
            entry["rejected"] = {}
            for kind, wrong in _perturbations(scene, self.rng).items():
                no = not score(analysis, wrong).passed
                self.rejected.setdefault(kind, [0, 0])
                self.rejected[kind][0] += no
                self.rejected[kind][1] += 1
                entry["rejected"][kind] = no
        self.clips.append(entry)

    def report(self) -> dict[str, Any]:
        def rates(tally: dict[str, list[int]]) -> dict[str, Any]:
            return {k: {"accuracy": (c / n if n else None), "correct": c, "judged": n} for k, (c, n) in tally.items()}

        report: dict[str, Any] = {
            "clips": len(self.clips),
            "accuracy": {group: rates(t) for group, t in self.tallies.items()},
            "confusion": {a: _nested(c) for a, c in self.confusion.items()},
            "by_motion": {m: rates(self.by_motion[m]) for m in _value_order("motion", set(self.by_motion))},
            "clip_results": self.clips,
        }
        if self.rejection:
            report["rejection"] = {
                k: {"rate": (c / n if n else None), "rejected": c, "judged": n} for k, (c, n) in self.rejected.items()
            }
        return report


def evaluate(samples: Iterable[tuple[str, int, np.ndarray]], rejection: bool = False,
             rejection_seed: int = 0) -> dict[str, Any]:
    """Judge (prompt, seed, video) samples; per-attribute accuracies overall and for one-object /
    two-object prompts. An attribute counts once per object that specifies it; count,
    consistency, sharpness and `passed` once per clip. With `rejection`, each clip is also judged
    against its prompt with one attribute changed (colour, shape, direction) and the report
    gives how often that wrong prompt is rejected. `confusion` gives, per attribute and for the
    object count, how often each expected value was found as each value (`none`: no object)."""
    tally = Evaluation(rejection, rejection_seed)
    for prompt, seed, video in samples:
        tally.add(prompt, seed, video)
    return tally.report()


def window_drift(reports: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Per report row, the change in points from the first window's share to the last's (all
    prompts; None where either window judged nothing): does a long stream stay on prompt?"""
    first, last = reports[0]["accuracy"]["all"], reports[-1]["accuracy"]["all"]
    return {row: (None if first[row]["accuracy"] is None or last[row]["accuracy"] is None
                  else round(100 * (last[row]["accuracy"] - first[row]["accuracy"]), 1)) for row in REPORT_ROWS}


def standard_error(correct: int, judged: int) -> float | None:
    """Binomial standard error of the share correct / judged (None if nothing was judged): the chance
    spread of the share over other prompts and seeds of the same kind."""
    if not judged:
        return None
    p = correct / judged
    return math.sqrt(p * (1 - p) / judged)


def _share(r: dict[str, Any], with_error: bool) -> str:
    if r["accuracy"] is None:
        return "–"
    error = standard_error(r["correct"], r["judged"]) if with_error else None
    spread = f" ± {100 * error:.1f}" if error is not None else ""
    return f"{100 * r['accuracy']:.1f}%{spread} ({r['correct']}/{r['judged']})"


def _value_order(attribute: str, values: set[str]) -> list[str]:
    """The world's order of an attribute's values (counts numerically), the judge's extras after."""
    from edgegen.world.scene import COLOURS, MOTIONS, SHAPES, SIZES

    known = {"colour": COLOURS, "shape": SHAPES, "size": SIZES, "motion": MOTIONS}.get(attribute, ())
    first = [v for v in known if v in values]
    rest = sorted(values - set(first), key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v))
    return first + rest


def _confusion_markdown(confusion: dict[str, dict[str, dict[str, int]]], heading: str = "##") -> list[str]:
    """One table per attribute: rows what the prompt asked for, columns what the judge found."""
    lines = ["", f"{heading} What was found instead", "",
             f"Rows: what the prompt asked for; columns: what the judge found (`{NOT_FOUND}`: no object matched). "
             "A rotating circle found still passes the motion check, but is not counted as asked here."]
    for attribute, rows in confusion.items():
        if not rows:
            continue
        wanted = _value_order(attribute, set(rows))
        found = _value_order(attribute, set(rows) | {v for row in rows.values() for v in row})  # asked ones too
        lines += ["", f"**{attribute}**", "", "| asked \\ found | " + " | ".join(found) + " | as asked |",
                  "| --- |" + " --- |" * (len(found) + 1)]
        for want in wanted:
            row = rows[want]
            total = sum(row.values())
            cells = [f"**{row[v]}**" if v == want and v in row else str(row.get(v, "")) for v in found]
            lines.append(f"| {want} | " + " | ".join(cells) + f" | {100 * row.get(want, 0) / total:.0f}% |")
    return lines


def _window_markdown(report: dict[str, Any]) -> list[str]:
    """Several spans of each stream: one column per window and the change, then each window's own tables."""
    windows = report["windows"]
    lines = ["| attribute | " + " | ".join(f"frames {w['frames']}" for w in windows) + " | change (points) |",
             "| --- |" + " --- |" * (len(windows) + 1)]
    for row in REPORT_ROWS:
        cells = [_share(w["accuracy"]["all"][row], True) for w in windows]
        change = report["drift"][row]
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {'–' if change is None else f'{change:+.1f}'} |")
    lines += ["", "change: the last window's share minus the first's (all prompts)."]
    for w in windows:
        lines += ["", f"## Frames {w['frames']}", "", *_single_markdown(w, heading="###")]
    return lines


def _single_markdown(report: dict[str, Any], heading: str = "##") -> list[str]:
    groups = ("all", "one_object", "two_objects")
    lines = ["| attribute | all | one object | two objects |", "| --- | --- | --- | --- |"]
    for row in REPORT_ROWS:
        cells = [_share(report["accuracy"][g][row], g == "all") for g in groups]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "± : binomial standard error in points (objects or clips counted as independent draws); "
              "the difference of two independent runs has a standard error of about √(a² + b²)."]
    if "rejection" in report:
        lines += ["", "Prompts with one attribute changed, rejected:", "", "| changed | rejected |", "| --- | --- |"]
        for k, r in report["rejection"].items():
            lines.append(f"| {k} | {100 * r['rate']:.1f}% ({r['rejected']}/{r['judged']}) |")
    if report.get("by_motion"):
        lines += _motion_markdown(report["by_motion"], heading)
    if "confusion" in report:
        lines += _confusion_markdown(report["confusion"], heading)
    return lines


def _motion_markdown(by_motion: dict[str, dict[str, Any]], heading: str = "##") -> list[str]:
    """Per object, each attribute's share by the motion its prompt asked for: which motions cost
    which attributes (a growing object's size, a rotating one's shape)."""
    lines = ["", f"{heading} By the motion asked", "",
             f"Objects grouped by the motion in their prompt (`{UNSPECIFIED}`: none given); an attribute counts where the prompt gives it.",
             "", "| motion asked | " + " | ".join(ATTRIBUTES) + " |", "| --- |" + " --- |" * len(ATTRIBUTES)]
    for motion, shares in by_motion.items():
        lines.append(f"| {motion} | " + " | ".join(_share(shares[a], False) for a in ATTRIBUTES) + " |")
    return lines


def report_markdown(report: dict[str, Any], title: str = "edgegen evaluation") -> str:
    """The report as markdown tables (rows: attributes; columns: all / one / two objects, or with
    several windows: one column per window and the change)."""
    lines = [f"# {title}", "", f"{report['clips']} clips.", ""]
    for key in ("split", "source", "frames", "size", "seeds"):
        if key in report:
            lines.append(f"- {key}: {report[key]}")
    lines.append("")
    lines += _window_markdown(report) if "windows" in report else _single_markdown(report)
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: str | Path, title: str = "edgegen evaluation") -> tuple[Path, Path]:
    """report.json and report.md in `out_dir`, each written atomically."""
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    _atomic_write(json_path, lambda p: p.write_text(json.dumps(report, indent=1) + "\n"))
    _atomic_write(md_path, lambda p: p.write_text(report_markdown(report, title)))
    return json_path, md_path
