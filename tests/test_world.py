"""The procedural world: grammar, captions, splits and renderer."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from edgegen.errors import PromptError, UserError
from edgegen.tokenizer import Tokenizer, words_of
from edgegen.world import (
    COLOURS,
    MOTIONS,
    SHAPES,
    SIZES,
    VOCABULARY,
    ObjectSpec,
    Scene,
    caption,
    parse_prompt,
    prompts,
    render,
    sample_scene,
    split_of,
)
from edgegen.world.renderer import PALETTE, coverages, render_chunks, tracks
from edgegen.world.scene import ALL_TRIPLES, HELDOUT_TRIPLES, TRAIN_TRIPLES

Obj = ObjectSpec


# ---------------------------------------------------------------------------------- grammar


def test_vocabulary_is_sorted_lowercase_words() -> None:
    assert list(VOCABULARY) == sorted(set(VOCABULARY))
    assert all(w.isalpha() and w.islower() and w.isascii() for w in VOCABULARY)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a red circle moving right", (Obj("circle", "red", None, "right"),)),
        ("A small red circle moving to the right.", (Obj("circle", "red", "small", "right"),)),
        ("the big violet ball drifts rightwards", (Obj("circle", "purple", "large", "right"),)),
        ("tiny magenta box heading upward", (Obj("square", "pink", "small", "up"),)),
        ("moving left, a medium green block", (Obj("square", "green", "medium", "left"),)),
        ("a yellow dot that is travelling downwards", (Obj("circle", "yellow", None, "down"),)),
        ("an orange star which is sliding diagonally", (Obj("star", "orange", None, "diagonal"),)),
        ("a white triangle spinning", (Obj("triangle", "white", None, "rotating"),)),
        ("a rotating circle", (Obj("circle", None, None, "rotating"),)),
        ("a cyan disc standing still", (Obj("circle", "cyan", None, "still"),)),
        ("blue square", (Obj("square", "blue", None, None),)),
        ("a large red circle bouncing and a small blue star shrinking",
         (Obj("circle", "red", "large", "bouncing"), Obj("star", "blue", "small", "shrinking"))),
        ("a pink disk grows and the green triangle goes left",
         (Obj("circle", "pink", None, "growing"), Obj("triangle", "green", None, "left"))),
    ],
)
def test_parse_prompt(prompt: str, expected: tuple[ObjectSpec, ...]) -> None:
    assert parse_prompt(prompt) == Scene(expected)


@pytest.mark.parametrize(
    ("prompt", "needle"),
    [
        ("a red hexagon moving right", "unknown word 'hexagon'"),
        ("", "empty"),
        ("   \t  ", "empty"),
        ("a red circle and a blue square and a green star", "at most 2"),
        ("a red thing", "unknown word 'thing'"),
        ("a red moving right", "no shape"),
        ("a red circle blue square", "two shapes"),
        ("a red blue circle", "two colours"),
        ("a red circle moving left and right", "no shape"),
        ("a red circle moving left up", "two motions"),
        ("a red circle moving", "needs a direction"),
        ("a red circle " + "moving right " * 30, "characters"),
        ("a red\x07 circle", "control character"),
        ("a red circle\nmoving right", "control character"),
        ("a rouge círcle", "non-ASCII"),
        ("2 red circles", "unknown word '2'"),
    ],
)
def test_parse_prompt_errors_are_one_line(prompt: str, needle: str) -> None:
    with pytest.raises(PromptError) as err:
        parse_prompt(prompt)
    message = str(err.value)
    assert needle in message
    assert "\n" not in message


def test_unknown_word_lists_the_vocabulary() -> None:
    with pytest.raises(PromptError, match="known words: a, an, and"):
        parse_prompt("a red hexagon")


def _random_scene(rng: np.random.Generator) -> Scene:
    """Any scene at all, including unspecified attributes and held-out triples."""
    def maybe(values: tuple[str, ...]) -> str | None:
        return None if rng.random() < 0.2 else values[int(rng.integers(len(values)))]

    n = int(rng.integers(1, 3))
    return Scene(tuple(
        Obj(SHAPES[int(rng.integers(len(SHAPES)))], maybe(COLOURS), maybe(SIZES), maybe(MOTIONS))
        for _ in range(n)
    ))


def test_every_caption_parses_back_and_tokenizes() -> None:
    rng = np.random.default_rng(0)
    tokenizer = Tokenizer.from_vocabulary(VOCABULARY, max_len=24)
    seen = set()
    for i in range(4000):
        scene = _random_scene(rng) if i % 2 else sample_scene(rng, ("train", "heldout")[i % 4 // 2])
        text = caption(scene, rng)
        assert parse_prompt(text) == scene, text
        assert set(words_of(text)) <= set(VOCABULARY)
        tokenizer.encode(text)  # at most 24 words
        seen.update(words_of(text))
    assert seen == set(VOCABULARY)  # the model sees every word the parser accepts


# ---------------------------------------------------------------------------------- splits


def test_heldout_triples_cover_every_value_and_leave_every_pair_in_training() -> None:
    assert 0.10 <= len(HELDOUT_TRIPLES) / len(ALL_TRIPLES) <= 0.15
    for i, values in enumerate((COLOURS, SHAPES, MOTIONS)):
        held = {t[i] for t in HELDOUT_TRIPLES}
        assert held == set(values), values
    for i, j in itertools.combinations(range(3), 2):
        pairs = {(t[i], t[j]) for t in ALL_TRIPLES}
        assert {(t[i], t[j]) for t in TRAIN_TRIPLES} == pairs


def test_sample_scene_respects_the_split() -> None:
    rng = np.random.default_rng(1)
    counts = {1: 0, 2: 0}
    for _ in range(3000):
        scene = sample_scene(rng, "train")
        assert split_of(scene) == "train"
        assert all(o.triple not in HELDOUT_TRIPLES for o in scene.objects)
        assert all(o.colour and o.motion for o in scene.objects)
        assert not any(o.shape == "circle" and o.motion == "rotating" for o in scene.objects)
        counts[len(scene.objects)] += 1
        held = sample_scene(rng, "heldout")
        assert split_of(held) == "heldout"
    assert min(counts.values()) > 1000
    for n in (1, 2):
        assert len(sample_scene(rng, "heldout", n_objects=n).objects) == n
    with pytest.raises(ValueError):
        sample_scene(rng, "test")


def test_prompts_are_deterministic_and_from_their_split() -> None:
    a = prompts("heldout", 50, seed=3)
    assert a == prompts("heldout", 50, seed=3)
    assert a != prompts("heldout", 50, seed=4)
    assert all(split_of(parse_prompt(p)) == "heldout" for p in a)
    assert all(split_of(parse_prompt(p)) == "train" for p in prompts("train", 50))
    with pytest.raises(PromptError):
        prompts("validation", 3)


# ---------------------------------------------------------------------------------- renderer


def test_render_shape_dtype_determinism_and_prefix_stability() -> None:
    scene = parse_prompt("a large red star rotating and a small blue square moving left")
    clip = render(scene, seed=5, frames=16, size=64)
    assert clip.dtype == np.uint8 and clip.shape == (16, 64, 64, 3)
    assert np.array_equal(clip, render(scene, 5, 16, 64))
    assert np.array_equal(clip, render(scene, 5, 48, 64)[:16])
    assert not np.array_equal(clip, render(scene, 6, 16, 64))
    for size, frames in ((8, 1), (24, 3), (128, 5)):
        assert render(scene, 0, frames, size).shape == (frames, size, size, 3)


@pytest.mark.parametrize(
    ("seed", "frames", "size"), [(0, 0, 64), (0, -1, 64), (0, 16, 60), (0, 16, 0), (0, 16, 4), (-1, 16, 64)]
)
def test_render_rejects_bad_geometry(seed: int, frames: int, size: int) -> None:
    with pytest.raises(UserError):
        render(parse_prompt("a red circle"), seed, frames, size)


def test_render_chunks_match_render() -> None:
    scene = parse_prompt("a small white star moving down and a big red ball bouncing")
    whole = render(scene, 9, 50, 32)
    assert np.array_equal(np.concatenate(list(render_chunks(scene, 9, 50, 32, chunk=12))), whole)


def test_unspecified_attributes_come_from_the_seed() -> None:
    scene = parse_prompt("a circle")
    looks = {render(scene, s, 2, 16).tobytes() for s in range(8)}
    assert len(looks) == 8


def test_objects_use_the_palette_and_stay_inside_for_long_clips() -> None:
    rng = np.random.default_rng(2)
    for seed in range(40):
        scene = sample_scene(rng, "train" if seed % 2 else "heldout")
        frames, size = 240, 32
        for alpha in coverages(scene, seed, frames, size):
            border = np.concatenate([alpha[:, 0], alpha[:, -1], alpha[:, :, 0], alpha[:, :, -1]], axis=1)
            assert border.max() == 0.0, (scene, seed)
            assert (alpha.max(axis=(1, 2)) > 0.99).all()
        clip = render(scene, seed, 4, 64)
        for obj in scene.objects:
            colour = np.asarray(PALETTE[obj.colour])
            assert (np.abs(clip[0].astype(int) - colour).max(axis=-1) <= 1).any()


def test_two_objects_start_apart() -> None:
    rng = np.random.default_rng(4)
    for seed in range(60):
        scene = sample_scene(rng, "train", n_objects=2)
        a, b = coverages(scene, seed, 24, 64)
        assert (a[0] * b[0]).sum() == 0.0, (scene, seed)


def test_steady_movers_move_their_way_and_never_turn_back() -> None:
    for motion, axis, sign in (("left", 0, -1), ("right", 0, 1), ("up", 1, -1), ("down", 1, 1)):
        for seed in range(10):
            scene = Scene((Obj("triangle", "red", "large", motion),))
            centre = tracks(scene, seed, 240)[1][0].centre
            step = np.diff(centre[:, axis]) * sign
            assert (step >= 0).all() and centre[23, axis] * sign - centre[0, axis] * sign > 0.08
            assert np.ptp(centre[:, 1 - axis]) == 0.0


def test_render_is_fast() -> None:
    scene = parse_prompt("a large red star rotating and a small blue triangle moving left")
    best = min(_time(lambda: render(scene, 1, 16, 64)) for _ in range(5))
    assert best < 0.25  # ~2-3 ms on an idle core; the bound only catches a lost vectorisation


def _time(fn) -> float:
    start = time.perf_counter()
    for _ in range(10):
        fn()
    return (time.perf_counter() - start) / 10


def test_earliest_rest_is_when_the_first_mover_comes_that_close_to_its_far_edge() -> None:
    from edgegen.world.renderer import earliest_rest

    gaps = [0.01, 0.03, 0.05, 0.1, 0.3]
    times = [earliest_rest(g) for g in gaps]
    assert times == sorted(times, reverse=True) and times[-1] < times[0]  # closer takes longer
    assert earliest_rest(1.0) == 0.0  # every mover starts within a frame width of its rest position
    movers = [("a large yellow star moving right", 0), ("a small red circle moving up", 1), ("a big green square moving left", 0)]
    for prompt, axis in movers:  # no world mover comes within the gap of its rest position before that time
        for seed in range(10):
            pos = tracks(parse_prompt(prompt), seed, 240)[1][0].centre[:, axis]
            for gap, earliest in zip(gaps, times, strict=True):
                assert np.argmax(np.abs(pos[-1] - pos) <= gap) / 24 >= earliest - 1e-9, (prompt, seed, gap)
