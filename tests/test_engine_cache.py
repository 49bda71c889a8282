"""The TensorRT engine cache: keys, validity checks, atomic writes, locking. No TensorRT or GPU needed.

The TensorRT facts (version, GPU) are plain `TrtEnvironment` values here, which is exactly how the
backend hands them to the cache; the builder is replaced by a function returning fake plan bytes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from pathlib import Path

import pytest

from edgegen.bundle import load_bundle, write_manifest
from edgegen.runtime import engine_cache
from edgegen.runtime.backends import tensorrt as trt_backend
from edgegen.runtime.engine_cache import (
    BuildSettings,
    EngineCache,
    EngineSpec,
    TrtEnvironment,
    default_cache_dir,
    explain_mismatch,
    onnx_digest,
    profile_from_entry,
)

ORIN = TrtEnvironment(tensorrt="10.3.0", gpu="Orin", compute_capability="8.7", multiprocessors=8, total_memory=8 << 30)
RTX = TrtEnvironment(tensorrt="10.8.0", gpu="NVIDIA GeForce RTX 4070", compute_capability="8.9", multiprocessors=46, total_memory=12 << 30)
AGX_ORIN = dataclasses.replace(ORIN, multiprocessors=16, total_memory=64 << 30)  # same name and sm as an Orin Nano

DENOISER_IO = {
    "inputs": [
        {"name": "latent", "dtype": "float32", "shape": ["batch", 8, 16, 16]},
        {"name": "t", "dtype": "float32", "shape": ["batch"]},
        {"name": "text", "dtype": "float32", "shape": ["batch", 24, 64]},
        {"name": "text_pooled", "dtype": "float32", "shape": ["batch", 64]},
        {"name": "kv_cache", "dtype": "float32", "shape": ["batch", 4, 2, 3, 64, 64]},
        {"name": "cache_valid", "dtype": "float32", "shape": ["batch", 3]},
    ],
    "outputs": [
        {"name": "velocity", "dtype": "float32", "shape": ["batch", 8, 16, 16]},
        {"name": "kv_cache_out", "dtype": "float32", "shape": ["batch", 4, 2, 3, 64, 64]},
    ],
}


def make_bundle(
    root: Path,
    denoiser_bytes: bytes = b"denoiser-onnx-v1",
    extra_files: dict[str, bytes] | None = None,
    precisions: tuple[str, ...] = ("fp32", "fp16"),
):
    """A schema-valid bundle whose .onnx files are placeholder bytes (the cache only hashes them)."""
    root.mkdir(parents=True, exist_ok=True)
    files = {"tokenizer.json": b"{}", "text_encoder.onnx": b"te", "context.onnx": b"cx", "denoiser.onnx": denoiser_bytes,
             "commit.onnx": b"cm", "vae_decoder.onnx": b"vd"}
    files.update(extra_files or {})
    for name, data in files.items():
        (root / name).write_bytes(data)

    def comp(file: str, io: dict | None = None) -> dict:
        io = io or {"inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
                    "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 4]}]}
        return {"file": file, **io, "opset": 20}

    components = {"text_encoder": comp("text_encoder.onnx"), "context": comp("context.onnx"), "denoiser": comp("denoiser.onnx", DENOISER_IO),
                  "commit": comp("commit.onnx"), "vae_decoder": comp("vae_decoder.onnx")}
    manifest = {
        "model": {"name": "test", "config": {}},
        "video": {"height": 64, "width": 64, "chunk_frames": 4, "fps": 24},
        "latent": {"channels": 8, "height": 16, "width": 16},
        "cache": {"slots": 3, "tokens_per_slot": 64},
        "sampler": {"type": "rectified-flow-euler", "default_steps": 2, "schedules": {"2": [1.0, 0.5, 0.0]}, "t_ctx": 0.0},
        "tokenizer": {"file": "tokenizer.json", "max_len": 24},
        "precisions": {p: {"components": components} for p in precisions},
        "files": {name: {} for name in files},
        "provenance": {},
    }
    write_manifest(root, manifest)
    return load_bundle(root)


@pytest.fixture
def bundle(tmp_path: Path):
    return make_bundle(tmp_path / "bundle")


@pytest.fixture
def cache(tmp_path: Path) -> EngineCache:
    return EngineCache(tmp_path / "engines")


def spec_for(bundle, env: TrtEnvironment = ORIN, **kwargs) -> EngineSpec:
    return EngineSpec.for_component(bundle, kwargs.pop("component", "denoiser"), kwargs.pop("precision", "fp16"), env, **kwargs)


# ---------------------------------------------------------------------------------------------
# Keys


def test_every_key_field_changes_the_key(tmp_path: Path, bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    base = spec_for(bundle)
    other_bundle = make_bundle(tmp_path / "other", denoiser_bytes=b"denoiser-onnx-v2")
    variants = {
        "base": base,
        "component": spec_for(bundle, component="text_encoder"),
        "precision": spec_for(bundle, precision="fp32"),
        "onnx (another bundle)": spec_for(other_bundle),
        "profile (batch)": spec_for(bundle, batch=(1, 2, 4)),
        "tensorrt version": spec_for(bundle, dataclasses.replace(ORIN, tensorrt="10.3.1")),
        "gpu name": spec_for(bundle, dataclasses.replace(ORIN, gpu="Orin (nvgpu)")),
        "compute capability": spec_for(bundle, dataclasses.replace(ORIN, compute_capability="8.6")),
        "SM count": spec_for(bundle, dataclasses.replace(ORIN, multiprocessors=16)),
        "GPU memory": spec_for(bundle, dataclasses.replace(ORIN, total_memory=16 << 30)),
        "workspace": spec_for(bundle, settings=BuildSettings(workspace_bytes=512 << 20)),
        "optimization level": spec_for(bundle, settings=BuildSettings(optimization_level=5)),
    }
    keys = {name: spec.key() for name, spec in variants.items()}
    monkeypatch.setattr(engine_cache, "BUILD_RECIPE", engine_cache.BUILD_RECIPE + 1)
    keys["build recipe"] = spec_for(bundle).key()
    monkeypatch.undo()
    assert len(set(keys.values())) == len(keys), keys
    # ...and the key is a pure function of the fields: same inputs, same key.
    assert spec_for(bundle).key() == base.key()
    assert all(len(k) == 20 and int(k, 16) >= 0 for k in keys.values())


def test_profile_comes_from_the_manifest(bundle) -> None:
    entry = bundle.component("fp16", "denoiser")
    profile = {p.name: p for p in profile_from_entry(entry)}
    assert set(profile) == set(entry.input_names)
    for spec in entry.inputs:  # static dims as in the manifest, batch min = opt = max = 1
        p = profile[spec.name]
        assert p.min == p.opt == p.max == spec.concrete_shape(1)
    assert profile["kv_cache"].opt == (1, 4, 2, 3, 64, 64)
    ranged = {p.name: p for p in profile_from_entry(entry, batch=(1, 2, 4))}
    assert ranged["latent"].min == (1, 8, 16, 16)
    assert ranged["latent"].opt == (2, 8, 16, 16)
    assert ranged["latent"].max == (4, 8, 16, 16)
    with pytest.raises(AssertionError):
        profile_from_entry(entry, batch=(2, 1, 4))


def test_onnx_digest_hashes_the_bytes_on_disk(tmp_path: Path) -> None:
    """The key follows the file TensorRT parses, not only the manifest's record of it."""
    import hashlib

    bundle = make_bundle(tmp_path / "b")
    entry = bundle.component("fp16", "denoiser")
    assert onnx_digest(bundle, entry) == hashlib.sha256(b"denoiser-onnx-v1").hexdigest()
    unverified = load_bundle(bundle.path, verify_files=False)
    (bundle.path / "denoiser.onnx").write_bytes(b"denoiser-onnx-v2, changed after the manifest")
    with pytest.raises(engine_cache.BundleError, match=r"denoiser.onnx does not match its sha256 in the manifest"):
        onnx_digest(unverified, entry)
    with pytest.raises(engine_cache.BundleError):
        spec_for(unverified)


