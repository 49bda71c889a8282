"""The prompt language: words, synonyms, `parse_prompt` and `caption`.

Parsing is slot filling, not a strict grammar: a prompt is one or two object clauses joined by
"and"; in each clause exactly one shape word, at most one colour, one size and one motion.
Articles and linking words ("a", "the", "that", "is", "to", ...) may appear anywhere, so word
orders such as "a red circle moving right", "a red circle that is moving to the right",
"moving right, a red circle" and "the red ball drifts rightwards" all mean the same scene.
What a clause leaves out stays `None`: the renderer picks it from the seed, the judge ignores it.

Every word `parse_prompt` accepts is in `VOCABULARY` (the tokenizer is built from it) and appears
in some caption (so the model has seen it), and every phrasing `caption` produces parses back to
the scene it describes.
"""

from __future__ import annotations

import itertools
import re

import numpy as np

from edgegen.errors import PromptError
from edgegen.world.scene import COLOURS, SHAPES, SIZES, ObjectSpec, Scene

MAX_PROMPT_CHARS = 300

SHAPE_WORDS: dict[str, str] = {
    "circle": "circle", "ball": "circle", "disc": "circle", "disk": "circle", "dot": "circle",
    "square": "square", "box": "square", "block": "square",
    "triangle": "triangle",
    "star": "star",
}
COLOUR_WORDS: dict[str, str] = {
    "red": "red", "orange": "orange", "yellow": "yellow", "green": "green", "cyan": "cyan",
    "blue": "blue", "purple": "purple", "violet": "purple", "pink": "pink", "magenta": "pink",
    "white": "white",
}
SIZE_WORDS: dict[str, str] = {
    "small": "small", "tiny": "small", "little": "small",
    "medium": "medium",
    "large": "large", "big": "large",
}
DIRECTION_WORDS: dict[str, str] = {
    "left": "left", "leftward": "left", "leftwards": "left",
    "right": "right", "rightward": "right", "rightwards": "right",
    "up": "up", "upward": "up", "upwards": "up",
    "down": "down", "downward": "down", "downwards": "down",
    "diagonally": "diagonal",
}
# Verbs that need a direction ("moving left"); on their own they do not say which motion.
MOVE_VERBS_ING = ("moving", "heading", "drifting", "sliding", "going", "travelling", "traveling")
MOVE_VERBS_FINITE = ("moves", "heads", "drifts", "slides", "goes", "travels")
# Words that name a motion by themselves.
MOTION_WORDS: dict[str, str] = {
    "bouncing": "bouncing", "bounces": "bouncing",
    "rotating": "rotating", "rotates": "rotating", "spinning": "rotating", "spins": "rotating",
    "turning": "rotating", "turns": "rotating",
    "growing": "growing", "grows": "growing", "expanding": "growing", "expands": "growing",
    "shrinking": "shrinking", "shrinks": "shrinking",
    "still": "still", "motionless": "still", "stationary": "still", "static": "still",
}
# "standing still", "stays still": these only support "still" and say nothing alone.
STILL_VERBS = ("standing", "staying", "sitting", "stands", "stays", "sits")
FILLERS = ("a", "an", "the", "that", "which", "is", "to", "towards", "and")

VOCABULARY: tuple[str, ...] = tuple(
    sorted(
        {*SHAPE_WORDS, *COLOUR_WORDS, *SIZE_WORDS, *DIRECTION_WORDS, *MOTION_WORDS,
         *MOVE_VERBS_ING, *MOVE_VERBS_FINITE, *STILL_VERBS, *FILLERS}
    )
)
_VOCAB_SET = frozenset(VOCABULARY)

# Same split as `edgegen.tokenizer.words_of` for every prompt we accept; anything else that is
# not a letter, space or one of these punctuation marks is an error rather than silently dropped.
_TOKEN = re.compile(r"[a-z]+|[,.;:!?\-]|\S")
_SEPARATORS = frozenset(",.;:!?-")


