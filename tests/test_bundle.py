"""The bundle format: load, validate, and one-line errors that name the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from edgegen import bundle as bundle_mod
from edgegen.bundle import (
    COMPONENTS,
    MANIFEST,
    SCHEMA_VERSION,
    load_bundle,
    thaw,
    validate_manifest,
    write_manifest,
)
from edgegen.errors import BundleError


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def _edit_manifest(root: Path, edit) -> None:
    data = json.loads((root / MANIFEST).read_text())
    edit(data)
    (root / MANIFEST).write_text(json.dumps(data))


def test_load_exposes_the_manifest(tiny_bundle: Path) -> None:
    b = load_bundle(tiny_bundle)
    assert b.precisions == ("fp32", "fp16")
    assert set(b.components["fp32"]) == set(COMPONENTS)
    den = b.component("fp32", "denoiser")
    assert den.input_names == ("latent", "t", "text_pooled", "context", "context_bias")
    assert den.output_names == ("velocity",)
    assert den.input("latent").shape[0] == "batch" and den.opset == 20
    assert b.component("fp32", "context").input("kv_cache").concrete_shape(1)[0] == 1
    assert b.steps_available == (1, 2, 4) and b.default_steps == 2
    assert b.schedule(2) == (1.0, 0.5, 0.0)
    assert b.tokenizer().encode("a red ball").dtype == np.int64
    assert b.manifest["provenance"]["opset"] == 20
    assert len(b.digest) == 64
    # loading the manifest file itself works too, and the result is immutable
    assert load_bundle(tiny_bundle / MANIFEST).digest == b.digest
    with pytest.raises(TypeError):
        b.manifest["kind"] = "x"  # type: ignore[index]


def test_fp16_files_are_separate_and_checksummed(tiny_bundle: Path) -> None:
    b = load_bundle(tiny_bundle)
    assert b.component("fp16", "denoiser").file == "denoiser.fp16.onnx"
    for name, record in b.manifest["files"].items():
        assert bundle_mod.sha256_file(tiny_bundle / name) == record["sha256"]


def test_missing_folder_and_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(BundleError) as exc:
        load_bundle(tmp_path / "nope")
    assert "nope" in _one_line(exc)
    with pytest.raises(BundleError) as exc:
        load_bundle(tmp_path)
    assert MANIFEST in _one_line(exc) and "export" in str(exc.value)


def test_invalid_json(bundle_copy: Path) -> None:
    (bundle_copy / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError) as exc:
        load_bundle(bundle_copy)
    assert MANIFEST in _one_line(exc) and "JSON" in str(exc.value)


def test_unknown_schema_version_names_both_versions(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, lambda d: d.update(schema_version=7))
    with pytest.raises(BundleError) as exc:
        load_bundle(bundle_copy)
    message = _one_line(exc)
    assert "schema_version 7" in message and f"schema_version {SCHEMA_VERSION}" in message


def test_unknown_kind(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, lambda d: d.update(kind="something.else"))
    with pytest.raises(BundleError) as exc:
        load_bundle(bundle_copy)
    assert "something.else" in _one_line(exc)


def test_tampered_file_is_named(bundle_copy: Path) -> None:
    path = bundle_copy / "denoiser.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError) as exc:
        load_bundle(bundle_copy)
    message = _one_line(exc)
    assert "denoiser.onnx" in message and "sha256" in message


def test_truncated_file_is_named(bundle_copy: Path) -> None:
    path = bundle_copy / "vae_decoder.onnx"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(BundleError) as exc:
        load_bundle(bundle_copy)
    assert "vae_decoder.onnx" in _one_line(exc) and "bytes" in str(exc.value)


def test_missing_file_is_named(bundle_copy: Path) -> None:
    (bundle_copy / "text_encoder.fp16.onnx").unlink()
    with pytest.raises(BundleError) as exc:
        load_bundle(bundle_copy)
    assert "text_encoder.fp16.onnx" in _one_line(exc) and "missing" in str(exc.value)


def test_io_name_mismatch_is_caught_at_load_and_when_the_session_opens(bundle_copy: Path) -> None:
    from edgegen.runtime.backends.ort_cpu import OrtCpuBackend

    data = json.loads((bundle_copy / MANIFEST).read_text())
    data["precisions"]["fp32"]["components"]["denoiser"]["inputs"][0]["name"] = "latents"
    write_manifest(bundle_copy, data)  # checksums stay valid: only the names disagree
    with pytest.raises(BundleError) as exc:
        load_bundle(bundle_copy)
    message = _one_line(exc)
    assert "denoiser.onnx" in message and "latents" in message
    b = load_bundle(bundle_copy, verify_files=False)  # the backend checks what it really opened, too
    with pytest.raises(BundleError) as exc:
        OrtCpuBackend().open(b, "denoiser", "fp32")
    message = _one_line(exc)
    assert "denoiser.onnx" in message and "latents" in message


@pytest.mark.parametrize(("side", "index", "edit", "needle"), [
    ("inputs", 0, {"shape": ["batch", 4, 8, 9]}, "[batch, 4, 8, 9] in the manifest"),
    ("inputs", 0, {"shape": ["batch", 4, 8]}, "[batch, 4, 8] in the manifest"),
    ("outputs", 0, {"dtype": "float16"}, "float16"),
])
def test_io_shape_or_dtype_edited_in_the_manifest_is_caught_at_load(
    bundle_copy: Path, side: str, index: int, edit: dict, needle: str
) -> None:
    data = json.loads((bundle_copy / MANIFEST).read_text())
    spec = data["precisions"]["fp32"]["components"]["denoiser"][side][index]
    spec.update(edit)
    write_manifest(bundle_copy, data)  # checksums stay valid: only the contract disagrees with the file
    with pytest.raises(BundleError) as exc:
        load_bundle(bundle_copy)
    message = _one_line(exc)
    assert "denoiser.onnx" in message and repr(spec["name"]) in message and needle in message and "re-export" in message


def test_onnx_io_reads_what_onnxruntime_sees(tiny_bundle: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    for file in sorted(tiny_bundle.glob("*.onnx")):
        found = bundle_mod.onnx_io(file)
        assert found is not None, file
        session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        for mine, theirs in ((found[0], session.get_inputs()), (found[1], session.get_outputs())):
            assert [t[0] for t in mine] == [t.name for t in theirs]
            assert [list(t[2]) for t in mine] == [t.shape for t in theirs]
    assert bundle_mod.onnx_io(_write(tmp_path / "not-onnx.onnx", b"this is not an ONNX model")) is None


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_file_given_as_the_bundle_says_to_pass_the_folder(tmp_path: Path) -> None:
    clip = tmp_path / "a.mp4"
    clip.write_bytes(b"not a bundle")
    with pytest.raises(BundleError) as exc:
        load_bundle(clip)
    message = _one_line(exc)
    assert "a.mp4 is a file, not a folder" in message and "manifest.json" in message


def test_unreadable_onnx_is_named(bundle_copy: Path) -> None:
    from edgegen.runtime.backends.ort_cpu import OrtCpuBackend

    (bundle_copy / "vae_decoder.onnx").write_bytes(b"not an onnx file")
    data = json.loads((bundle_copy / MANIFEST).read_text())
    write_manifest(bundle_copy, data)
    with pytest.raises(BundleError) as exc:
        OrtCpuBackend().open(load_bundle(bundle_copy), "vae_decoder", "fp32")
    assert "vae_decoder.onnx" in _one_line(exc)


def test_unknown_precision_and_steps_list_the_valid_ones(tiny_bundle: Path) -> None:
    b = load_bundle(tiny_bundle)
    with pytest.raises(BundleError) as exc:
        b.component("int8", "denoiser")
    assert "fp32, fp16" in _one_line(exc)
    with pytest.raises(BundleError) as exc:
        b.schedule(3)
    assert "1, 2, 4" in _one_line(exc)


def test_validate_manifest_reports_structure_problems(tiny_bundle: Path) -> None:
    good = json.loads((tiny_bundle / MANIFEST).read_text())
    assert validate_manifest(good) == []
    bad = json.loads(json.dumps(good))
    del bad["precisions"]["fp32"]["components"]["denoiser"]
    bad["sampler"]["schedules"]["2"] = [1.0, 0.7, 0.8, 0.0]
    bad["files"]["../escape"] = {"sha256": "x", "bytes": 1}
    problems = validate_manifest(bad)
    assert any("denoiser" in p for p in problems)
    assert any("schedules['2']" in p for p in problems)
    assert any("escape" in p for p in problems)
    assert validate_manifest([]) == ["the manifest is not a JSON object"]
    for value in (-1, 1.5, 0.0, True, False, "2"):
        bad = json.loads(json.dumps(good))
        bad["sampler"]["t_ctx_from"] = value
        assert any("sampler.t_ctx_from" in p for p in validate_manifest(bad)), value


def test_a_bundle_without_t_ctx_from_commits_every_chunk_at_t_ctx(bundle_copy: Path) -> None:
    """Bundles exported before the field: every chunk at t_ctx, as they ran then."""
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    assert load_bundle(bundle_copy).t_ctx_from == manifest["sampler"]["t_ctx_from"] == 0
    del manifest["sampler"]["t_ctx_from"]
    write_manifest(bundle_copy, manifest)
    assert load_bundle(bundle_copy).t_ctx_from == 0


def test_write_manifest_is_atomic_and_refreshes_checksums(bundle_copy: Path) -> None:
    b = load_bundle(bundle_copy)
    data = thaw(b.manifest)
    (bundle_copy / "tokenizer.json").write_text((bundle_copy / "tokenizer.json").read_text() + " ")
    write_manifest(bundle_copy, data)
    assert not [p for p in os.listdir(bundle_copy) if p.endswith(".partial")]
    assert load_bundle(bundle_copy).digest != b.digest


def test_default_bundle_path_explains_when_absent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(bundle_mod, "__file__", str(tmp_path / "edgegen" / "bundle.py"))
    with pytest.raises(BundleError) as exc:
        bundle_mod.default_bundle_path()
    assert "edgegen export" in _one_line(exc)