def test_onnx_digest_is_the_manifest_hash_plus_external_data(tmp_path: Path) -> None:
    plain = make_bundle(tmp_path / "plain")
    entry = plain.component("fp16", "denoiser")
    assert onnx_digest(plain, entry) == plain.file_sha256("denoiser.onnx")
    with_data = make_bundle(tmp_path / "data", extra_files={"denoiser.onnx.data": b"weights-1"})
    changed = make_bundle(tmp_path / "data2", extra_files={"denoiser.onnx.data": b"weights-2"})
    digest = onnx_digest(with_data, with_data.component("fp16", "denoiser"))
    assert digest != onnx_digest(plain, entry)  # same .onnx bytes, but it now has external weights
    assert digest != onnx_digest(changed, changed.component("fp16", "denoiser"))


def test_default_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGEGEN_CACHE", str(tmp_path / "root"))  # every edgegen cache (calibration's too)
    monkeypatch.setenv("EDGEGEN_CACHE_DIR", str(tmp_path / "mine"))  # the engine folder itself wins
    assert default_cache_dir() == tmp_path / "mine"
    assert EngineCache().root == tmp_path / "mine"
    monkeypatch.delenv("EDGEGEN_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "root" / "engines"
    monkeypatch.delenv("EDGEGEN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "edgegen" / "engines"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "edgegen" / "engines"


# ---------------------------------------------------------------------------------------------
# Validity


def test_store_then_load_is_a_hit_with_the_same_bytes(cache: EngineCache, bundle) -> None:
    spec = spec_for(bundle)
    assert cache.load(spec).status == "miss"
    path = cache.store(spec, b"PLAN" * 1000, build_seconds=1.25)
    found = cache.load(spec)
    assert (found.status, found.reason, found.plan, found.path) == ("hit", "", b"PLAN" * 1000, path)
    sidecar = json.loads(cache.sidecar_path(spec).read_text())
    assert sidecar["fields"] == spec.fields()
    assert sidecar["fields"]["gpu"] == "Orin" and sidecar["fields"]["tensorrt"] == "10.3.0"
    assert sidecar["plan"]["bytes"] == 4000 and sidecar["key"] == spec.key()
    assert not list(cache.root.glob("*.partial"))  # atomic writes leave no temporaries


def test_truncated_plan_is_stale_with_the_reason(cache: EngineCache, bundle) -> None:
    spec = spec_for(bundle)
    path = cache.store(spec, b"x" * 4096)
    path.write_bytes(b"x" * 100)  # e.g. a copy that was cut short
    found = cache.load(spec)
    assert found.status == "stale" and found.plan is None
    assert "truncated" in found.reason and "100 bytes" in found.reason and "4096" in found.reason


def test_corrupted_plan_of_the_same_size_is_stale(cache: EngineCache, bundle) -> None:
    spec = spec_for(bundle)
    path = cache.store(spec, b"x" * 4096)
    path.write_bytes(b"y" * 4096)
    found = cache.load(spec)
    assert found.status == "stale" and "corrupted" in found.reason and "sha256" in found.reason


def test_engine_from_another_gpu_in_this_slot_is_detected(cache: EngineCache, bundle) -> None:
    """A sidecar that says another GPU (e.g. a cache folder copied between machines) never reaches TensorRT."""
    mine = spec_for(bundle, ORIN)
    cache.store(mine, b"orin-plan")
    sidecar = cache.sidecar_path(mine)
    data = json.loads(sidecar.read_text())
    data["fields"]["gpu"], data["fields"]["compute_capability"] = "NVIDIA GeForce RTX 4070", "8.9"
    data["fields"]["multiprocessors"], data["fields"]["gpu_memory_bytes"] = 46, 12 << 30
    sidecar.write_text(json.dumps(data))
    found = cache.load(mine)
    assert found.status == "stale" and found.plan is None
    assert found.reason == "it was built for NVIDIA GeForce RTX 4070 (sm 8.9, 46 SMs, 12.0 GiB); this GPU is Orin (sm 8.7, 8 SMs, 8.0 GiB)"


def test_an_engine_from_another_board_with_the_same_gpu_name_is_not_used(cache: EngineCache, bundle) -> None:
    """Orin Nano, NX and AGX all report "Orin" at sm 8.7: the SM count and memory tell them apart."""
    cache.store(spec_for(bundle, AGX_ORIN), b"agx-plan")
    found = cache.load(spec_for(bundle, ORIN))
    assert found.status == "miss"
    assert "it was built for Orin (sm 8.7, 16 SMs, 64.0 GiB); this GPU is Orin (sm 8.7, 8 SMs, 8.0 GiB)" in found.reason
    assert cache.timing_cache_path(AGX_ORIN) != cache.timing_cache_path(ORIN)


def test_an_engine_from_an_older_build_recipe_is_rebuilt(cache: EngineCache, bundle) -> None:
    spec = spec_for(bundle)
    cache.store(spec, b"plan")
    sidecar = cache.sidecar_path(spec)
    data = json.loads(sidecar.read_text())
    del data["fields"]["recipe"]  # a sidecar written before the recipe was recorded
    sidecar.write_text(json.dumps(data))
    found = cache.load(spec)
    assert found.status == "stale"
    assert found.reason == f"it was built by edgegen's engine recipe 0; this edgegen builds with recipe {engine_cache.BUILD_RECIPE}"


@pytest.mark.parametrize(
    ("built_with", "reason_bits"),
    [
        (dataclasses.replace(ORIN, tensorrt="10.8.0"), ["TensorRT 10.8.0", "this is TensorRT 10.3.0"]),
        (RTX, ["TensorRT 10.8.0"]),  # version is checked first: engines never cross TensorRT versions
        (dataclasses.replace(ORIN, gpu="Jetson AGX Thor", compute_capability="11.0", multiprocessors=20),
         ["Jetson AGX Thor (sm 11.0, 20 SMs", "this GPU is Orin (sm 8.7, 8 SMs"]),
    ],
)
def test_a_miss_explains_the_engines_it_could_not_use(cache: EngineCache, bundle, built_with, reason_bits) -> None:
    cache.store(spec_for(bundle, built_with), b"other-plan")
    found = cache.load(spec_for(bundle, ORIN))
    assert found.status == "miss"
    assert "denoiser (fp16)" in found.reason
    for bit in reason_bits:
        assert bit in found.reason


def test_engine_from_another_bundle_is_explained(tmp_path: Path, cache: EngineCache, bundle) -> None:
    old = make_bundle(tmp_path / "old", denoiser_bytes=b"an older export")
    cache.store(spec_for(old), b"old-plan")
    found = cache.load(spec_for(bundle))
    assert found.status == "miss"
    assert "built from another denoiser.onnx" in found.reason
    assert onnx_digest(bundle, bundle.component("fp16", "denoiser"))[:12] in found.reason


def test_plain_miss_and_half_written_entries(cache: EngineCache, bundle) -> None:
    spec = spec_for(bundle)
    assert cache.load(spec).reason == f"no cached engine for denoiser (fp16) in {cache.root}"
    cache.store(spec, b"plan")
    cache.sidecar_path(spec).unlink()
    assert "has no sidecar" in cache.load(spec).reason
    cache.store(spec, b"plan")
    cache.plan_path(spec).unlink()
    assert "is missing" in cache.load(spec).reason
    cache.store(spec, b"plan")
    cache.sidecar_path(spec).write_text("{not json")
    found = cache.load(spec)
    assert found.status == "stale" and "unreadable" in found.reason


def test_explain_mismatch_names_each_field(bundle) -> None:
    base = spec_for(bundle).fields()
    assert explain_mismatch(base, base) is None
    bigger = spec_for(bundle, settings=BuildSettings(workspace_bytes=2048 << 20)).fields()
    assert explain_mismatch(bigger, base) == (
        "it was built with builder settings workspace 2048 MiB, optimization level 3; "
        "asked for workspace 1024 MiB, optimization level 3"
    )
    batched = spec_for(bundle, batch=(1, 1, 2)).fields()
    assert "latent:1x8x16x16..1x8x16x16..2x8x16x16" in explain_mismatch(batched, base)
    other = spec_for(bundle, component="vae_decoder").fields()
    assert "vae_decoder (fp16) engine" in explain_mismatch(other, base)


def test_timing_cache_is_per_tensorrt_and_gpu(cache: EngineCache) -> None:
    assert cache.read_timing_cache(ORIN) == b""
    cache.write_timing_cache(ORIN, b"orin-timings")
    assert cache.read_timing_cache(ORIN) == b"orin-timings"
    assert cache.read_timing_cache(RTX) == b""
    assert cache.timing_cache_path(ORIN) != cache.timing_cache_path(RTX)
    assert " " not in cache.timing_cache_path(RTX).name


# ---------------------------------------------------------------------------------------------
# The backend's build-or-load logic, with a fake builder


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch, cache: EngineCache):
    """A TensorRTBackend on a fake Orin whose builder returns bytes and counts its calls."""
    calls: list[str] = []

    def fake_build(onnx_path, entry, spec, timing_cache, progress=None, *, device=0):
        calls.append(spec.component)
        time.sleep(0.05)  # long enough for a concurrent caller to arrive while we hold the lock
        return f"plan:{spec.key()}".encode(), timing_cache + b"+" + spec.component.encode()

    monkeypatch.setattr(trt_backend, "build_plan", fake_build)
    monkeypatch.setattr(trt_backend.TensorRTBackend, "environment", lambda self: ORIN)
    backend = trt_backend.TensorRTBackend(cache=cache)
    return backend, calls


def test_ensure_engine_builds_once_then_hits(fake_trt, bundle, cache: EngineCache, caplog: pytest.LogCaptureFixture) -> None:
    backend, calls = fake_trt
    with caplog.at_level(logging.INFO):
        first = backend.ensure_engine(bundle, "denoiser", "fp16")
    assert first.built and calls == ["denoiser"]
    assert first.plan == cache.plan_path(first.spec).read_bytes()
    assert "building the TensorRT engine for denoiser (fp16): no cached engine" in caplog.text
    second = backend.ensure_engine(bundle, "denoiser", "fp16")
    assert not second.built and second.plan == first.plan and calls == ["denoiser"]
    forced = backend.ensure_engine(bundle, "denoiser", "fp16", force=True)
    assert forced.built and forced.reason == "forced rebuild (--force)" and len(calls) == 2
    assert cache.read_timing_cache(ORIN) == b"+denoiser+denoiser"  # the timing cache carries over


def test_ensure_engine_rebuilds_a_truncated_engine_and_says_why_in_one_line(
    fake_trt, bundle, cache: EngineCache, caplog: pytest.LogCaptureFixture
) -> None:
    backend, calls = fake_trt
    result = backend.ensure_engine(bundle, "denoiser", "fp16")
    result.path.write_bytes(result.plan[:5])
    with caplog.at_level(logging.INFO):
        again = backend.ensure_engine(bundle, "denoiser", "fp16")
    assert again.built and len(calls) == 2 and cache.load(again.spec).status == "hit"
    lines = [r.getMessage() for r in caplog.records if "rebuilding" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "truncated" in lines[0]


def test_concurrent_builds_of_one_engine_build_once(fake_trt, bundle, cache: EngineCache) -> None:
    backend, calls = fake_trt
    results = []
    threads = [threading.Thread(target=lambda: results.append(backend.ensure_engine(bundle, "denoiser", "fp16"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["denoiser"]  # the lock made the other three wait, then hit the cache
    assert sorted(r.built for r in results) == [False, False, False, True]
    assert len({r.plan for r in results}) == 1


def test_fp8_on_a_gpu_without_fp8_is_refused_before_building(fake_trt, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend, calls = fake_trt
    bundle = make_bundle(tmp_path / "fp8", precisions=("fp16", "fp8"))
    with pytest.raises(trt_backend.UserError, match=r"fp8 needs FP8 tensor cores .* Orin is sm 8.7: use --precision int8 or fp16"):
        backend.ensure_engine(bundle, "denoiser", "fp8")
    assert calls == []
    monkeypatch.setattr(trt_backend.TensorRTBackend, "environment", lambda self: RTX)  # sm 8.9 has FP8
    assert backend.ensure_engine(bundle, "denoiser", "fp8").built and calls == ["denoiser"]


def test_module_has_no_tensorrt_import_at_top_level() -> None:
    source = Path(engine_cache.__file__).read_text() + Path(trt_backend.__file__).read_text()
    tops = [line for line in source.splitlines() if line.startswith(("import tensorrt", "from cuda", "import cuda"))]
    assert tops == []
