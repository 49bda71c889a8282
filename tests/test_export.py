"""Export: the tiny model's bundle passes onnx.checker, the TensorRT tables and parity; stages are
cached; failures are loud; the fp16 graph keeps its fragile ops in fp32; check_trt's rules."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgegen.bundle import COMPONENTS, MANIFEST, load_bundle
from edgegen.errors import UserError
from edgegen.export import onnx_export
from edgegen.export.parity import psnr, relative_error
from edgegen.export.pipeline import FP16_MIN_PSNR, FP32_MAX_REL_ERROR, FP32_MIN_PSNR, export_bundle
from edgegen.export.trt_check import check_trt, normalize_version


def test_tiny_export_passes_every_gate(tiny_export) -> None:
    path, report = tiny_export
    assert max(report.rel_errors["fp32"].values()) <= FP32_MAX_REL_ERROR
    assert report.psnr["fp32"] >= FP32_MIN_PSNR and report.psnr["fp16"] >= FP16_MIN_PSNR
    assert set(report.rel_errors["fp32"]) == set(COMPONENTS)
    bundle = load_bundle(path)
    for precision, comps in bundle.components.items():
        for entry in comps.values():
            model = onnx.load(str(bundle.file(entry.file)))
            onnx.checker.check_model(model, full_check=True)
            assert [o.version for o in model.opset_import if o.domain == ""] == [20]
            assert check_trt(model, "10.3") == [] and check_trt(model, "11") == []
            assert onnx_export.read_stamp(bundle.file(entry.file))["precision"] == precision
            for value in model.graph.input:  # static shapes except the batch dimension
                dims = value.type.tensor_type.shape.dim
                assert dims[0].dim_param == "batch" and all(d.dim_value > 0 for d in dims[1:])
    prov = bundle.manifest["provenance"]
    assert prov["opset"] == 20 and prov["torch"] == torch.__version__ and "exported" in prov


def test_reexport_reuses_matching_stages_and_redoes_stale_ones(bundle_copy: Path) -> None:
    from conftest import tiny_source

    stale = bundle_copy / "vae_decoder.onnx"
    before = load_bundle(bundle_copy).file_sha256("vae_decoder.onnx")
    model = onnx.load(str(stale))
    stamp = onnx_export.read_stamp(stale)
    onnx_export.set_stamp(model, {**stamp, "checkpoint_sha256": "an older checkpoint"})
    onnx.save(model, str(stale))
    report = export_bundle(tiny_source(), bundle_copy, precisions=("fp32", "fp16"), parity_frames=8)
    assert report.files["fp32/vae_decoder"] == "exported"
    assert report.files["fp32/denoiser"] == "cached" and report.files["fp16/text_encoder"] == "cached"
    # the export is deterministic: the re-traced file is byte-identical, so its fp16 child stays valid
    assert load_bundle(bundle_copy).file_sha256("vae_decoder.onnx") == before
    assert report.files["fp16/vae_decoder"] == "cached"


def test_reexport_keeps_the_precisions_already_in_the_bundle(bundle_copy: Path) -> None:
    from conftest import tiny_source

    assert "fp16" in load_bundle(bundle_copy).components
    export_bundle(tiny_source(), bundle_copy, precisions=("fp32",), parity_frames=8)
    bundle = load_bundle(bundle_copy)  # the fp16 files stay in the folder, so the manifest lists them
    assert set(bundle.components) == {"fp32", "fp16"}
    assert {p.name for p in bundle_copy.glob("*.onnx")} <= set(bundle.manifest["files"])


def test_export_over_another_checkpoints_bundle_needs_force(bundle_copy: Path) -> None:
    from edgegen.export.source import source_from_config

    other = source_from_config("tiny", seed=1)  # other weights: another checkpoint
    before = {p.name: p.read_bytes() for p in bundle_copy.iterdir()}
    with pytest.raises(UserError, match=r"holds a bundle of another checkpoint.*--force") as exc:
        export_bundle(other, bundle_copy, parity_frames=8)
    assert "\n" not in str(exc.value)
    assert {p.name: p.read_bytes() for p in bundle_copy.iterdir()} == before  # untouched
    export_bundle(other, bundle_copy, parity_frames=8, force=True)
    assert load_bundle(bundle_copy).manifest["provenance"]["checkpoint_sha256"] == other.checkpoint_sha256


def test_export_over_a_calibrated_bundle_is_refused(bundle_copy: Path) -> None:
    from conftest import tiny_source

    from edgegen.bundle import thaw, write_manifest

    manifest = thaw(load_bundle(bundle_copy).manifest)
    manifest["precisions"]["int8"] = thaw(manifest["precisions"]["fp32"])  # as `edgegen calibrate` adds one
    write_manifest(bundle_copy, manifest)
    before = {p.name: p.read_bytes() for p in bundle_copy.iterdir()}
    for force in (False, True):  # same checkpoint or not, the calibrated precision would be dropped
        with pytest.raises(UserError, match=r"holds a calibrated bundle \(int8\).*new folder.*edgegen calibrate") as exc:
            export_bundle(tiny_source(), bundle_copy, parity_frames=8, force=force)
        assert "\n" not in str(exc.value)
    assert {p.name: p.read_bytes() for p in bundle_copy.iterdir()} == before  # untouched


def test_parity_failure_is_loud_and_leaves_no_manifest(bundle_copy: Path) -> None:
    from conftest import tiny_source

    source = tiny_source()
    with torch.no_grad():  # torch now disagrees with the cached ONNX files (same checkpoint hash)
        for p in source.components["denoiser"].module.parameters():
            p.add_(0.05)
    with pytest.raises(UserError, match="parity failed") as exc:
        export_bundle(source, bundle_copy, parity_frames=8)
    assert "\n" not in str(exc.value)
    assert not (bundle_copy / MANIFEST).exists()


def test_export_refuses_bad_settings(tmp_path: Path) -> None:
    from conftest import tiny_source

    with pytest.raises(UserError, match="int8"):
        export_bundle(tiny_source(), tmp_path / "b", precisions=("int8",))
    with pytest.raises(UserError, match="opset"):
        export_bundle(tiny_source(), tmp_path / "b", opset=13)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(UserError, match=r"todo\.txt"):
        export_bundle(tiny_source(), tmp_path / "notes")


def test_fp16_keeps_fragile_ops_in_fp32_and_io_in_fp32(tiny_bundle: Path) -> None:
    model = onnx.shape_inference.infer_shapes(onnx.load(str(tiny_bundle / "denoiser.fp16.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input, *model.graph.output)}
    types |= {i.name: i.data_type for i in model.graph.initializer}
    assert all(v.type.tensor_type.elem_type != TensorProto.FLOAT16 for v in (*model.graph.input, *model.graph.output))
    fragile = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax", "Sin", "Cos")]
    assert fragile
    for node in fragile:
        assert types[node.input[0]] == TensorProto.FLOAT, node.name
    matmuls = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    assert matmuls and all(types[n.input[0]] == TensorProto.FLOAT16 for n in matmuls)
    weights = {name for n in matmuls for name in n.input[1:]} & {i.name for i in model.graph.initializer}
    assert weights and all(types[w] == TensorProto.FLOAT16 for w in weights)


def test_relative_error_and_psnr() -> None:
    ref = np.array([0.0, 2.0, -4.0])
    assert relative_error(ref, ref) == 0.0
    assert relative_error(ref + 0.004, ref) == pytest.approx(0.001)
    assert relative_error(np.full(3, 1e-6), np.zeros(3)) == pytest.approx(1e-3)  # eps floor, not inf
    a = np.zeros((2, 4, 4, 3), np.uint8)
    assert psnr(a, a) == math.inf
    assert psnr(a + 1, a) == pytest.approx(20 * math.log10(255), abs=1e-9)


# -- check_trt ---------------------------------------------------------------------------------


def _model(nodes, inputs, outputs, inits=(), opset=20) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _f32(name: str, shape=(1, 4)) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _reasons(model: onnx.ModelProto, version: str = "10.3") -> str:
    return " | ".join(str(p) for p in check_trt(model, version))


def test_trt_accepts_a_plain_graph() -> None:
    m = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_f32("x")], [_f32("y")])
    assert check_trt(m, "10.3") == [] and check_trt(m, "11.2") == []


def test_trt_rejects_opset_above_20_for_10_3_only() -> None:
    m = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_f32("x")], [_f32("y")], opset=21)
    assert "opset 21" in _reasons(m, "10.3")
    assert check_trt(m, "11") == []


def test_trt_rejects_unsupported_and_custom_ops() -> None:
    m = _model([helper.make_node("Unique", ["x"], ["y"], name="uniq")], [_f32("x")], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    assert "uniq" in _reasons(m) and "Unique" in _reasons(m)
    custom = _model([helper.make_node("FusedGelu", ["x"], ["y"], name="fg", domain="com.microsoft")], [_f32("x")], [_f32("y")])
    custom.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert "com.microsoft" in _reasons(custom)


def test_trt_rejects_the_attention_op() -> None:
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, 2, 4, 8])
    m = _model([helper.make_node("Attention", ["q", "q", "q"], ["y"], name="attn")], [q], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 8])], opset=23)
    assert "Attention" in _reasons(m, "11")


def test_trt_checks_dtypes() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.INT32, [1, 4])
    m = _model([helper.make_node("Softmax", ["x"], ["y"], name="sm")], [x], [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 4])])
    assert "INT32" in _reasons(m)
    d = helper.make_tensor_value_info("d", TensorProto.DOUBLE, [1, 4])
    cast = _model([helper.make_node("Cast", ["x"], ["y"], name="c", to=TensorProto.UINT16)], [d], [helper.make_tensor_value_info("y", TensorProto.UINT16, [1, 4])])
    assert "UINT16" in _reasons(cast)


def test_trt_checks_constant_axes_and_attributes() -> None:
    axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    m = _model([helper.make_node("Unsqueeze", ["x", "axes"], ["y"], name="unsq")], [_f32("x"), axes], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    assert "axes" in _reasons(m)
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    x4 = _f32("x", (1, 1, 4, 4))
    resize = _model([helper.make_node("Resize", ["x", "", "scales"], ["y"], name="rs", mode="cubic")], [x4],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits=[scales])
    assert "cubic" in _reasons(resize)


def _qdq(zero_point: np.ndarray | None, op: str = "QuantizeLinear", x_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "scale")]
    inputs = ["x", "scale"]
    if zero_point is not None:
        inits.append(numpy_helper.from_array(zero_point, "zp"))
        inputs.append("zp")
    x = helper.make_tensor_value_info("x", x_type, [1, 4])
    return _model([helper.make_node(op, inputs, ["y"], name="q")], [x], [helper.make_tensor_value_info("y", TensorProto.UNDEFINED, None)], inits=inits)


def test_trt_quantization_rules() -> None:
    assert check_trt(_qdq(np.array(0, np.int8)), "10.3") == []
    assert "zero point must be 0" in _reasons(_qdq(np.array(3, np.int8)))
    assert "UINT8" in _reasons(_qdq(None))  # no zero point: ONNX quantizes to uint8
    assert "UINT8" in _reasons(_qdq(np.array(0, np.uint8)))
    assert check_trt(_qdq(np.array(0, np.int8), "DequantizeLinear", TensorProto.INT8), "10.3") == []
    assert "INT32 dequantization" in _reasons(_qdq(np.array(0, np.int32), "DequantizeLinear", TensorProto.INT32))


def test_trt_versions() -> None:
    assert normalize_version("11.3") == "11" and normalize_version("10.3") == "10.3"
    with pytest.raises(UserError, match=r"10\.3, 11"):
        normalize_version("8.6")
    table = json.loads((Path(onnx_export.__file__).with_name("trt_ops.json")).read_text())
    assert table["versions"]["10.3"]["opset"]["max"] == 20
    assert "Attention" not in table["versions"]["10.3"]["ops"]


def test_export_cli_reuses_cached_stages(bundle_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgegen.cli import main

    # same config, seed and settings as the session's bundle: every stage is cached, parity reruns
    assert main(["export", "--untrained", "tiny", "--out", str(bundle_copy), "--precision", "fp32,fp16"]) == 0
    summary = capsys.readouterr().out
    assert "fp32: max rel err" in summary and "fp16:" in summary
    assert load_bundle(bundle_copy).precisions == ("fp32", "fp16")


def test_export_and_inspect_cli(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgegen.cli import main

    assert main(["inspect", str(tiny_bundle), "--trt", "10.3"]) == 0
    out = capsys.readouterr().out
    assert "denoiser.fp16.onnx" in out and "all checksums ok" in out and "every node parses" in out
    assert main(["inspect", str(tiny_bundle), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["path"] == str(tiny_bundle.resolve()) and info["files"]["denoiser.onnx"]["status"] == "ok"
    broken = Path(shutil.copytree(tiny_bundle, tmp_path / "broken"))
    (broken / "denoiser.onnx").write_bytes(b"x" * (broken / "denoiser.onnx").stat().st_size)
    assert main(["inspect", str(broken)]) == 2
    assert "sha256 mismatch" in capsys.readouterr().out
    assert main(["export", "--out", str(tmp_path / "b"), "--precision", "int8"]) == 2
    assert main(["export", "--out", str(tmp_path / "b"), "--checkpoint", str(tmp_path / "none.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "edgegen calibrate" in err and "none.safetensors" in err




@pytest.mark.parametrize("t_ctx_from", [0, 2])
def test_noised_commit_is_the_same_in_the_runtime_loop_and_the_reference(bundle_copy: Path, torch_one_thread, t_ctx_from: int) -> None:
    """t_ctx > 0: the runtime loop and the torch reference pipeline both commit each finished chunk
    from chunk t_ctx_from on noised to t_ctx, (1 - t_ctx) x0 + t_ctx n, with n from the stream's commit
    source in order, and the chunks before it clean (no draw)."""
    from dataclasses import replace

    from conftest import tiny_source

    from edgegen import sampling
    from edgegen.bundle import write_manifest
    from edgegen.export import parity
    from edgegen.model.config import ModelConfig
    from edgegen.model.pipeline import Model, generate_latents
    from edgegen.model.torch_backend import TorchSession
    from edgegen.runtime.generator import Generator

    t_ctx, seed, prompt = 0.3, 5, "a red circle moving right"
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    manifest["sampler"].update(t_ctx=t_ctx, t_ctx_from=t_ctx_from)
    write_manifest(bundle_copy, manifest)
    bundle, source = load_bundle(bundle_copy), tiny_source()
    modules = {name: c.module for name, c in source.components.items()}
    sessions = {name: TorchSession(modules[name], bundle.component("fp32", name).input_names, bundle.component("fp32", name).output_names)
                for name in ("text_encoder", "context", "denoiser", "commit", "vae_decoder")}
    gen = Generator(bundle=bundle, backend="torch", precision="fp32", tokenizer=source.tokenizer, sessions=sessions)
    records, _ = parity.capture(gen, [prompt], seed=seed, frames=16, steps=2)
    runtime_in = [feeds["latent"] for feeds, _ in records["commit"]]  # 4 chunks: 3 commits (the last is not needed)
    runtime_t = [float(feeds["t"][0]) for feeds, _ in records["commit"]]

    seen: list[np.ndarray] = []
    commit = modules["commit"]

    def spy(x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        seen.append(x.numpy().copy())
        return commit(x, *rest)

    cfg = replace(ModelConfig.from_dict(source.config), t_ctx=t_ctx, t_ctx_from=t_ctx_from)
    latents = list(generate_latents(Model(cfg, source.tokenizer, {**modules, "commit": spy}, "student"), prompt, seed, 4, 2))
    rng = sampling.commit_rng(seed)
    expected = [(1 - t_ctx) * z + t_ctx * sampling.commit_noise(rng, z.shape) if k >= t_ctx_from else z for k, z in enumerate(latents)]
    assert len(runtime_in) == 3 and len(seen) == 4
    assert runtime_t == pytest.approx([t_ctx if k >= t_ctx_from else 0.0 for k in range(3)])
    for k in range(3):
        np.testing.assert_allclose(seen[k], expected[k], atol=1e-5)  # the reference commits the chunk at its level
        np.testing.assert_allclose(runtime_in[k], seen[k], atol=1e-4)  # and the runtime commits the same
        noised = np.abs(runtime_in[k] - latents[k]).mean() > 0.1
        assert noised == (k >= t_ctx_from)  # noised from chunk t_ctx_from on, clean before it
