"""What a clip contains: objects, their attributes, and the train / held-out split.

A `Scene` is one or two `ObjectSpec`s. Every attribute but the shape may be `None`, meaning the
prompt did not say: the renderer then picks a value from the seed and the judge does not check it.

The held-out split is a fixed set of (colour, shape, motion) triples (about 12%) that
`sample_scene(split="train")` never produces. It is built so that every single value and every
pair of values (colour×shape, colour×motion, shape×motion) is still seen in training: held-out
clips test composition, not unseen words.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLOURS: tuple[str, ...] = (
    "red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white",
)
SIZES: tuple[str, ...] = ("small", "medium", "large")
MOTIONS: tuple[str, ...] = (
    "left", "right", "up", "down", "diagonal", "bouncing", "rotating", "growing", "shrinking", "still",
)
DIRECTIONAL: frozenset[str] = frozenset({"left", "right", "up", "down", "diagonal"})
SPLITS: tuple[str, ...] = ("train", "heldout")
MAX_OBJECTS = 2

# Sampled objects leave the size unsaid this often, so the model also learns size-less prompts.
P_UNSIZED = 0.1
P_TWO_OBJECTS = 0.5


@dataclass(frozen=True)
class ObjectSpec:
    """One object; `None` = not specified by the prompt (the seed decides, the judge ignores it)."""

    shape: str
    colour: str | None = None
    size: str | None = None
    motion: str | None = None

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        for value, allowed in ((self.colour, COLOURS), (self.size, SIZES), (self.motion, MOTIONS)):
            if value is not None and value not in allowed:
                raise ValueError(f"unknown attribute value {value!r}")

    @property
    def triple(self) -> tuple[str | None, str, str | None]:
        return (self.colour, self.shape, self.motion)


@dataclass(frozen=True)
class Scene:
    objects: tuple[ObjectSpec, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene has 1 or {MAX_OBJECTS} objects, not {len(self.objects)}")


def _valid_triple(colour: str, shape: str, motion: str) -> bool:
    # A plain circle rotating looks exactly like a still one: sampling never asks for it.
    return not (shape == "circle" and motion == "rotating")


def _heldout_triples() -> frozenset[tuple[str, str, str]]:
    # (c + 3s + 7m) % 8 == 0 picks 1/8 of the grid; 3 and 7 are invertible mod 8, so for every
    # fixed pair of values at most 2 of the third are held out and every pair stays in training.
    out = set()
    for (ci, c), (si, s), (mi, m) in itertools.product(
        enumerate(COLOURS), enumerate(SHAPES), enumerate(MOTIONS)
    ):
        if (ci + 3 * si + 7 * mi) % 8 == 0 and _valid_triple(c, s, m):
            out.add((c, s, m))
    return frozenset(out)


HELDOUT_TRIPLES: frozenset[tuple[str, str, str]] = _heldout_triples()
ALL_TRIPLES: tuple[tuple[str, str, str], ...] = tuple(
    t for t in itertools.product(COLOURS, SHAPES, MOTIONS) if _valid_triple(*t)
)
TRAIN_TRIPLES: tuple[tuple[str, str, str], ...] = tuple(
    t for t in ALL_TRIPLES if t not in HELDOUT_TRIPLES
)
_HELDOUT_SORTED: tuple[tuple[str, str, str], ...] = tuple(sorted(HELDOUT_TRIPLES))


def object_split(obj: ObjectSpec) -> str:
    """'heldout' when the object's (colour, shape, motion) is a held-out triple; partial = train."""
    return "heldout" if obj.triple in HELDOUT_TRIPLES else "train"


def split_of(scene: Scene) -> str:
    """'train' when every object is a training triple, else 'heldout'."""
    return "heldout" if any(object_split(o) == "heldout" for o in scene.objects) else "train"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def _draw_object(rng: np.random.Generator, triples: tuple[tuple[str, str, str], ...]) -> ObjectSpec:
    colour, shape, motion = triples[int(rng.integers(len(triples)))]
    size = SIZES[int(rng.integers(len(SIZES)))]
    if rng.random() < P_UNSIZED:
        size = None
    return ObjectSpec(shape=shape, colour=colour, size=size, motion=motion)


def sample_scene(
    rng: np.random.Generator, split: str = "train", n_objects: int | None = None
) -> Scene:
    """A random scene of `split`; uniform over that split's triples, sizes uniform.

    Two objects always differ in (colour, shape) so they can be told apart. A held-out two-object
    scene has at least one held-out object (the other is drawn from all triples).
    """
    _check_split(split)
    if n_objects is None:
        n_objects = 2 if rng.random() < P_TWO_OBJECTS else 1
    if not 1 <= n_objects <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be 1 or 2, not {n_objects}")
    if split == "train":
        first = _draw_object(rng, TRAIN_TRIPLES)
    else:
        first = _draw_object(rng, _HELDOUT_SORTED)
    objects = [first]
    while len(objects) < n_objects:
        other = _draw_object(rng, TRAIN_TRIPLES if split == "train" else ALL_TRIPLES)
        if (other.colour, other.shape) != (first.colour, first.shape):
            objects.append(other)
    if split == "heldout" and n_objects == 2 and rng.random() < 0.5:
        objects.reverse()  # the held-out object is not always named first
    return Scene(tuple(objects))
