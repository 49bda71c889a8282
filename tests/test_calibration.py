"""`edgegen calibrate` on the tiny exported bundle: the Q/DQ rules TensorRT needs, ORT CPU runs
the result, the capture cache, the new bundle (and the untouched input), the report.

One real CLI run per precision (module-scoped, small sample counts) feeds most tests; the graph
rules are checked here directly on the ONNX files, independently of calibration's own checker,
which gets its own unit tests on hand-made graphs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgegen.bundle import load_bundle
from edgegen.calibration import Settings, calibrate_bundle
from edgegen.calibration import capture as cap
from edgegen.calibration import report as rep
from edgegen.calibration.quantize import QUANT_OPS, check_qdq
from edgegen.cli import main

SMALL = ["--samples", "24", "--prompts", "3", "--eval-prompts", "2", "--judge-prompts", "2", "--latency-rounds", "2"]


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("calibration")


@pytest.fixture(scope="module")
def int8(tiny_bundle: Path, work: Path) -> dict[str, Any]:
    """One full `edgegen calibrate --precision int8` run (with the end-to-end checks)."""
    before = _tree_digest(tiny_bundle)
    out = work / "tiny-int8"
    code, stdout, stderr = _run(["calibrate", str(tiny_bundle), "--precision", "int8", *SMALL, "--out", str(out), "--cache-dir", str(work / "cache")])
    assert code == 0, stderr
    assert stdout.startswith(f"wrote {out} (int8, ") and "quality" in stdout and "quality" not in stderr  # the result, said once
    report = json.loads((out / "calibration_int8.json").read_text())
    return {"out": out, "report": report, "before": before, "stdout": stdout}


@pytest.fixture(scope="module")
def fp8(tiny_bundle: Path, work: Path) -> dict[str, Any]:
    out = work / "tiny-fp8"
    code, _, stderr = _run(["calibrate", str(tiny_bundle), "--precision", "fp8", *SMALL, "--no-e2e", "--out", str(out), "--cache-dir", str(work / "cache")])
    assert code == 0, stderr
    return {"out": out, "report": json.loads((out / "calibration_fp8.json").read_text())}


def _quantized_models(run: dict[str, Any]) -> dict[str, onnx.ModelProto]:
    return {c: onnx.load(str(run["out"] / r["file"])) for c, r in run["report"]["components"].items()}


def _qdq_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


# ---------------------------------------------------------------------------------------------
# The graph


def test_quantized_bundle_runs_on_ort_cpu(int8: dict[str, Any]) -> None:
    from edgegen.runtime.generator import Generator

    gen = Generator.load(int8["out"], backend="ort-cpu", precision="int8")
    clip = gen.generate("a red circle moving right", seed=3, frames=8)
    assert clip.shape[0] == 8 and clip.dtype == np.uint8
    reference = Generator.load(int8["out"], backend="ort-cpu", precision="fp32").generate("a red circle moving right", seed=3, frames=8)
    assert not np.array_equal(clip, reference)  # really the quantized files
    assert np.mean(np.abs(clip.astype(float) - reference)) < 10  # and still close


def test_the_portable_int8_files_run_on_ort_cpu_at_full_optimisation(int8: dict[str, Any]) -> None:
    """The TensorRT-consumable file itself (not only the ORT-CPU variant) runs on ORT CPU."""
    import onnxruntime as ort

    bundle = load_bundle(int8["out"])
    gen = _fp32_generator(int8["out"])
    for comp, r in int8["report"]["components"].items():
        session = ort.InferenceSession(str(int8["out"] / r["file"]), providers=["CPUExecutionProvider"])
        entry = bundle.component("int8", comp)
        feeds = {t.name: _sample(t) for t in entry.inputs}
        outputs = session.run(None, feeds)
        reference = gen.sessions[comp].run(feeds)
        for spec, value in zip(entry.outputs, outputs, strict=True):
            assert value.shape == spec.concrete_shape() and np.all(np.isfinite(value))
            assert np.allclose(value, reference[spec.name], atol=0.5)


def _fp32_generator(path: Path) -> Any:
    from edgegen.runtime.generator import Generator

    return Generator.load(path, backend="ort-cpu", precision="fp32")


def _sample(spec: Any) -> np.ndarray:
    rng = np.random.default_rng(0)
    shape = spec.concrete_shape()
    if spec.dtype == "int64":
        return rng.integers(1, 5, shape).astype(np.int64)
    if spec.name == "t":
        return np.full(shape, 0.5, np.float32)
    if spec.name == "cache_valid":
        return np.ones(shape, np.float32)
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_every_qdq_is_symmetric_with_the_precision_type(precision: str, request: pytest.FixtureRequest) -> None:
    run = request.getfixturevalue(precision)
    want = TensorProto.INT8 if precision == "int8" else TensorProto.FLOAT8E4M3FN
    for comp, model in _quantized_models(run).items():
        init = {i.name: i for i in model.graph.initializer}
        nodes = _qdq_nodes(model)
        assert nodes, f"{comp}: nothing quantized"
        for node in nodes:
            assert node.domain in ("", "ai.onnx")
            assert len(node.input) == 3 and node.input[2] in init, f"{node.name}: no constant zero point"
            zp = init[node.input[2]]
            assert zp.data_type == want, f"{node.name}: {TensorProto.DataType.Name(zp.data_type)}"
            assert np.all(numpy_helper.to_array(zp).astype(np.float32) == 0), f"{node.name}: zero point not 0"
            assert node.input[1] in init, f"{node.name}: scale not constant"


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_only_conv_matmul_gemm_inputs_are_quantized(precision: str, request: pytest.FixtureRequest) -> None:
    run = request.getfixturevalue(precision)
    for model in _quantized_models(run).values():
        users: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in model.graph.node:
            for i, name in enumerate(node.input):
                users.setdefault(name, []).append((node, i))
        for node in _qdq_nodes(model):
            for user, index in users.get(node.output[0], []):
                if node.op_type == "QuantizeLinear":
                    assert user.op_type == "DequantizeLinear"
                else:
                    assert user.op_type in QUANT_OPS, f"{node.name} feeds {user.op_type}"
                    assert index in (0, 1), f"{node.name} feeds input {index} (the bias) of {user.name}"


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_biases_stay_float(precision: str, request: pytest.FixtureRequest) -> None:
    run = request.getfixturevalue(precision)
    for model in _quantized_models(run).values():
        init = {i.name: i for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "DequantizeLinear" and node.input[0] in init:
                assert init[node.input[0]].data_type != TensorProto.INT32
            if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2 and node.input[2]:
                assert node.input[2] in init and init[node.input[2]].data_type == TensorProto.FLOAT


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_tensorrt_parser_tables_accept_the_files(precision: str, request: pytest.FixtureRequest) -> None:
    from edgegen.export.trt_check import check_trt

    run = request.getfixturevalue(precision)
    for comp, model in _quantized_models(run).items():
        for version in ("10.3", "11"):
            assert check_trt(model, version) == [], f"{comp} TensorRT {version}"
        assert run["report"]["components"][comp]["tensorrt"] == {"10.3": "ok", "11": "ok"}


# ---------------------------------------------------------------------------------------------
# The bundles


def test_output_bundle_loads_with_the_new_precision(int8: dict[str, Any]) -> None:
    bundle = load_bundle(int8["out"])  # checksums of every file, reports included
    assert bundle.precisions[:2] == ("fp32", "int8") or set(bundle.precisions) >= {"fp32", "int8"}
    info = bundle.precision_info("int8")
    calib = info["calibration"]
    assert calib["samples"] > 0 and len(calib["data_sha256"]) == 64 and "timestep-aware" in calib["method"]
    assert info["quality"]["report"] == "calibration_int8.json"
    assert isinstance(info["quality"]["passed"], bool)
    assert {"calibration_int8.json", "calibration_int8.md"} <= set(bundle.manifest["files"])
    # Unquantized components share the fp32 files.
    assert bundle.component("int8", "text_encoder").file == bundle.component("fp32", "text_encoder").file
    assert bundle.component("int8", "denoiser").file == "denoiser.int8.onnx"


def test_ort_cpu_variant_files_are_recorded_and_checksummed(int8: dict[str, Any]) -> None:
    from edgegen.calibration.evaluate import VARIANT, component_file
    from edgegen.calibration.quantize import ORT_VARIANTS

    bundle = load_bundle(int8["out"])
    for comp, r in int8["report"]["components"].items():
        variant = r["ort_cpu_variant"]
        assert "int8 (portable Q/DQ)" in variant["tried"] and "fp32_cpu_ms" in variant
        spec = bundle.precision_info("int8")["components"][comp]
        if variant.get("dropped"):  # measured, failed the end-to-end targets: not shipped
            assert "variants" not in spec and not (int8["out"] / variant["dropped"]).exists()
            assert "ort_cpu_variants_dropped" in int8["report"]["end_to_end"]
            continue
        if variant["chosen"] is None:
            assert "variants" not in spec and variant["why_none"]
            continue
        assert variant["chosen"] in ORT_VARIANTS
        assert spec["variants"][VARIANT]["file"] == variant["file"] in bundle.manifest["files"]
        assert component_file(bundle, "int8", comp, variant=True).name == variant["file"]
        assert component_file(bundle, "int8", comp).name == r["file"]  # the portable file stays the entry's file


def test_policy_reasons_are_reported(int8: dict[str, Any]) -> None:
    from edgegen.calibration.pipeline import ACT_ACT_WHY, VECTOR_WHY

    kept = int8["report"]["components"]["denoiser"]["kept_float"]
    reasons = {k["why"] for k in kept}
    assert VECTOR_WHY in reasons  # the timestep / pooled-text projections
    assert ACT_ACT_WHY in reasons  # q @ k^T and attn @ v
    layers = {layer["name"]: layer for layer in int8["report"]["components"]["denoiser"]["layers"]}
    for k in kept:
        if k["why"] == VECTOR_WHY:
            assert layers[k["node"]]["rows"] == 1
        if k["why"] == ACT_ACT_WHY:
            assert not layers[k["node"]]["weight"]


def test_input_bundle_is_untouched(int8: dict[str, Any], tiny_bundle: Path) -> None:
    assert _tree_digest(tiny_bundle) == int8["before"]
    assert "int8" not in load_bundle(tiny_bundle).precisions


def test_no_partial_folders_are_left(int8: dict[str, Any]) -> None:
    assert not [p for p in int8["out"].parent.iterdir() if p.name.endswith(".partial") or ".old-" in p.name]


def test_existing_out_needs_force_and_input_is_refused_as_out(tiny_bundle: Path, int8: dict[str, Any]) -> None:
    code, _, err = _run(["calibrate", str(tiny_bundle), "--out", str(int8["out"]), "--no-e2e", *SMALL])
    assert code == 2 and "--force" in err and err.count("\n") == 1
    code, _, err = _run(["calibrate", str(tiny_bundle), "--out", str(tiny_bundle), "--no-e2e", *SMALL])
    assert code == 2 and "never modifies its input" in err
    code, _, err = _run(["calibrate", str(tiny_bundle), "--precision", "int4"])
    assert code == 2 and "int8" in err


def test_a_calibrated_bundle_calibrates_again(int8: dict[str, Any], work: Path) -> None:
    """Calibrating a bundle that has the precision already replaces it: the old precision's files
    that the new one does not make (here an ORT-CPU variant) leave the bundle; other precisions stay."""
    from edgegen.bundle import thaw, write_manifest

    src = work / "calibrated-src"
    shutil.copytree(int8["out"], src)
    manifest = thaw(load_bundle(src).manifest)
    shutil.copy2(src / "denoiser.int8.onnx", src / "old-variant.onnx")
    manifest["precisions"]["int8"]["components"]["denoiser"]["variants"] = {"ort-cpu": {"file": "old-variant.onnx", "kind": "dynamic"}}
    write_manifest(src, manifest)
    assert "old-variant.onnx" in load_bundle(src).manifest["files"]

    out = work / "calibrated-again"
    code, _, err = _run(["calibrate", str(src), "--precision", "int8", "--components", "denoiser", "--no-ort-variants",
                         "--no-e2e", *SMALL, "--out", str(out), "--cache-dir", str(work / "cache")])
    assert code == 0, err
    again = load_bundle(out)  # every listed file is there and its checksum holds
    assert "old-variant.onnx" not in again.manifest["files"] and not (out / "old-variant.onnx").exists()
    assert "variants" not in again.precision_info("int8")["components"]["denoiser"]
    assert again.component("int8", "vae_decoder").file == "vae_decoder.onnx"  # only the denoiser is quantized now

    fp8 = work / "calibrated-fp8"
    code, _, err = _run(["calibrate", str(src), "--precision", "fp8", "--components", "denoiser", "--no-e2e", *SMALL,
                         "--out", str(fp8), "--cache-dir", str(work / "cache")])
    assert code == 0, err
    both = load_bundle(fp8)  # another precision: the int8 one, variant included, is kept as it was
    assert {"fp32", "int8", "fp8"} <= set(both.precisions) and (fp8 / "old-variant.onnx").is_file()
    assert both.precision_info("int8") == load_bundle(src).precision_info("int8")


def test_capture_cache_is_reused(tiny_bundle: Path, int8: dict[str, Any], work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert int8["report"]["capture"]["train"]["reused"] is False

    def no_capture(*_: Any, **__: Any) -> None:
        raise AssertionError("captured again although the cache holds this plan")

    monkeypatch.setattr(cap, "run_capture", no_capture)
    settings = Settings(precision="int8", samples=24, prompts=3, eval_prompts=2, cache_dir=work / "cache", check_e2e=False)
    report = calibrate_bundle(tiny_bundle, work / "again", settings)
    assert report["capture"]["train"]["reused"] and report["capture"]["heldout"]["reused"]
    assert report["capture"]["train"]["key"] == int8["report"]["capture"]["train"]["key"]
    # A different plan (other prompts) is a different key.
    other = cap.plan(["a red circle moving right"], 0, [2], 8)
    assert other.key(load_bundle(tiny_bundle)) != report["capture"]["train"]["key"]


def test_capture_covers_every_step_and_a_full_cache(int8: dict[str, Any], work: Path, tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    frames = int8["report"]["settings"]["frames"]
    plan = cap.plan(["a red circle moving right"], 5, [2], frames)
    data = cap.run_capture(bundle, plan)
    chunks = frames // bundle.chunk_frames
    assert len(data["denoiser"]) == chunks * 2  # every step
    assert len(data["commit"]) == chunks - 1  # every commit but the last (nothing would read it)
    assert len(data["context"]) == chunks and len(data["vae_decoder"]) == chunks
    valid = np.concatenate([f["cache_valid"] for f in data["context"]])
    assert valid.sum(axis=1).max() == bundle.manifest["cache"]["slots"]  # the cache fills
    assert sorted({float(f["t"][0]) for f in data["denoiser"]}) == sorted(bundle.schedule(2)[:-1])
    assert {float(f["t"][0]) for f in data["commit"]} == {bundle.t_ctx}


# ---------------------------------------------------------------------------------------------
# The report


def test_report_has_component_errors_e2e_and_latency(int8: dict[str, Any]) -> None:
    report = int8["report"]
    for comp in ("denoiser", "vae_decoder"):
        r = report["components"][comp]
        assert set(r["heldout_error"]) and all(v >= 0 for v in r["heldout_error"].values())
        assert r["sensitivity"] and r["quantized"]
    e2e = report["end_to_end"]
    assert len(e2e["prompts"]) == 2 and isinstance(e2e["mean_psnr_db"], (float, str))
    step = report["latency"]["denoiser"]
    assert step["fp32"]["median_ms"] > 0 and step["int8"]["speedup_vs_fp32"] > 0
    from edgegen.runtime.backends.ort_cpu import candidate_plans, physical_cores

    widest = candidate_plans(physical_cores())[-1]  # every wall-time file on this one plan
    assert report["latency"]["plan"] == str(widest) and report["latency"]["threads"] == widest.threads
    md = (int8["out"] / "calibration_int8.md").read_text()
    assert "Kept in float" in md and "## End to end" in md and "## Latency" in md


def test_sensitivity_exclusions_are_listed_with_numbers(tiny_bundle: Path, int8: dict[str, Any], work: Path) -> None:
    # An unreachable target: the search keeps layers in float one by one, most sensitive first.
    settings = Settings(precision="int8", samples=24, prompts=3, eval_prompts=2, cache_dir=work / "cache",
                        components=("denoiser",), targets={"denoiser": -1.0}, check_e2e=False)
    out = work / "strict"
    report = calibrate_bundle(tiny_bundle, out, settings)
    r = report["components"]["denoiser"]
    measured = [k for k in r["kept_float"] if k["sensitivity"] is not None]
    assert measured, "no layer kept in float by the search"
    sens = [k["sensitivity"] for k in measured]
    assert sens == sorted(sens, reverse=True)
    assert all(isinstance(k["error_after"], float) and k["why"] for k in measured)
    assert r["target_met"] is False and report["verdict"]["passed"] is False
    assert load_bundle(out).precision_info("int8")["quality"]["passed"] is False
    md = (out / "calibration_int8.md").read_text()
    assert measured[0]["node"] in md


def test_fp8_report_says_it_needs_tensorrt(fp8: dict[str, Any]) -> None:
    md = (fp8["out"] / "calibration_fp8.md").read_text()
    assert "TensorRT" in md and "8.9" in md and "Jetson" in md
    assert load_bundle(fp8["out"]).component("fp8", "denoiser").file == "denoiser.fp8.onnx"


# ---------------------------------------------------------------------------------------------
# The checker, on hand-made graphs


def _qdq_graph(zero_point: int = 0, zp_type: int = TensorProto.INT8, bias_int32: bool = False, feed: str = "MatMul") -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 4), np.int8), "w_q")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["w_q", "sw", "zw"], ["wd"], name="dqw"),
    ]
    inits = [w, numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0.1, np.float32), "sw"),
             helper.make_tensor("zp", zp_type, [], [zero_point]), helper.make_tensor("zw", TensorProto.INT8, [], [0])]
    if feed == "MatMul":
        nodes.append(helper.make_node("MatMul", ["xd", "wd"], ["y"], name="mm"))
    else:
        nodes.append(helper.make_node("Relu", ["xd"], ["y"], name="relu"))
    if bias_int32:
        inits.append(numpy_helper.from_array(np.zeros(4, np.int32), "b_q"))
        nodes += [helper.make_node("DequantizeLinear", ["b_q", "sw"], ["bd"], name="dqb"), helper.make_node("Add", ["y", "bd"], ["z"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("z" if bias_int32 else "y", TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_checker_accepts_a_clean_graph() -> None:
    summary = check_qdq(_qdq_graph(), "int8")
    assert summary.problems == [] and summary.quantized_nodes == ["mm"]


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"zero_point": 3}, "non-zero zero point"),
    ({"zp_type": TensorProto.UINT8}, "UINT8"),
    ({"bias_int32": True}, "INT32"),
    ({"feed": "Relu"}, "only Conv/ConvTranspose/MatMul/Gemm"),
])
def test_checker_names_each_broken_rule(kwargs: dict[str, Any], words: str) -> None:
    problems = check_qdq(_qdq_graph(**kwargs), "int8").problems
    assert any(words in p for p in problems), problems


def test_checker_rejects_int8_in_an_fp8_file() -> None:
    assert any("not fp8" in p for p in check_qdq(_qdq_graph(), "fp8").problems)


def test_variant_files_that_fail_end_to_end_are_dropped_not_shipped(tmp_path: Path) -> None:
    from edgegen.calibration.pipeline import MAX_JUDGE_DROP, MIN_PSNR_DB, _drop_variants
    from edgegen.calibration.report import variants_pass

    targets = {"min_psnr_db": MIN_PSNR_DB, "max_judge_drop_points": MAX_JUDGE_DROP}

    (tmp_path / "denoiser.int8.ort-cpu.onnx").write_bytes(b"x")
    e2e = {"mean_psnr_db": 40.0, "ort_cpu_variants": {"mean_psnr_db": 40.0, "judge": {"max_drop_points": MAX_JUDGE_DROP + 1}}}
    assert not variants_pass(e2e, targets)
    # the portable files' own figures do not decide it, only the variants'
    assert variants_pass({"mean_psnr_db": 0.0, "ort_cpu_variants": {"mean_psnr_db": MIN_PSNR_DB, "judge": {"max_drop_points": 0.0}}}, targets)
    assert not variants_pass({"mean_psnr_db": 50.0, "ort_cpu_variants": {"mean_psnr_db": MIN_PSNR_DB - 1, "judge": None}}, targets)
    fit = {"calibration_error": {"out": 0.01}, "target_rel_rmse": 0.03, "target_met": True}
    report = {"end_to_end": e2e, "components": {
        "denoiser": {"ort_cpu_variant": {"file": "denoiser.int8.ort-cpu.onnx", "chosen": "dynamic"}, **fit},
        "vae_decoder": {"ort_cpu_variant": {"chosen": None, "why_none": "slower"}, **fit},
    }}
    _drop_variants(tmp_path, report)
    variant = report["components"]["denoiser"]["ort_cpu_variant"]
    assert "file" not in variant and variant["dropped"] == "denoiser.int8.ort-cpu.onnx" and variant["why_dropped"]
    assert not (tmp_path / "denoiser.int8.ort-cpu.onnx").exists()
    assert "ort_cpu_variants" not in e2e and e2e["ort_cpu_variants_dropped"]["mean_psnr_db"] == 40.0
    verdict = rep.verdict({**report, "targets": {"min_psnr_db": MIN_PSNR_DB, "max_judge_drop_points": MAX_JUDGE_DROP, "min_step_speedup": 1.8}})
    assert not any("variants" in k for k in verdict["checks"])  # what is not shipped is not judged


def test_verdict_judges_each_backend_on_the_files_it_runs() -> None:
    """The portable Q/DQ files fail the judge, ORT CPU's own files pass: the portable verdict fails,
    ORT CPU's passes; the portable denoiser's component error is not ORT CPU's business."""
    from edgegen.calibration.pipeline import MAX_JUDGE_DROP, MIN_PSNR_DB

    targets = {"min_psnr_db": MIN_PSNR_DB, "max_judge_drop_points": MAX_JUDGE_DROP, "min_step_speedup": 1.8}
    e2e = {"mean_psnr_db": 40.0, "judge": {"max_drop_points": MAX_JUDGE_DROP + 1},
           "ort_cpu_variants": {"mean_psnr_db": 41.0, "judge": {"max_drop_points": MAX_JUDGE_DROP}}}
    missed = {"calibration_error": {"out": 0.05}, "target_rel_rmse": 0.03, "target_met": False}
    met = {"calibration_error": {"out": 0.01}, "target_rel_rmse": 0.03, "target_met": True}
    report = {"targets": targets, "end_to_end": e2e, "components": {
        "denoiser": {"ort_cpu_variant": {"file": "denoiser.int8.ort-cpu.onnx", "chosen": "dynamic"}, **missed},
        "vae_decoder": {"ort_cpu_variant": {"chosen": None}, **met}}}
    verdict = rep.verdict(report)
    assert verdict["passed"] is False and verdict["passed_by_backend"] == {"ort-cpu": True}
    report["components"]["vae_decoder"] = {"ort_cpu_variant": {"chosen": None}, **missed}  # ORT CPU runs its portable file
    assert rep.verdict(report)["passed_by_backend"] == {"ort-cpu": False}
    e2e["ort_cpu_variants"]["judge"]["max_drop_points"] = MAX_JUDGE_DROP + 0.5
    report["components"]["vae_decoder"] = {"ort_cpu_variant": {"chosen": None}, **met}
    assert rep.verdict(report)["passed_by_backend"] == {"ort-cpu": False}
    del e2e["ort_cpu_variants"]
    assert "passed_by_backend" not in rep.verdict(report)  # no files of its own: the portable verdict