def _words(text: str) -> list[str]:
    if not isinstance(text, str):
        raise PromptError("the prompt must be text, e.g. 'a red circle moving right'")
    if len(text) > MAX_PROMPT_CHARS:
        raise PromptError(
            f"the prompt is {len(text)} characters, at most {MAX_PROMPT_CHARS} are supported; shorten it"
        )
    text = text.strip()
    for ch in text:
        if not ch.isascii():
            raise PromptError(f"the prompt contains the non-ASCII character {ch!r}; use plain English words")
        if ord(ch) < 32 or ord(ch) == 127:
            raise PromptError(f"the prompt contains the control character {ch!r}; remove it")
    if not text:
        raise PromptError("the prompt is empty; describe a scene, e.g. 'a red circle moving right'")
    words = []
    for token in _TOKEN.findall(text.lower()):
        if token in _SEPARATORS:
            continue
        if token not in _VOCAB_SET:
            raise PromptError(f"unknown word {token!r} in the prompt; known words: {', '.join(VOCABULARY)}")
        words.append(token)
    if not words:
        raise PromptError("the prompt has no words; describe a scene, e.g. 'a red circle moving right'")
    return words


def _one(kind: str, values: list[str], clause: str) -> str | None:
    distinct = sorted(set(values))
    if len(distinct) > 1:
        raise PromptError(f"one object cannot have two {kind}s ({' and '.join(distinct)}) in {clause!r}; give each object one")
    return distinct[0] if distinct else None


def _parse_clause(words: list[str]) -> ObjectSpec:
    clause = " ".join(words)
    shapes = [SHAPE_WORDS[w] for w in words if w in SHAPE_WORDS]
    if not shapes:
        raise PromptError(f"no shape in {clause!r}; name one of: {', '.join(SHAPES)}")
    if len(shapes) > 1:
        raise PromptError(f"two shapes in {clause!r}; join two objects with 'and' (at most two objects)")
    motions = [DIRECTION_WORDS[w] for w in words if w in DIRECTION_WORDS]
    motions += [MOTION_WORDS[w] for w in words if w in MOTION_WORDS]
    moving = [w for w in words if w in MOVE_VERBS_ING or w in MOVE_VERBS_FINITE]
    if moving and not any(w in DIRECTION_WORDS for w in words):
        raise PromptError(f"{moving[0]!r} needs a direction in {clause!r}: left, right, up, down or diagonally")
    still_verbs = [w for w in words if w in STILL_VERBS]
    if still_verbs and "still" not in words:
        raise PromptError(f"{still_verbs[0]!r} needs 'still' in {clause!r}, e.g. 'standing still'")
    return ObjectSpec(
        shape=shapes[0],
        colour=_one("colour", [COLOUR_WORDS[w] for w in words if w in COLOUR_WORDS], clause),
        size=_one("size", [SIZE_WORDS[w] for w in words if w in SIZE_WORDS], clause),
        motion=_one("motion", motions, clause),
    )


def parse_prompt(text: str) -> Scene:
    """The scene a prompt describes; `PromptError` (one line, says what to fix) when it cannot."""
    words = _words(text)
    clauses: list[list[str]] = [[]]
    for w in words:
        if w == "and":
            clauses.append([])
        else:
            clauses[-1].append(w)
    clauses = [c for c in clauses if c]  # a leading/trailing/doubled "and" joins nothing
    if not clauses:
        raise PromptError(f"no object in {text.strip()!r}; describe one, e.g. 'a red circle moving right'")
    if len(clauses) > 2:
        raise PromptError(f"the prompt describes {len(clauses)} objects; at most 2 are supported")
    return Scene(tuple(_parse_clause(c) for c in clauses))


# ---------------------------------------------------------------------------------------------
# Captions: random phrasings of a scene, each of which parses back to it.

