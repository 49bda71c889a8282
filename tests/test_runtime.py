"""The torch-free runtime: streaming, determinism, threads, hooks, backend registry, precision rule."""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgegen.bundle import MANIFEST, load_bundle, write_manifest
from edgegen.errors import BackendUnavailable, PromptError, UserError
from edgegen.runtime import backends
from edgegen.runtime.generator import (
    ChunkEvent,
    Generator,
    Hooks,
    StepEvent,
    TextEvent,
    choose_precision,
)

PROMPT = "a red ball moving right"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gen(tiny_bundle: Path) -> Generator:
    return Generator.load(tiny_bundle, backend="ort-cpu")


@pytest.mark.parametrize("frames", [1, 3, 4, 5, 9])
def test_stream_yields_exactly_n_frames(gen: Generator, frames: int) -> None:
    out = list(gen.stream(PROMPT, seed=1, frames=frames))
    assert len(out) == frames
    h, w = gen.bundle.video["height"], gen.bundle.video["width"]
    assert all(f.shape == (h, w, 3) and f.dtype == np.uint8 for f in out)


def test_same_seed_same_frames_other_seed_other_frames(gen: Generator) -> None:
    a = gen.generate(PROMPT, seed=5, frames=9)
    b = gen.generate(PROMPT, seed=5, frames=9)
    c = gen.generate(PROMPT, seed=6, frames=9)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_a_shorter_clip_is_a_prefix_of_a_longer_one(gen: Generator) -> None:
    np.testing.assert_array_equal(gen.generate(PROMPT, seed=2, frames=5), gen.generate(PROMPT, seed=2, frames=12)[:5])


def test_two_threads_match_sequential_runs(gen: Generator) -> None:
    prompts = [PROMPT, "the big blue star, sliding downward"]
    expected = [gen.generate(p, seed=i, frames=12) for i, p in enumerate(prompts)]
    results: list[np.ndarray | None] = [None, None]

    def work(i: int) -> None:
        results[i] = gen.generate(prompts[i], seed=i, frames=12)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_unbounded_stream_keeps_fixed_state(gen: Generator) -> None:
    stream = gen.stream(PROMPT, seed=0, frames=None)
    frames = list(itertools.islice(stream, 30))  # 8 chunks: more than the cache has slots
    stream.close()
    assert len(frames) == 30
    slots = gen.bundle.manifest["cache"]["slots"]
    assert gen.bundle.component(gen.precision, "context").input("kv_cache").shape[3] == slots


def test_hooks_report_steps_commits_and_chunks(gen: Generator) -> None:
    events: list[object] = []
    list(gen.stream(PROMPT, frames=9, steps=2, hooks=events.append))  # 3 chunks
    steps = [e for e in events if isinstance(e, StepEvent)]
    chunks = [e for e in events if isinstance(e, ChunkEvent)]
    assert sum(isinstance(e, TextEvent) for e in events) == 1
    assert len(steps) == 3 * 2 + 2  # 2 steps per chunk, a commit before chunks 2 and 3
    assert [c.frames for c in chunks] == [4, 4, 1] and chunks[-1].frames_total == 9
    assert all(c.seconds >= c.decode_seconds >= 0 for c in chunks)

    class OnlyChunks:
        def __init__(self) -> None:
            self.n = 0

        def on_chunk(self, event: ChunkEvent) -> None:
            self.n += 1

    only = OnlyChunks()
    list(gen.stream(PROMPT, frames=5, hooks=only))
    assert only.n == 2
    counting = type("Counting", (Hooks,), {"on_step": lambda self, e: None})()
    list(gen.stream(PROMPT, frames=1, hooks=counting))


def test_steps_change_the_result_and_are_validated(gen: Generator) -> None:
    events: list[object] = []
    one = gen.generate(PROMPT, frames=4, steps=1)
    four = gen.generate(PROMPT, frames=4, steps=4, hooks=events.append)
    assert sum(isinstance(e, StepEvent) for e in events) == 4
    assert one.shape == four.shape and not np.array_equal(one, four)
    with pytest.raises(UserError, match="valid: 1, 2, 4"):
        gen.stream(PROMPT, steps=3)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"frames": 0}, "frames"),
    ({"frames": -2}, "frames"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**63}, "seed"),
    ({"frames": 2.5}, "frames"),
])
def test_bad_arguments_are_one_line_errors(gen: Generator, kwargs: dict, match: str) -> None:
    with pytest.raises(UserError, match=match) as exc:
        gen.stream(PROMPT, **kwargs)
    assert "\n" not in str(exc.value)


