"""The judge: segmentation, per-attribute scoring, rejection of wrong prompts, PSNR/SSIM,
contact sheets, evaluation reports and the `judge` / `eval` / `world` commands.

The full-size check (500 clips, both splits, 16-48 frames, mp4 round trip) is
`edgegen eval --truth --split all --frames 16-48 --n 500 --out DIR`; here a smaller sample.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgegen.cli import main
from edgegen.judge import (
    _perturbations,
    analyse,
    compare,
    contact_sheet,
    evaluate,
    judge,
    label_components,
    report_markdown,
    score,
    write_report,
)
from edgegen.video import read_video, write_video
from edgegen.world import ObjectSpec, Scene, parse_prompt, prompts, render, sample_scene

Obj = ObjectSpec


def _mp4(clip: np.ndarray, tmp_path: Path) -> np.ndarray:
    path = tmp_path / "roundtrip.mp4"
    write_video(path, clip, 24.0, force=True)
    return read_video(path).frames


def _blur(clip: np.ndarray, sigma: float) -> np.ndarray:
    radius = int(3 * sigma) + 1
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    v = clip.astype(np.float32)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(v, pad, mode="edge")
        v = sum(k[i] * np.take(padded, range(i, i + clip.shape[axis]), axis=axis) for i in range(len(k)))
    return np.clip(v + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------- pieces


def _bfs_count(mask: np.ndarray) -> int:
    seen = np.zeros_like(mask)
    n = 0
    for y, x in zip(*np.nonzero(mask), strict=True):
        if seen[y, x]:
            continue
        n += 1
        queue = deque([(y, x)])
        seen[y, x] = True
        while queue:
            cy, cx = queue.popleft()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
    return n


def test_label_components_matches_a_flood_fill() -> None:
    rng = np.random.default_rng(0)
    for density in (0.2, 0.45, 0.6):
        mask = rng.random((23, 31)) < density
        labels, n = label_components(mask)
        assert n == _bfs_count(mask)
        assert ((labels > 0) == mask).all()
        for label in range(1, n + 1):  # each label is one connected piece
            assert _bfs_count(labels == label) == 1


# ---------------------------------------------------------------------------------- accuracy


def _sample(n: int, seed: int, size: int = 64) -> list[tuple[Scene, int, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        scene = sample_scene(rng, "train" if i % 2 else "heldout")
        out.append((scene, i, int(rng.integers(16, 49))))
    return out


def test_ground_truth_after_mp4_passes_and_wrong_prompts_are_rejected(tmp_path: Path) -> None:
    tally = {"colour": [0, 0], "shape": [0, 0], "size": [0, 0], "motion": [0, 0], "count": [0, 0]}
    rejected = {"colour": [0, 0], "shape": [0, 0], "direction": [0, 0]}
    rng = np.random.default_rng(1)
    for scene, seed, frames in _sample(40, seed=11):
        clip = _mp4(render(scene, seed, frames, 64), tmp_path)
        analysis = analyse(clip, len(scene.objects))
        result = score(analysis, scene)
        for obj in result.objects:
            for name, ok in obj.checks.items():
                if ok is not None:
                    tally[name][0] += ok
                    tally[name][1] += 1
        tally["count"][0] += result.count
        tally["count"][1] += 1
        for kind, wrong in _perturbations(scene, rng).items():
            rejected[kind][0] += not score(analysis, wrong).passed
            rejected[kind][1] += 1
    for name, (ok, n) in tally.items():
        assert ok / n >= 0.97, (name, ok, n)
    for kind, (ok, n) in rejected.items():
        assert n >= 8 and ok / n >= 0.95, (kind, ok, n)


def test_judge_tolerates_blur_at_128() -> None:
    for scene, seed, frames in _sample(8, seed=5, size=128):
        clip = _blur(render(scene, seed, frames, 128), sigma=2.0)
        result = judge(clip, scene)
        assert result.passed, (scene, seed, result.to_dict())
        assert not result.sharp  # sigma 2 px is visibly soft


def test_long_clips_stay_on_prompt() -> None:
    for prompt in ("a large red triangle moving right", "a small blue star moving up and a white ball growing"):
        scene = parse_prompt(prompt)
        result = judge(render(scene, 3, 240, 64), scene)
        assert result.passed and result.consistent, result.to_dict()


@pytest.mark.parametrize("prompt", ["a small red circle growing", "a large blue square shrinking"])
def test_late_window_of_a_growing_object_is_judged_at_its_stream_time(prompt: str) -> None:
    scene = parse_prompt(prompt)
    late = render(scene, 7, 240, 64)[199:]  # frames 200-240: growth has settled at its end scale
    assert judge(late, scene, first_frame=199).objects[0].checks["size"] is True
    assert judge(late, scene).objects[0].checks["size"] is False  # read as a clip starting at t = 0, the size is a class off


@pytest.mark.parametrize("prompt", ["a small red circle moving right", "a large blue star moving up",
                                    "a medium green square moving diagonally", "a small white triangle growing"])
def test_late_window_of_a_finished_motion_shows_the_prompt(prompt: str) -> None:
    scene = parse_prompt(prompt)
    clip = render(scene, 7, 240, 64)
    late = judge(clip[199:], scene, first_frame=199)  # at rest by then, as the world draws every long stream
    assert late.objects[0].found["motion"] == "still" and late.passed, late.to_dict()
    assert not judge(clip[199:], scene).passed  # read as a stream's start, a still object shows no motion


def test_a_still_object_late_shows_only_the_motions_that_end_where_it_rests() -> None:
    left = parse_prompt("a small red circle moving left")
    late = render(left, 7, 240, 64)[199:]  # resting at the left edge
    assert judge(late, left, first_frame=199).passed
    assert not judge(late, parse_prompt("a small red circle moving right"), first_frame=199).passed
    still = parse_prompt("a large red circle standing still")
    for seed in range(40):  # a still object in the middle of the frame has not moved anywhere
        clip = render(still, seed, 41, 64)
        found = judge(clip, still).objects[0]
        if found.found["motion"] == "still" and all(0.35 < c < 0.65 for c in found.details["centre"]):
            for motion in ("moving left", "moving right", "moving up", "moving down", "moving diagonally"):
                asked = parse_prompt(f"a large red circle {motion}")
                assert judge(clip, asked, first_frame=199).objects[0].checks["motion"] is False, motion
            grown = judge(clip, parse_prompt("a large red circle growing"), first_frame=199).objects[0].checks
            assert grown["motion"] and not grown["size"]  # growth is over by then, but it never grew to the end size
            break
    else:
        pytest.fail("no seed put the still circle mid-frame")


@pytest.mark.parametrize("prompt", ["a large orange star moving right", "a small blue circle moving up",
                                    "a medium white square moving diagonally", "a large green triangle moving left",
                                    "a small red circle growing", "a large blue square shrinking"])
def test_every_window_of_a_world_stream_shows_its_motion(prompt: str) -> None:
    """Wherever a window starts and however long it is, the world's own object passes the motion check
    at its stream time: moving, easing out, at rest at its far edge, or done growing."""
    scene = parse_prompt(prompt)
    for seed in (0, 5):
        stream = render(scene, seed, 240, 64)
        for first in (0, 12, 24, 29, 36, 42, 48, 60, 96, 199):
            for length in (8, 12, 16, 24, 41):
                window = stream[first : first + length]
                assert judge(window, scene, first_frame=first).objects[0].checks["motion"], (seed, first, length)


def test_unspecified_attributes_are_not_judged_and_a_spinning_disc_may_look_still() -> None:
    result = judge(render(parse_prompt("a circle"), 4, 24, 64), parse_prompt("a circle"))
    assert result.passed
    assert result.objects[0].checks == {"shape": True, "colour": None, "size": None, "motion": None}
    assert result.objects[0].found["colour"] is not None  # still measured and reported
    disc = parse_prompt("a green disc rotating")
    assert judge(render(disc, 0, 24, 64), disc).passed


def test_wrong_object_count_and_empty_clips_fail() -> None:
    one = render(parse_prompt("a red square moving left"), 0, 24, 64)
    two = parse_prompt("a red square moving left and a blue star")
    result = judge(one, two)
    assert not result.count and not result.passed
    assert result.count_found == 1
    blank = np.full((8, 64, 64, 3), 20, np.uint8)
    empty = judge(blank, parse_prompt("a red circle"))
    assert not empty.passed and empty.count_found == 0
    json.dumps(empty.to_dict())


def test_result_to_dict_is_json() -> None:
    scene = parse_prompt("a big yellow star spinning and a small pink box moving down")
    data = json.loads(json.dumps(judge(render(scene, 2, 32, 64), scene).to_dict()))
    assert data["passed"] is True and data["count"] == {"ok": True, "found": 2, "expected": 2}
    assert [o["found"]["shape"] for o in data["objects"]] == ["star", "square"]


# ---------------------------------------------------------------------------------- compare, sheet, report


def test_compare_psnr_and_ssim() -> None:
    clip = render(parse_prompt("a red star moving right"), 0, 6, 64)
    same = compare(clip, clip)
    assert same["psnr"] == float("inf") and same["ssim"] == pytest.approx(1.0)
    noisy = np.clip(clip.astype(int) + np.random.default_rng(0).integers(-8, 9, clip.shape), 0, 255).astype(np.uint8)
    worse = compare(clip, noisy)
    assert 25 < worse["psnr"] < 40 and 0.3 < worse["ssim"] < 0.99
    assert len(worse["psnr_per_frame"]) == len(worse["ssim_per_frame"]) == 6
    with pytest.raises(ValueError):
        compare(clip, clip[:3])


def test_contact_sheet_is_a_png_grid(tmp_path: Path) -> None:
    clips = [render(parse_prompt(p), 0, 16, 64) for p in ("a red circle", "a blue star spinning")]
    path = contact_sheet(clips, ["one", "two"], tmp_path / "sheet.png", frames_per_row=4)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 4 * 96 and image.height > 2 * 96
    assert [p.name for p in tmp_path.iterdir()] == ["sheet.png"]  # no temp file left


def test_evaluate_report(tmp_path: Path) -> None:
    prompts = ["a red circle moving right", "a small green star and a big white box bouncing"]
    samples = [(p, 0, render(parse_prompt(p), 0, 24, 64)) for p in prompts]
    samples.append(("a red circle moving left", 0, samples[0][2]))  # wrong direction
    report = evaluate(samples, rejection=True)
    acc = report["accuracy"]
    assert acc["all"]["passed"]["correct"] == 2 and acc["all"]["passed"]["judged"] == 3
    assert acc["one_object"]["motion"]["accuracy"] == 0.5
    assert acc["two_objects"]["colour"]["accuracy"] == 1.0 and acc["two_objects"]["size"]["judged"] == 2
    assert report["clip_results"][2]["failed"] == ["motion"]
    assert set(report["rejection"]) >= {"colour", "shape"}
    json_path, md_path = write_report(report, tmp_path)
    assert json.loads(json_path.read_text())["clips"] == 3
    assert "| motion |" in md_path.read_text()
    by_motion = report["by_motion"]  # per object, by the motion its prompt asks for
    assert list(by_motion) == ["left", "right", "bouncing", "unspecified"]  # the world's order, then none given
    assert by_motion["left"]["motion"] == {"accuracy": 0.0, "correct": 0, "judged": 1}
    assert by_motion["right"]["colour"]["correct"] == 1 and by_motion["unspecified"]["motion"]["judged"] == 0
    assert "| left | 100.0% (1/1) | 100.0% (1/1) | – | 0.0% (0/1) |" in md_path.read_text()


def test_evaluate_tallies_what_was_found_instead() -> None:
    right = render(parse_prompt("a large red circle moving right"), 0, 24, 64)
    two = "a small green star and a big white box bouncing"
    samples = [
        ("a large red circle moving right", 0, right),
        ("a large red circle moving left", 0, right),  # the judge finds 'right'
        ("a large blue circle moving right", 0, right),  # the judge finds 'red'
        (two, 0, render(parse_prompt(two), 0, 24, 64)),
        ("a red circle", 0, np.zeros((24, 64, 64, 3), np.uint8)),  # nothing drawn
    ]
    report = evaluate(samples)
    confusion = report["confusion"]
    assert confusion["motion"]["right"] == {"right": 2} and confusion["motion"]["left"] == {"right": 1}
    assert confusion["colour"]["blue"] == {"red": 1} and confusion["colour"]["red"] == {"none": 1, "red": 2}
    assert confusion["count"] == {"1": {"0": 1, "1": 3}, "2": {"2": 1}}
    assert sum(confusion["shape"]["circle"].values()) == 4
    md = report_markdown(report)
    assert "| asked \\ found | left | right | bouncing | as asked |" in md  # every asked value is a column
    assert "| left |  | 1 |  | 0% |" in md and "| right |  | **2** |  | 100% |" in md
    assert "| blue | 1 |  |  |  |  | 0% |" in md and "| 1 | 1 | **3** |  | 75% |" in md


# ---------------------------------------------------------------------------------- commands


def test_world_render_and_judge_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "clip.mp4"
    prompt = "a large orange triangle moving left"
    assert main(["world", "render", prompt, "--seed", "2", "--frames", "20", "--out", str(out)]) == 0
    assert read_video(out).frames.shape == (20, 64, 64, 3)
    assert main(["world", "render", prompt, "--out", str(out)]) == 2  # exists, no --force
    assert main(["judge", str(out), "--prompt", prompt]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["judge", str(out), "--prompt", "a large orange triangle moving right", "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["passed"] is False
    assert "motion is left, not right" in captured.err
    assert main(["judge", str(out), "--prompt", "a large orange hexagon"]) == 2
    assert main(["world", "prompts", "--split", "heldout", "--n", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_judge_command_takes_the_clips_place_in_its_stream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgegen.video import write_video

    prompt = "a small red circle growing"
    late = tmp_path / "late.y4m"
    write_video(late, render(parse_prompt(prompt), 7, 240, 64)[199:], 24.0)  # frames 200-240 of a stream

    def size_check(*extra: str) -> bool:
        main(["judge", str(late), "--prompt", prompt, "--json", *extra])
        return json.loads(capsys.readouterr().out)["objects"][0]["checks"]["size"]

    assert size_check("--first-frame", "200") is True  # grown, as the world draws it at that time
    assert size_check() is False  # read as a stream's start: a size class off
    assert main(["judge", str(late), "--prompt", prompt, "--first-frame", "200"]) == 0
    assert "motion still (growing, finished by then)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [
        ["world", "render", "", "--out", "{tmp}/a.mp4"],
        ["world", "render", "a red circle and a blue star and a green box", "--out", "{tmp}/a.mp4"],
        ["world", "render", "a red circle", "--frames", "0", "--out", "{tmp}/a.mp4"],
        ["world", "render", "a red circle", "--size", "60", "--out", "{tmp}/a.mp4"],
        ["world", "render", "a red circle", "--out", "{tmp}/missing/a.mp4"],
        ["world", "prompts", "--split", "test"],
        ["eval", "--truth", "--n", "2", "--frames", "0", "--out", "{tmp}/ev"],
        ["eval", "--truth", "--n", "2", "--size", "12", "--out", "{tmp}/ev"],
        ["eval", "--truth", "--n", "2", "--split", "test", "--out", "{tmp}/ev"],
        ["eval", "--truth", "--n", "2", "--seeds", "a", "--out", "{tmp}/ev"],
        ["eval", "--truth", "--n", "2", "--out", "{tmp}/missing/ev"],
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgegen: error:") and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_count_failure_says_how_many_frames_show_the_objects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompt = "a large red circle moving right"
    clip = render(parse_prompt(prompt), 1, 20, 64).copy()
    clip[14:, 2:10, 50:58] = 255  # a second object in the last 6 frames: 14 of 20 right, under 75%
    out = write_video(tmp_path / "clip.y4m", clip, 24)
    assert main(["judge", str(out), "--prompt", prompt]) == 1
    captured = capsys.readouterr()
    assert "FAIL: 1 object expected, seen in 14 of 20 frames (6 show 2)" in captured.out
    err = captured.err.strip()
    assert "\n" not in err and "only 14 of 20 frames show exactly 1 object (at least 75% must); 6 show 2" in err
    assert "instead of" not in err


def test_world_prompts_takes_split_all_like_eval(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["world", "prompts", "--split", "all", "--n", "4", "--seed", "3"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    train, held = prompts("train", 2, seed=3), prompts("heldout", 2, seed=3)
    assert printed == [train[0], held[0], train[1], held[1]]
    assert prompts("all", 3, seed=3) == [train[0], held[0], train[1]]  # the library's list, odd n: train first


@pytest.mark.parametrize(("args", "needle"), [
    (["eval", "--truth", "--seeds", "-1"], "--seeds -1 is out of range"),
    (["eval", "--truth", "--prompt-seed", "-1"], "--prompt-seed -1 is out of range"),
    (["eval", "--truth", "--frames", "-4"], "--frames -4 is out of range; use 1 to"),
    (["eval", "--truth", "--frames", "16-x"], "is not a number or a range like 16-48"),
    (["eval", "--truth", "--steps", "2"], "--truth judges ground-truth renders, so --steps would do nothing"),
    (["eval", "--truth", "--backend", "ort-cpu", "--precision", "fp16"], "so --backend, --precision would do nothing"),
    (["eval", "--truth", "--bundle", "b"], "so --bundle would do nothing"),
    (["eval", "--size", "32"], "--size applies to --truth renders only"),
    (["world", "render", "a", "red", "circle", "--out", "{tmp}/a.mp4"], 'quote it and name the output with --out, e.g. edgegen world render "a red circle"'),
    (["world", "render", "a red circle", "--fps", "150", "--out", "{tmp}/a.gif"], "GIF holds at most 100 fps"),
    (["world", "render", "a red circle", "--fps", "0", "--out", "{tmp}/a.gif"], "--fps 0 is out of range; use a value in (0, 1000]"),
    (["world", "render", "a red circle", "--fps", "1e6", "--out", "{tmp}/a.mp4"], "--fps 1e+06 is out of range; use a value in (0, 1000]"),
    (["judge", "{tmp}/a.avi", "-p", "a red circle"], "unknown video suffix '.avi' in {tmp}/a.avi; use .mp4, .gif, .y4m or a folder of PNG frames"),
    (["judge", "", "-p", "a red circle"], "the video path is empty; name a file such as clip.mp4"),
    (["judge", "-", "-p", "a red circle"], "reading video from stdin is not supported; save it to a .y4m file first"),
    (["judge", "{tmp}/a.mp4", "-p", "a red circle", "--first-frame", "0"], "--first-frame 0 is out of range; use 1 to"),
])
def test_eval_world_and_judge_input_errors_are_one_line(args: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if args[0] == "eval":
        args += ["--n", "2", "--out", str(tmp_path / "ev")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    needle = needle.replace("{tmp}", str(tmp_path))
    assert err.startswith("edgegen: error:") and "\n" not in err and needle in err and "stdout" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_eval_truth_writes_three_files_and_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "ev"
    args = ["eval", "--truth", "--split", "all", "--n", "4", "--frames", "16-24", "--out", str(out)]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["contact_sheet.png", "report.json", "report.md"]
    report = json.loads((out / "report.json").read_text())
    assert report["clips"] == 4 and report["accuracy"]["all"]["passed"]["accuracy"] == 1.0
    before = (out / "report.json").read_bytes()
    assert main(args) == 2
    assert (out / "report.json").read_bytes() == before
    assert main([*args, "--force", "--no-rejection"]) == 0
    assert "rejection" not in json.loads((out / "report.json").read_text())


def test_eval_generates_with_a_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "ev"
    args = ["eval", "--bundle", str(tiny_bundle), "--backend", "ort-cpu", "--n", "2", "--frames", "8", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["clips"] == 2 and "ort-cpu" in report["source"]
    assert (out / "contact_sheet.png").exists()


def _spy_on_judged_clips(monkeypatch: pytest.MonkeyPatch, starts: list[int] | None = None) -> list[np.ndarray]:
    """Every clip `edgegen eval` hands the judge, in order (and, into `starts`, where each begins in its stream)."""
    from edgegen import judge as judge_mod

    seen: list[np.ndarray] = []
    starts = [] if starts is None else starts
    real = judge_mod.Evaluation.add

    def spy(self, prompt, seed, video, first_frame=0):
        seen.append(video)
        starts.append(first_frame)
        return real(self, prompt, seed, video, first_frame)

    monkeypatch.setattr(judge_mod.Evaluation, "add", spy)
    return seen


def test_eval_window_judges_a_late_span_of_each_stream(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    starts: list[int] = []
    seen = _spy_on_judged_clips(monkeypatch, starts)
    out = tmp_path / "late"
    args = ["eval", "--bundle", str(tiny_bundle), "--backend", "ort-cpu", "--n", "2", "--frames", "12", "--window", "9-12", "--no-rejection", "--out", str(out)]
    assert main(args) == 0
    assert [len(c) for c in seen] == [4, 4]
    assert starts == [8, 8]  # judged at their place in the stream (frame 9 = index 8)
    assert "frames 9-12 of each clip" in json.loads((out / "report.json").read_text())["source"]
    assert main([*args[:-2], "--window", "9-20", "--out", str(tmp_path / "bad")]) == 2  # past the clip's end


def test_eval_windows_judge_spans_of_the_same_streams_and_report_the_change(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgegen.runtime.generator import Generator

    seen = _spy_on_judged_clips(monkeypatch)
    out = tmp_path / "drift"
    args = ["eval", "--bundle", str(tiny_bundle), "--backend", "ort-cpu", "--n", "2", "--frames", "12",
            "--window", "1-4,9-12", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert [w["frames"] for w in report["windows"]] == ["1-4", "9-12"]
    gen = Generator.load(tiny_bundle, backend="ort-cpu")
    for i, clip in enumerate(report["windows"][0]["clip_results"]):  # one stream per clip, cut twice
        stream = np.stack(list(gen.stream(clip["prompt"], seed=clip["seed"], frames=12)))
        np.testing.assert_array_equal(seen[2 * i], stream[0:4])
        np.testing.assert_array_equal(seen[2 * i + 1], stream[8:12])
    first, last = (w["accuracy"]["all"] for w in report["windows"])
    for row, change in report["drift"].items():
        if first[row]["accuracy"] is not None and last[row]["accuracy"] is not None:
            assert change == pytest.approx(100 * (last[row]["accuracy"] - first[row]["accuracy"]), abs=0.05)
    text = (out / "report.md").read_text()
    assert "| attribute | frames 1-4 | frames 9-12 | change (points) |" in text and "## Frames 9-12" in text
    assert (out / "contact_sheet.png").exists()
    for bad in ("1-4,1-4", "1-4,9-13", "1-4,"):
        assert main([*args[:-4], "--window", bad, "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_eval_truth_window_judges_the_same_span_of_the_rendered_clip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgegen.world import parse_prompt, render

    seen = _spy_on_judged_clips(monkeypatch)
    out = tmp_path / "late"
    args = ["eval", "--truth", "--no-roundtrip", "--n", "2", "--frames", "24", "--window", "17-24", "--no-rejection", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert "frames 17-24 of each clip" in report["source"]
    first = report["clip_results"][0]
    np.testing.assert_array_equal(seen[0], render(parse_prompt(first["prompt"]), first["seed"], 24, 64)[16:24])


def test_report_shows_the_standard_error_of_each_share() -> None:
    from edgegen.judge import standard_error

    assert standard_error(0, 0) is None and standard_error(5, 5) == 0.0
    assert standard_error(30, 40) == pytest.approx((0.75 * 0.25 / 40) ** 0.5)
    row = {"accuracy": 0.75, "correct": 30, "judged": 40}
    empty = {"accuracy": None, "correct": 0, "judged": 0}
    group = {name: dict(row) for name in ("colour", "shape", "size", "motion", "count", "consistent", "sharp", "passed")}
    report = {"clips": 40, "accuracy": {"all": group, "one_object": group, "two_objects": {k: empty for k in group}}}
    md = report_markdown(report)
    assert "| colour | 75.0% ± 6.8 (30/40) | 75.0% (30/40) | – |" in md
    assert "standard error" in md


def test_eval_progress_is_a_bar_with_rate_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from edgegen.cli import judge as judge_cli

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr(judge_cli.sys, "stderr", term)
    clip = np.zeros((4, 8, 8, 3), np.uint8)
    kept = judge_cli._Keep(iter([("a red circle", i, [clip]) for i in range(3)]), keep=2, total=3)
    assert [seed for _, seed, _ in kept] == [0, 1, 2]
    assert "0/3 [" in term.getvalue() and "clip/s" in term.getvalue()  # clips of the total, a rate (and ETA)
    assert kept.keys == [("a red circle", 0), ("a red circle", 1)]  # the contact sheet's clips are still kept