_SHAPE_SYNONYMS = {s: tuple(w for w, c in SHAPE_WORDS.items() if c == s) for s in SHAPES}
_COLOUR_SYNONYMS = {c: tuple(w for w, v in COLOUR_WORDS.items() if v == c) for c in COLOURS}
_SIZE_SYNONYMS = {s: tuple(w for w, v in SIZE_WORDS.items() if v == s) for s in SIZES}
_DIRECTION_PHRASES = {
    d: (d, f"{d}ward", f"{d}wards", f"to the {d}", f"towards the {d}") if d in ("left", "right")
    else (d, f"{d}ward", f"{d}wards")
    for d in ("left", "right", "up", "down")
}
_MOTION_ING = {
    "bouncing": ("bouncing",),
    "rotating": ("rotating", "spinning", "turning"),
    "growing": ("growing", "expanding"),
    "shrinking": ("shrinking",),
    "still": ("standing still", "staying still", "sitting still", "still", "motionless", "static", "stationary"),
}
_MOTION_FINITE = {
    "bouncing": ("bounces",),
    "rotating": ("rotates", "spins", "turns"),
    "growing": ("grows", "expands"),
    "shrinking": ("shrinks",),
    "still": ("stands still", "stays still", "sits still"),
}


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _noun_phrase(obj: ObjectSpec, rng: np.random.Generator) -> str:
    words = []
    if obj.size is not None:
        words.append(_pick(rng, _SIZE_SYNONYMS[obj.size]))
    if obj.colour is not None:
        words.append(_pick(rng, _COLOUR_SYNONYMS[obj.colour]))
    words.append(_pick(rng, _SHAPE_SYNONYMS[obj.shape]))
    article = _pick(rng, ("a", "a", "the", ""))
    if article == "a" and words[0][0] in "aeiou":
        article = "an"
    return " ".join([article, *words] if article else words)


def _motion_phrase(motion: str, rng: np.random.Generator, finite: bool) -> str:
    if motion in _MOTION_ING:
        return _pick(rng, (_MOTION_FINITE if finite else _MOTION_ING)[motion])
    verb = _pick(rng, MOVE_VERBS_FINITE if finite else MOVE_VERBS_ING)
    where = "diagonally" if motion == "diagonal" else _pick(rng, _DIRECTION_PHRASES[motion])
    return f"{verb} {where}"


def _clause(obj: ObjectSpec, rng: np.random.Generator, alone: bool) -> str:
    noun = _noun_phrase(obj, rng)
    if obj.motion is None:
        return noun
    form = int(rng.integers(6 if alone else 5))
    if form == 0 or form == 1:
        return f"{noun} {_motion_phrase(obj.motion, rng, finite=False)}"
    if form == 2:
        return f"{noun} {_pick(rng, ('that', 'which'))} is {_motion_phrase(obj.motion, rng, finite=False)}"
    if form == 3:
        return f"{noun}, {_motion_phrase(obj.motion, rng, finite=False)}"
    if form == 4:
        return f"{noun} {_motion_phrase(obj.motion, rng, finite=True)}"
    return f"{_motion_phrase(obj.motion, rng, finite=False)}, {noun}"  # fronted, one object only


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A random phrasing of `scene`; `parse_prompt(caption(s, rng)) == s` always."""
    alone = len(scene.objects) == 1
    return " and ".join(_clause(o, rng, alone) for o in scene.objects)


def prompts(split: str, n: int, seed: int = 0) -> list[str]:
    """`n` captions of random scenes from `split`, the same list for the same (split, n, seed);
    "all" alternates the train and held-out lists (train first)."""
    from edgegen.world.scene import SPLITS, sample_scene

    if split == "all":
        train, held = prompts("train", (n + 1) // 2, seed), prompts("heldout", n // 2, seed)
        return [p for pair in itertools.zip_longest(train, held) for p in pair if p is not None]
    if split not in SPLITS:
        raise PromptError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}, all")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    return [caption(sample_scene(rng, split), rng) for _ in range(n)]