def test_file_sessions_take_the_runtime_thread_plan(tiny_bundle: Path) -> None:
    """Wall-time latency compares files on one plan: its threads, spinning within a run only."""
    from edgegen.calibration.evaluate import OrtFileSession, component_file

    bundle = load_bundle(tiny_bundle)
    path = component_file(bundle, "fp32", "denoiser")
    names = bundle.component("fp32", "denoiser").output_names
    session = OrtFileSession(path, names, threads=2, spin=True)
    options = session._session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    plain = OrtFileSession(path, names, threads=1)._session.get_session_options()
    assert plain.intra_op_num_threads == 1


def test_capture_cache_keeps_the_recently_used_under_its_size_cap(tmp_path: Path) -> None:
    import os

    from edgegen.calibration.capture import prune_cache

    paths = []
    for i, age in enumerate((400, 300, 200, 100)):  # seconds ago; capture-0 is the oldest
        path = tmp_path / f"capture-{i}.npz"
        path.write_bytes(b"x" * 1000)
        os.utime(path, (path.stat().st_atime, path.stat().st_mtime - age))
        paths.append(path)
    os.utime(paths[0])  # just reused: now the most recent
    removed = prune_cache(tmp_path, keep=paths[3], max_bytes=2500)
    assert removed == [paths[1], paths[2]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["capture-0.npz", "capture-3.npz"]


def test_a_bad_cache_cap_setting_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgegen.calibration.capture import _cache_cap
    from edgegen.errors import UserError

    monkeypatch.setenv("EDGEGEN_CALIBRATION_CACHE_GB", "lots")
    with pytest.raises(UserError, match="EDGEGEN_CALIBRATION_CACHE_GB='lots' is not a size"):
        _cache_cap()
    monkeypatch.setenv("EDGEGEN_CALIBRATION_CACHE_GB", "0.5")
    assert _cache_cap() == 512 * 1024**2