def test_prompt_validation_names_the_word(gen: Generator) -> None:
    with pytest.raises(PromptError, match="'zebra'"):
        gen.stream("a zebra moving right")
    with pytest.raises(PromptError):
        gen.stream("   ")


def test_fp16_precision_streams_close_to_fp32(tiny_bundle: Path, gen: Generator) -> None:
    from edgegen.export.parity import psnr

    half = Generator.load(tiny_bundle, backend="ort-cpu", precision="fp16")
    assert half.precision == "fp16"
    assert psnr(half.generate(PROMPT, frames=8), gen.generate(PROMPT, frames=8)) > 35


# -- backend registry ----------------------------------------------------------------------


def test_unknown_backend_lists_the_valid_ones() -> None:
    with pytest.raises(UserError) as exc:
        backends.resolve("cuda9000")
    assert "ort-cpu" in str(exc.value) and "tensorrt" in str(exc.value) and "auto" in str(exc.value)


def test_auto_picks_an_available_backend_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="edgegen.runtime.backends"):
        backend = backends.resolve("auto")
    assert backend.name in backends.available_backends()
    assert f"using {backend.name}" in caplog.text


def test_registry_names_and_lazy_import() -> None:
    assert backends.names() == ("ort-cpu", "ort-cuda", "tensorrt", "trt-rtx", "torch")
    assert backends.status("ort-cpu")[0] is True


# -- the default-precision rule --------------------------------------------------------------


class _FakeBackend:
    name = "fake"
    precisions = ("int8", "fp32", "fp16")


def _with_precision(root: Path, name: str, quality: dict | None = None) -> None:
    data = json.loads((root / MANIFEST).read_text())
    data["precisions"][name] = json.loads(json.dumps(data["precisions"]["fp32"]))
    if quality is not None:
        data["precisions"][name]["quality"] = quality
    write_manifest(root, data)


def test_default_precision_is_the_fastest_that_passes(bundle_copy: Path) -> None:
    assert choose_precision(load_bundle(bundle_copy), _FakeBackend())[0] == "fp32"
    _with_precision(bundle_copy, "int8", {"passed": True, "psnr_db": 38.0})
    assert choose_precision(load_bundle(bundle_copy), _FakeBackend())[0] == "int8"
    _with_precision(bundle_copy, "int8", {"passed": False, "psnr_db": 20.0})
    precision, why = choose_precision(load_bundle(bundle_copy), _FakeBackend())
    assert precision == "fp32" and "int8 failed" in why
    with pytest.raises(UserError, match="fp32, fp16, int8"):
        choose_precision(load_bundle(bundle_copy), _FakeBackend(), "fp8")


def test_default_precision_reads_the_verdict_on_the_backends_own_files(bundle_copy: Path) -> None:
    """int8's portable files failed, the fake backend's own files passed: it runs int8, others do not."""
    _with_precision(bundle_copy, "int8", {"passed": False, "passed_by_backend": {"fake": True}})
    assert choose_precision(load_bundle(bundle_copy), _FakeBackend())[0] == "int8"

    class Other(_FakeBackend):
        name = "other"

    precision, why = choose_precision(load_bundle(bundle_copy), Other())
    assert precision == "fp32" and "int8 failed" in why
    _with_precision(bundle_copy, "int8", {"passed": True, "passed_by_backend": {"fake": False}})
    assert choose_precision(load_bundle(bundle_copy), _FakeBackend())[0] == "fp32"
    assert choose_precision(load_bundle(bundle_copy), Other())[0] == "int8"


def test_ort_cpu_loads_its_variant_file(bundle_copy: Path) -> None:
    from edgegen.runtime.backends.ort_cpu import OrtCpuBackend

    data = json.loads((bundle_copy / MANIFEST).read_text())
    data["precisions"]["fp32"]["components"]["vae_decoder"]["variants"] = {"ort-cpu": {"file": "vae_decoder.fp16.onnx"}}
    write_manifest(bundle_copy, data)
    bundle = load_bundle(bundle_copy)
    assert bundle.component("fp32", "vae_decoder").file_for("tensorrt") == "vae_decoder.onnx"
    assert OrtCpuBackend().open(bundle, "vae_decoder", "fp32").path.name == "vae_decoder.fp16.onnx"
    assert OrtCpuBackend().open(bundle, "denoiser", "fp32").path.name == "denoiser.onnx"


