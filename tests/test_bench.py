"""`edgegen bench` on the tiny exported bundle: structure, not speed (timings on CI are noise).

One real run of the CLI (module-scoped, tiny repeat counts) feeds most tests: the JSON validates
against the documented schema, percentiles are ordered, every combination that cannot run is
listed with its reason, speed-ups against the torch fp32 baseline are computed where it ran, and
the PNG chart is written. Unit tests cover the statistics and the ratio arithmetic directly.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edgegen.bundle import load_bundle
from edgegen.cli import bench as cli_bench
from edgegen.cli import main
from edgegen.runtime import bench
from edgegen.runtime.generator import Generator

FRAMES, REPEAT, WARMUP = 8, 2, 1  # 2 chunks: every component (the commit pass too) is timed


@pytest.fixture(scope="module")
def bundle_dir(tiny_bundle: Path) -> Path:
    return tiny_bundle


@pytest.fixture(scope="module")
def run(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real `edgegen bench` run: its exit code, stdout, JSON report and chart path."""
    out = tmp_path_factory.mktemp("bench")
    args = ["bench", "--bundle", str(bundle_dir), "--frames", str(FRAMES), "--repeat", str(REPEAT),
            "--warmup", str(WARMUP), "--precision", "fp32,fp8", "--json", str(out / "b.json"), "--plot", str(out / "b.png")]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(args)
    report = json.loads((out / "b.json").read_text()) if code == 0 else None
    return {"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(), "report": report, "out": out}


def _ok(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in report["results"] if r["status"] == "ok"]


# ---------------------------------------------------------------------------------------------
# The real run


def test_report_validates_against_the_schema(run: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    assert run["code"] == 0
    jsonschema.validate(run["report"], bench.REPORT_SCHEMA)
    assert run["report"]["settings"] == {"steps": 2, "frames": FRAMES, "repeat": REPEAT, "warmup": WARMUP,
                                         "prompt": bench.DEFAULT_PROMPT, "seed": 0, "threads": None}


def test_ort_cpu_runs_and_every_component_is_timed(run: dict[str, Any]) -> None:
    ort = next(r for r in _ok(run["report"]) if r["backend"] == "ort-cpu")
    lat, steps = ort["latency"], run["report"]["settings"]["steps"]
    chunks = FRAMES // 4
    assert lat["text_encoder"]["n"] == REPEAT
    assert lat["denoise_step"]["n"] == REPEAT * chunks * steps
    assert [s["n"] for s in ort["denoise_steps"]] == [REPEAT * chunks] * steps
    assert lat["commit"]["n"] == REPEAT * (chunks - 1)  # the last chunk's commit is skipped
    assert lat["vae_decode"]["n"] == REPEAT * chunks
    assert lat["first_frame"]["n"] == lat["generate"]["n"] == REPEAT
    assert {k: v["n"] for k, v in ort["cpu_latency"].items()} == {k: lat[k]["n"] for k in bench.CPU_COMPONENTS}
    assert ort["cpu"]["process_cpu_s"] == pytest.approx(ort["cpu_latency"]["generate"]["mean_ms"] * REPEAT / 1e3)
    assert ort["throughput"]["fps"] == pytest.approx(FRAMES / (lat["generate"]["p50_ms"] / 1e3))
    assert ort["throughput"]["realtime_factor"] == pytest.approx(ort["throughput"]["fps"] / 24)
    assert ort["memory"]["peak_rss_bytes"] >= ort["memory"]["rss_start_bytes"] > 0
    assert set(ort["load"]["sessions_s"]) == {"text_encoder", "context", "denoiser", "commit", "vae_decoder"}


def test_percentiles_are_ordered(run: dict[str, Any]) -> None:
    for result in _ok(run["report"]):
        for stats in [*result["latency"].values(), *result["denoise_steps"]]:
            values = [stats[k] for k in ("min_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms")]
            assert values == sorted(values) and values[0] > 0
            assert stats["min_ms"] <= stats["mean_ms"] <= stats["max_ms"]
        # a whole clip takes longer than any single call inside it
        assert result["latency"]["generate"]["min_ms"] > result["latency"]["denoise_step"]["min_ms"]


def test_unrunnable_combinations_are_listed_with_reasons(run: dict[str, Any]) -> None:
    report = run["report"]
    not_run = [r for r in report["results"] if r["status"] != "ok"]
    assert all(isinstance(r["reason"], str) and r["reason"] for r in not_run)
    ort_fp8 = next(r for r in not_run if (r["backend"], r["precision"]) == ("ort-cpu", "fp8"))
    assert ort_fp8["status"] == "skipped" and "the bundle has no fp8 precision" in ort_fp8["reason"]
    for r in not_run:  # the table names each one with its reason, and nothing else repeats it
        assert f"{r['status']}: {r['backend']}" in run["stdout"] and r["reason"] in run["stdout"]
        assert r["reason"] not in run["stderr"]
    assert report["results"][0]["backend"] == "torch" and report["results"][0]["precision"] == "fp32"


def test_speedups_against_the_torch_baseline(run: dict[str, Any]) -> None:
    results = run["report"]["results"]
    base = results[0]
    for result in _ok(run["report"]):
        for name, ratio in result["speedup"].items():
            if base["status"] != "ok" or result["latency"][name] is None:
                assert ratio is None
                continue
            own, ref = result["latency"][name], base["latency"][name]
            assert ratio["p50"] == pytest.approx(ref["p50_ms"] / own["p50_ms"])
            assert ratio["p95"] == pytest.approx(ref["p95_ms"] / own["p95_ms"])
        for name, ratio in result["cpu_speedup"].items():
            if base["status"] != "ok" or result["cpu_latency"][name] is None:
                assert ratio is None
            else:
                assert ratio == pytest.approx(base["cpu_latency"][name]["p50_ms"] / result["cpu_latency"][name]["p50_ms"])
    if base["status"] == "ok":
        assert base["speedup"]["denoise_step"] == {"p50": 1.0, "p95": 1.0}


def test_table_and_chart(run: dict[str, Any]) -> None:
    assert "denoise_step" in run["stdout"] and "p50 ms" in run["stdout"] and "real-time factor" in run["stdout"]
    with Image.open(run["out"] / "b.png") as image:
        assert image.format == "PNG" and image.width > 200 and image.height > 100
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels == cli_bench._COLOURS["denoise_step"]).all(-1).any()  # the bars were drawn


def test_existing_outputs_need_force(run: dict[str, Any], bundle_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = run["out"] / "b.json"
    before = target.read_bytes()
    assert main(["bench", "--bundle", str(bundle_dir), "--json", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgegen: error:") and "--force" in err and len(err.splitlines()) == 1
    assert target.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "nonesuch"], "unknown backend 'nonesuch'"),
        (["--precision", "fp64"], "unknown precision 'fp64'"),
        (["--steps", "3"], "--steps 3 is not supported"),
        (["--repeat", "0"], "--repeat must be at least 1"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--json", "same.out", "--plot", "same.out"], "--json and --plot both name"),
        (["--plot", "chart.txt"], "the chart is a PNG image; name a file ending in .png"),
        (["--threads", "1000000"], "--threads 1000000 is more than 4x this machine's"),
        (["--frames", "0"], "--frames 0 is out of range; use 1 to 10000"),
        (["--frames", "10001"], "--frames 10001 is out of range; use 1 to 10000"),
        (["--prompt", ""], "the prompt is empty"),
        (["--prompt", "a red zebra moving right"], "unknown word 'zebra'"),
        (["--backend", "ort-cpu", "--precision", "fp8"], "nothing to benchmark: cannot run: ort-cpu fp8: the bundle has no fp8 precision"),
    ],
)
def test_bad_flags_are_one_line_errors(args: list[str], message: str, bundle_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--bundle", str(bundle_dir), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_every_requested_combination_failing_exits_1_after_the_table(
    bundle_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def all_fail(specs: list[bench.RunSpec], *_: object, **__: object) -> list[dict[str, Any]]:
        return [{"backend": s.backend, "precision": s.precision, "status": "failed", "reason": "it broke"} for s in specs]

    monkeypatch.setattr(bench, "measure_interleaved", all_fail)
    assert main(["bench", "--bundle", str(bundle_dir), "--backend", "ort-cpu", "--precision", "fp32"]) == 1
    captured = capsys.readouterr()
    assert "failed: ort-cpu fp32: it broke" in captured.out
    err = captured.err.strip().splitlines()
    assert err[-1] == "edgegen: error: none of the 1 requested combinations ran; the reasons are listed above"


# ---------------------------------------------------------------------------------------------
# Units


def test_summarize_reports_milliseconds_and_ordered_percentiles() -> None:
    stats = bench.summarize([0.001 * i for i in range(1, 101)])
    assert stats is not None and stats["n"] == 100
    assert stats["min_ms"] == pytest.approx(1.0) and stats["max_ms"] == pytest.approx(100.0)
    assert stats["mean_ms"] == pytest.approx(50.5)
    assert stats["p50_ms"] == pytest.approx(50.5) and stats["p99_ms"] == pytest.approx(99.01)
    assert bench.summarize([]) is None


def _result(backend: str, precision: str, p50: float, status: str = "ok") -> dict[str, Any]:
    stats = {"p50_ms": p50, "p95_ms": 2 * p50}
    latency = {name: dict(stats) for name in bench.COMPONENTS}
    latency["commit"] = None
    cpu = {name: {"p50_ms": p50 / 4, "p95_ms": p50 / 2} for name in bench.CPU_COMPONENTS}
    return {"backend": backend, "precision": precision, "status": status, "reason": None, "latency": latency, "cpu_latency": cpu}


def test_add_speedups_divides_the_baseline_by_each_result() -> None:
    results = [_result("torch", "fp32", 8.0), _result("ort-cpu", "int8", 2.0), _result("ort-cpu", "fp32", 4.0)]
    bench.add_speedups(results)
    assert results[1]["speedup"]["denoise_step"] == {"p50": 4.0, "p95": 4.0}
    assert results[2]["speedup"]["generate"] == {"p50": 2.0, "p95": 2.0}
    assert results[0]["speedup"]["vae_decode"] == {"p50": 1.0, "p95": 1.0}
    assert results[1]["speedup"]["commit"] is None  # no samples: no ratio
    assert results[1]["cpu_speedup"]["denoise_step"] == 4.0 and results[0]["cpu_speedup"]["generate"] == 1.0


def test_add_speedups_without_a_baseline_gives_none() -> None:
    results = [_result("torch", "fp32", 8.0, status="skipped"), _result("ort-cpu", "fp32", 4.0)]
    bench.add_speedups(results)
    assert "speedup" not in results[0]
    assert all(v is None for v in [*results[1]["speedup"].values(), *results[1]["cpu_speedup"].values()])


def test_recorder_sees_every_call_of_a_real_stream(bundle_dir: Path) -> None:
    gen = Generator.load(load_bundle(bundle_dir), backend="ort-cpu", precision="fp32")
    recorder = bench.Recorder(steps=2)
    stream = gen.stream(bench.DEFAULT_PROMPT, frames=12, steps=2, hooks=recorder)  # 3 chunks
    recorder.begin()
    frames = list(stream)
    assert len(frames) == 12
    assert len(recorder.text) == 1 and [len(s) for s in recorder.steps] == [3, 3]
    assert len(recorder.commit) == 2 and len(recorder.decode) == 3
    assert len(recorder.first_frame) == 1 and len(recorder.later_chunks) == 2
    assert recorder.first_frame[0] > recorder.text[0] + recorder.steps[0][0]
    assert {k: len(v) for k, v in recorder.cpu.items()} == {"text_encoder": 1, "denoise_step": 6, "commit": 2, "vae_decode": 3}
    assert all(t >= 0 for v in recorder.cpu.values() for t in v)


def test_a_failing_worker_is_reported_and_the_others_go_on(bundle_dir: Path) -> None:
    """The fp8 worker fails at load (the bundle has no fp8); the fp32 one still runs its rounds."""
    specs = [bench.RunSpec(str(bundle_dir), "ort-cpu", p, steps=1, frames=4) for p in ("fp8", "fp32")]
    failed, ok = bench.measure_interleaved(specs, warmup=0, repeat=2)
    assert failed["status"] == "failed" and "fp8" in failed["reason"]
    assert ok["status"] == "ok" and ok["latency"]["generate"]["n"] == 2 and ok["latency"]["commit"] is None
