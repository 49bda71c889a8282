"""The model that ships inside the package: it loads, streams, and stays inside its budgets.

These run the real shipped bundle (edgegen/assets/default/), the way a user gets it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgegen.bundle import default_bundle_path, load_bundle

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_BUDGET_BYTES = 40 * 2**20  # the "≤ 40 MB in all" (bundle + checkpoint)


def test_shipped_bundle_loads_with_checksums_and_fits_the_budget() -> None:
    bundle = load_bundle(default_bundle_path())
    assert {"fp32", "int8"} <= set(bundle.precisions)
    assert 2 in bundle.steps_available and {1, 4} <= set(bundle.steps_available)
    total = sum(p.stat().st_size for p in bundle.path.rglob("*") if p.is_file())
    assert (bundle.path / "checkpoint.safetensors").is_file()
    assert total <= SHIPPED_BUDGET_BYTES, f"shipped model is {total / 2**20:.1f} MiB"


@pytest.mark.parametrize("version", ["10.3", "11"])
def test_shipped_onnx_files_parse_on_tensorrt(version: str) -> None:
    pytest.importorskip("onnx")
    from edgegen.export.trt_check import check_trt

    bundle = load_bundle(default_bundle_path())
    checked = set()
    for precision in bundle.precisions:
        for name, entry in bundle.components[precision].items():  # every component the manifest lists
            problems = check_trt(bundle.path / entry.file_for("tensorrt"), version)
            assert not problems, f"{precision}/{name}: {problems[:3]}"
            checked.add(name)
    assert {"text_encoder", "context", "denoiser", "commit", "vae_decoder"} <= checked


def test_480_frames_torch_free_first_frame_early_and_memory_flat() -> None:
    """The runtime issue's check: torch unimportable, 480 frames from the shipped default; the
    first frame arrives in under 1/20 of the total time; RSS grows < 20 MB from frame 48 to 480."""
    script = textwrap.dedent("""
        import importlib.abc, json, sys, time

        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError(f"blocked: {name}", name=name)
                return None

        sys.meta_path.insert(0, NoTorch())
        from edgegen.runtime import Generator

        def rss_kib():
            for row in open("/proc/self/status"):
                if row.startswith("VmRSS:"):
                    return int(row.split()[1])

        gen = Generator.load()
        start = time.perf_counter()
        first = None
        rss = {}
        n = 0
        for frame in gen.stream("a red circle moving right", seed=0, frames=480):
            n += 1
            if n == 1:
                first = time.perf_counter() - start
            if n in (48, 480):
                rss[n] = rss_kib()
        total = time.perf_counter() - start
        print(json.dumps({"frames": n, "first": first, "total": total, "rss": rss,
                          "backend": gen.backend, "precision": gen.precision,
                          "torch": any(m == "torch" or m.startswith("torch.") for m in sys.modules)}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["frames"] == 480 and not result["torch"]
    assert result["first"] < result["total"] / 20, result
    assert (result["rss"]["480"] - result["rss"]["48"]) < 20 * 1024, result


def test_generate_cli_on_the_shipped_model(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    run = subprocess.run(
        [sys.executable, "-m", "edgegen", "generate", "a big violet star travelling to the left", "--frames", "24", "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    from edgegen.video import read_video

    frames, fps = read_video(out)
    assert frames.shape == (24, 64, 64, 3) and fps == pytest.approx(24, abs=0.5)
    summary = run.stderr.strip().splitlines()[-1]
    assert "ort-cpu" in summary and "first frame" in summary, summary


def test_inspect_shows_the_quantized_precision_readably(capsys: pytest.CaptureFixture[str]) -> None:
    from edgegen.cli import main

    capsys.readouterr()
    assert main(["inspect"]) == 0
    out = capsys.readouterr().out
    manifest = load_bundle(default_bundle_path()).manifest
    for record in manifest["precisions"].values():
        for comp in record["components"].values():
            for variant in comp.get("variants", {}).values():  # e.g. ORT CPU's own int8 denoiser
                assert f"variant: {variant['file']}" in out
        if "quality" in record:
            assert "quality: " in out
            for backend in record["quality"].get("passed_by_backend", {}):  # verdicts on a backend's own variant files
                assert f"{backend} (its own files)" in out
    assert '{"' not in out  # no raw JSON dumped into the text view (that is --json)