# -- torch-free ------------------------------------------------------------------------------


def test_runtime_streams_with_torch_unimportable(tiny_bundle: Path) -> None:
    script = textwrap.dedent(f"""
        import importlib.abc, sys

        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError(f"blocked: {{name}}", name=name)
                return None

        sys.meta_path.insert(0, NoTorch())
        import edgegen.runtime
        from edgegen.runtime.generator import Generator
        from edgegen.errors import BackendUnavailable
        gen = Generator.load({str(tiny_bundle)!r}, backend="auto")
        frames = list(gen.stream("a red ball moving right", seed=0, frames=5))
        assert len(frames) == 5 and frames[0].dtype.name == "uint8"
        import hashlib, numpy
        digest = hashlib.sha256(numpy.stack(frames).tobytes()).hexdigest()
        try:
            edgegen.runtime.backends.resolve("torch")
        except BackendUnavailable as exc:
            assert "edgegen[train]" in str(exc), exc
        else:
            raise AssertionError("the torch backend resolved without torch")
        assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        print("ok", gen.backend, gen.precision, digest)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok ort-cpu fp32")
    # same prompt + seed + backend + precision: the same frames in another process
    here = Generator.load(tiny_bundle, backend="ort-cpu").generate("a red ball moving right", seed=0, frames=5)
    assert out.stdout.split()[-1] == hashlib.sha256(here.tobytes()).hexdigest()


def test_no_torch_import_anywhere_under_runtime() -> None:
    for path in (ROOT / "runtime").rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            assert not stripped.startswith(("import torch", "from torch")), f"{path}: {line}"


def test_backend_unavailable_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(backends.REGISTRY, "torch", "edgegen_no_such_module:X")
    with pytest.raises(BackendUnavailable, match=r"edgegen\[train\]"):
        backends.resolve("torch")


class _HostBinding:
    """A DeviceBinding over a plain session, with host arrays standing in for device buffers."""

    def __init__(self, inner: object, log: list[str]) -> None:
        self.inner, self.log, self.buffers, self.last = inner, log, {}, {}

    def write(self, name: str, value: np.ndarray) -> None:
        self.log.append(name)
        self.buffers[name] = np.array(value, copy=True)

    def step(self, read=()) -> dict[str, np.ndarray]:
        self.last = self.inner.run(self.buffers)
        return {name: self.last[name] for name in read}

    def carry(self, output: str, input: str) -> None:
        self.buffers[input] = self.last[output]

    def close(self) -> None:
        pass


class _Bindable:
    def __init__(self, inner: object, log: list[str]) -> None:
        self.inner, self.log = inner, log

    def run(self, feeds):
        return self.inner.run(feeds)

    def bind(self) -> _HostBinding:
        return _HostBinding(self.inner, self.log)


def test_bound_denoiser_matches_the_host_path_and_uploads_context_once_per_chunk(gen: Generator) -> None:
    import dataclasses

    writes: list[str] = []
    sessions = {**gen.sessions, "denoiser": _Bindable(gen.sessions["denoiser"], writes), "vae_decoder": _Bindable(gen.sessions["vae_decoder"], [])}
    bound = dataclasses.replace(gen, sessions=sessions)
    np.testing.assert_array_equal(bound.generate(PROMPT, seed=3, frames=12, steps=2), gen.generate(PROMPT, seed=3, frames=12, steps=2))
    assert writes.count("context") == 3 and writes.count("latent") == 3 * 2  # 3 chunks × 2 steps; context per chunk
    assert writes.count("text_pooled") == 1


# -- ORT CPU thread plans ------------------------------------------------------------------------


class _SleepySession:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls = 0

    def run(self, feeds: dict) -> dict:
        self.calls += 1
        time.sleep(self.seconds)
        return {}


def test_fastest_plan_is_the_one_with_the_quicker_calls() -> None:
    from edgegen.runtime.backends.ort_cpu import ThreadPlan, fastest

    slow, quick = _SleepySession(0.004), _SleepySession(0.0005)
    plans = {ThreadPlan(1): slow, ThreadPlan(2, spin=True): quick}
    assert fastest(plans, {}) == ThreadPlan(2, spin=True)
    plans = {ThreadPlan(1): quick, ThreadPlan(2, spin=True): slow}
    assert fastest(plans, {}) == ThreadPlan(1)
    assert slow.calls == quick.calls > 10  # interleaved, the same number of calls each


def test_fastest_plan_keeps_the_wider_plan_within_the_margin() -> None:
    from edgegen.runtime.backends.ort_cpu import ThreadPlan, fastest

    one, two = ThreadPlan(1), ThreadPlan(2, spin=True)
    assert fastest({one: _SleepySession(0.0098), two: _SleepySession(0.01)}, {}, rounds=3, calls=3) == two  # 2%: within noise
    assert fastest({one: _SleepySession(0.002), two: _SleepySession(0.006)}, {}, rounds=3, calls=3) == one  # a busy machine


def test_thread_plan_options_spin_only_within_a_run() -> None:
    from edgegen.runtime.backends.ort_cpu import ThreadPlan, candidate_plans

    spin = ThreadPlan(2, spin=True).options()
    assert spin.intra_op_num_threads == 2
    assert spin.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert spin.get_session_config_entry("session.force_spinning_stop") == "1"
    assert ThreadPlan(1).options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert candidate_plans(1) == (ThreadPlan(1),)
    assert candidate_plans(4) == (ThreadPlan(1), ThreadPlan(4, spin=True))


def test_ort_cpu_measures_a_plan_per_component_unless_threads_are_fixed(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgegen.runtime.backends import ort_cpu

    bundle = load_bundle(tiny_bundle)
    monkeypatch.setattr(ort_cpu, "physical_cores", lambda: 2)
    auto = ort_cpu.OrtCpuBackend()
    session = auto.open(bundle, "denoiser", "fp32")
    assert auto.plans["denoiser"] in ort_cpu.candidate_plans(2)
    auto.open(bundle, "text_encoder", "fp32")
    assert auto.plans["text_encoder"] == ort_cpu.ThreadPlan(1)  # once per stream: not measured
    fixed = ort_cpu.OrtCpuBackend(threads=1)
    monkeypatch.setattr(ort_cpu, "fastest", lambda *a, **k: pytest.fail("fixed threads must not be measured"))
    reference = fixed.open(bundle, "denoiser", "fp32")
    assert fixed.plans["denoiser"] == ort_cpu.ThreadPlan(1)
    feeds = ort_cpu.sample_feeds(session.entry)
    np.testing.assert_allclose(session.run(feeds)["velocity"], reference.run(feeds)["velocity"], rtol=1e-5, atol=1e-5)


def test_generator_threads_fix_the_ort_cpu_plan_and_are_refused_elsewhere(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgegen.runtime.backends import ort_cpu

    monkeypatch.setattr(ort_cpu, "fastest", lambda *a, **k: pytest.fail("fixed threads must not be measured"))
    one = Generator.load(tiny_bundle, backend="ort-cpu", threads=1).generate(PROMPT, seed=4, frames=5).astype(int)
    two = Generator.load(tiny_bundle, backend="ort-cpu", threads=2).generate(PROMPT, seed=4, frames=5).astype(int)
    assert np.abs(one - two).max() <= 1  # the same graphs; only the GEMM split over threads may differ
    with pytest.raises(UserError, match="threads=0"):
        Generator.load(tiny_bundle, backend="ort-cpu", threads=0)
    monkeypatch.setattr(backends, "resolve", lambda name: _FakeBackend())
    with pytest.raises(UserError, match="does not take a CPU thread count"):
        Generator.load(tiny_bundle, backend="ort-cpu", threads=1)


def test_step_profile_tool_sums_kernel_time_per_operator(tiny_bundle: Path) -> None:
    """tools/step_profile.py: ORT's profile of the per-step graph, summed per operator type."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "tools" / "step_profile.py"
    spec = importlib.util.spec_from_file_location("step_profile", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    from edgegen.bundle import load_bundle

    per_op = tool.profile(load_bundle(tiny_bundle), "fp32", calls=3, warmup=2)
    assert per_op and all(us >= 0 for us in per_op.values())
    assert any(op in tool.MATRIX_OPS for op in per_op)  # the DiT's linear layers are there
    share = tool.report("fp32", per_op)
    assert 0.0 < share < 1.0
