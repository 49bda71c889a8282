"""GPU backends (ort-cuda, tensorrt, trt-rtx): what they say when they cannot run, and (on a GPU) that they run.

The first part runs everywhere: each `available()` is driven through every missing piece (library,
version, cuda-python, driver, GPU generation) with fakes, and `edgegen build` without TensorRT is
run through the real CLI entry point. The second part needs an NVIDIA GPU and the library; it
skips with the reason elsewhere (and has never run yet: no GPU was available while writing it).
"""

from __future__ import annotations

import ctypes
import importlib.util
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from edgegen.cli import main
from edgegen.runtime import backends
from edgegen.runtime.backends import device, ort_cuda, trt_rtx
from edgegen.runtime.backends import tensorrt as trt_backend
from edgegen.runtime.backends.device import GpuInfo, check_feed, probe_gpu

ORIN = GpuInfo(0, "Orin", (8, 7), 8 << 30, 12060, 8)
RTX_4070 = GpuInfo(0, "NVIDIA GeForce RTX 4070", (8, 9), 12 << 30, 12080)
RTX_3060 = GpuInfo(0, "NVIDIA GeForce RTX 3060", (8, 6), 12 << 30, 12080)
H100 = GpuInfo(0, "NVIDIA H100 80GB HBM3", (9, 0), 80 << 30, 12080)
NO_GPU = (None, "no NVIDIA driver found (libcuda could not be loaded): this machine has no usable NVIDIA GPU")


def _gpu(monkeypatch: pytest.MonkeyPatch, module: types.ModuleType, info: GpuInfo | None) -> None:
    monkeypatch.setattr(module, "probe_gpu", lambda index=0: (info, "") if info else NO_GPU)


def _missing(name: str):
    def fail():
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    return fail


# ---------------------------------------------------------------------------------------------
# tensorrt: available() reasons


def test_tensorrt_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trt_backend, "import_tensorrt", _missing("tensorrt"))
    monkeypatch.setattr(trt_backend, "is_jetson", lambda: False)
    ok, why = trt_backend.TensorRTBackend().available()
    assert not ok and "TensorRT is not installed" in why and 'pip install "edgegen[tensorrt]"' in why
    monkeypatch.setattr(trt_backend, "is_jetson", lambda: True)
    ok, why = trt_backend.TensorRTBackend().available()
    assert not ok and "sudo apt install python3-libnvinfer" in why and "JetPack" in why


def test_tensorrt_broken_install_is_a_reason_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken():
        raise OSError("libnvinfer.so.10: cannot open shared object file")

    monkeypatch.setattr(trt_backend, "import_tensorrt", broken)
    ok, why = trt_backend.TensorRTBackend().available()
    assert not ok and "libnvinfer.so.10" in why


def test_tensorrt_too_old_no_cuda_python_no_gpu_then_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.SimpleNamespace(__version__="8.6.2")
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: fake)
    ok, why = trt_backend.TensorRTBackend().available()
    assert not ok and "TensorRT 8.6.2 is too old" in why and "TensorRT 10" in why

    fake.__version__ = "10.3.0"
    monkeypatch.setattr(trt_backend, "import_cudart", _missing("cuda"))
    ok, why = trt_backend.TensorRTBackend().available()
    assert not ok and 'pip install "cuda-python>=12.6,<13"' in why

    monkeypatch.setattr(trt_backend, "import_cudart", lambda: object())
    _gpu(monkeypatch, trt_backend, None)
    ok, why = trt_backend.TensorRTBackend().available()
    assert not ok and why.startswith("TensorRT 10.3.0 is installed but no NVIDIA driver found")

    _gpu(monkeypatch, trt_backend, ORIN)
    backend = trt_backend.TensorRTBackend()
    assert backend.available() == (True, "TensorRT 10.3.0 on Orin (sm 8.7)")
    # fp16 first: int8/fp8 bundles are Q/DQ on the fp32 graph, and no order has been measured on a GPU.
    assert backend.precisions == ("fp16", "int8", "fp32")  # Orin: no FP8 tensor cores
    assert backend.environment() == trt_backend.TrtEnvironment("10.3.0", "Orin", "8.7", multiprocessors=8, total_memory=8 << 30)
    _gpu(monkeypatch, trt_backend, RTX_4070)
    assert trt_backend.TensorRTBackend().precisions == ("fp16", "int8", "fp8", "fp32")


def test_cuda_python_pin_is_the_same_in_the_extra_and_the_hints(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuda-python 13 dropped cuda.cudart and targets CUDA 13 (JetPack 6 is 12.6): every hint pins < 13."""
    tomllib = pytest.importorskip("tomllib")
    extra = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]["tensorrt"]
    assert trt_backend.CUDA_PYTHON_PIN == "cuda-python>=12.6,<13" and trt_backend.CUDA_PYTHON_PIN in extra
    monkeypatch.setattr(trt_backend, "is_jetson", lambda: True)
    assert f'pip install "{trt_backend.CUDA_PYTHON_PIN}"' in trt_backend.install_hint()


def test_importing_the_backends_imports_no_gpu_library() -> None:
    code = (
        "import sys; import edgegen.runtime.backends.tensorrt, edgegen.runtime.backends.ort_cuda, "
        "edgegen.runtime.backends.trt_rtx, edgegen.runtime.engine_cache; "
        "print(sorted(m for m in ('tensorrt', 'cuda', 'onnxruntime', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# ort-cuda and trt-rtx: available() reasons


def _fake_ort(monkeypatch: pytest.MonkeyPatch, providers: list[str], version: str = "1.20.1", **attrs) -> None:
    fake = types.ModuleType("onnxruntime")
    fake.__version__ = version
    fake.get_available_providers = lambda: list(providers)
    for k, v in attrs.items():
        setattr(fake, k, v)
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)


def test_ort_cuda_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort_cuda, "is_jetson", lambda: False)
    _fake_ort(monkeypatch, ["CPUExecutionProvider"])
    ok, why = ort_cuda.OrtCudaBackend().available()
    assert not ok and "CPU build" in why
    # docs/DEVICES.md's order: the extra first (it reinstalls onnxruntime), then swap the CPU module for the GPU one.
    for hint in (why, backends.INSTALL_HINTS["ort-cuda"]):
        steps = ['pip install "edgegen[gpu]"', "pip uninstall -y onnxruntime", "pip install --force-reinstall onnxruntime-gpu"]
        assert all(step in hint for step in steps), hint
        assert [hint.index(step) for step in steps] == sorted(hint.index(step) for step in steps), hint
    monkeypatch.setattr(ort_cuda, "is_jetson", lambda: True)
    assert "Jetson" in ort_cuda.OrtCudaBackend().available()[1]

    _fake_ort(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    _gpu(monkeypatch, ort_cuda, None)
    ok, why = ort_cuda.OrtCudaBackend().available()
    assert not ok and "has CUDAExecutionProvider but no NVIDIA driver found" in why
    _gpu(monkeypatch, ort_cuda, RTX_3060)
    assert ort_cuda.OrtCudaBackend().available() == (True, "onnxruntime 1.20.1 CUDAExecutionProvider on NVIDIA GeForce RTX 3060 (sm 8.6)")


def test_ort_cuda_on_this_machine_says_why_not() -> None:
    ok, why = ort_cuda.OrtCudaBackend().available()
    if ok:
        pytest.skip(f"ort-cuda is available here: {why}")
    assert why and "\n" not in why


def test_trt_rtx_supported_compute_capabilities() -> None:
    assert [cc for cc in [(7, 5), (8, 0), (8, 6), (8, 7), (8, 9), (9, 0), (10, 0), (12, 0), (12, 1)] if trt_rtx.supported_sm(cc)] == [
        (7, 5), (8, 6), (8, 9), (12, 0), (12, 1),
    ]


def test_trt_rtx_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_ort(monkeypatch, ["CPUExecutionProvider"], version="1.22.0")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    ok, why = trt_rtx.TrtRtxBackend().available()
    assert not ok and "pip install \"onnxruntime>=1.24\" onnxruntime-ep-nv-tensorrt-rtx" in why

    _fake_ort(monkeypatch, ["NvTensorRTRTXExecutionProvider", "CPUExecutionProvider"])
    for gpu, jetson in ((ORIN, True), (H100, False)):
        _gpu(monkeypatch, trt_rtx, gpu)
        monkeypatch.setattr(trt_rtx, "is_jetson", lambda jetson=jetson: jetson)
        ok, why = trt_rtx.TrtRtxBackend().available()
        assert not ok and f"is sm {gpu.sm}" in why and "7.5, 8.6, 8.9 and 12.x" in why and "--backend tensorrt" in why
        assert ("on Jetson" in why) is jetson
    _gpu(monkeypatch, trt_rtx, RTX_3060)
    ok, why = trt_rtx.TrtRtxBackend().available()
    assert ok and "built in" in why and "RTX 3060 (sm 8.6)" in why
    assert trt_rtx.TrtRtxBackend().precisions == ("fp16", "fp32")  # no fp8 before sm 8.9, no int8 (weight-only there)
    _gpu(monkeypatch, trt_rtx, RTX_4070)
    assert trt_rtx.TrtRtxBackend().precisions == ("fp16", "fp8", "fp32")  # fp8 bundles are Q/DQ on fp32: not ranked first


def test_trt_rtx_plugin_needs_a_recent_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_ort(monkeypatch, ["CPUExecutionProvider"], version="1.20.0")  # no register_execution_provider_library
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == trt_rtx.PLUGIN_MODULE else None)
    assert trt_rtx.find_provider() == ("", 'onnxruntime 1.20.0 cannot load execution-provider plugins; pip install "onnxruntime>=1.24"')
    _fake_ort(monkeypatch, ["CPUExecutionProvider"], version="1.24.1", register_execution_provider_library=lambda *a: None)
    assert trt_rtx.find_provider()[0] == "plugin"


def test_registry_reports_each_gpu_backend_without_raising() -> None:
    for name in ("ort-cuda", "tensorrt", "trt-rtx"):
        ok, why = backends.status(name)
        assert isinstance(ok, bool) and why and "\n" not in why


# ---------------------------------------------------------------------------------------------
# The driver probe and feed checks


class _FakeLibcuda:
    """Stands in for libcuda (CUDA driver API names): each call writes its answer through the byref() pointer."""

    def __init__(self, init_error: int = 0, count: int = 1) -> None:
        self.init_error, self.count = init_error, count

    def cuInit(self, flags: int) -> int:
        return self.init_error

    def cuDeviceGetCount(self, out) -> int:
        out._obj.value = self.count
        return 0

    def cuDeviceGet(self, out, index: int) -> int:
        out._obj.value = index
        return 0

    def cuDeviceGetName(self, buf, size: int, dev) -> int:
        buf.value = b"Orin"
        return 0

    def cuDeviceGetAttribute(self, out, attribute: int, dev) -> int:
        out._obj.value = {16: 8, 75: 8, 76: 7}[attribute]  # SM count, compute capability major, minor
        return 0

    def cuDriverGetVersion(self, out) -> int:
        out._obj.value = 12060
        return 0

    def cuDeviceTotalMem_v2(self, out, dev) -> int:
        out._obj.value = 8 << 30
        return 0


def test_probe_gpu_reads_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "_load_libcuda", lambda: _FakeLibcuda())
    info, why = probe_gpu()
    assert why == "" and info == GpuInfo(0, "Orin", (8, 7), 8 << 30, 12060, multiprocessors=8) and info.sm == "8.7"
    monkeypatch.setattr(device, "_load_libcuda", lambda: _FakeLibcuda(init_error=100))
    assert probe_gpu() == (None, "the NVIDIA driver is present but cuInit failed (CUresult 100): no usable GPU (check nvidia-smi)")
    monkeypatch.setattr(device, "_load_libcuda", lambda: _FakeLibcuda(count=0))
    assert probe_gpu() == (None, "the NVIDIA driver reports no CUDA device")
    monkeypatch.setattr(device, "_load_libcuda", lambda: _FakeLibcuda(count=1))
    assert probe_gpu(1) == (None, "GPU 1 does not exist (the driver reports 1)")
    monkeypatch.setattr(device, "_load_libcuda", lambda: None)
    assert probe_gpu() == NO_GPU


def test_probe_gpu_on_this_machine_is_consistent() -> None:
    info, why = probe_gpu()
    if info is None:
        assert why
    else:
        assert why == "" and info.name and info.compute_capability[0] >= 3 and info.total_memory > 0


def test_check_feed_names_the_problem() -> None:
    out = check_feed("t", np.array([0.5], np.float64), (1,), np.dtype(np.float32))
    assert out.dtype == np.float32 and out.flags.c_contiguous
    with pytest.raises(ValueError, match=r"input 'latent' has shape \(8, 16, 16\), the session was built for \(1, 8, 16, 16\)"):
        check_feed("latent", np.zeros((8, 16, 16), np.float32), (1, 8, 16, 16), np.dtype(np.float32))
    with pytest.raises(ValueError, match="input 'tokens' has dtype float32, the model takes int64"):
        check_feed("tokens", np.zeros((1, 4), np.float32), (1, 4), np.dtype(np.int64))


# ---------------------------------------------------------------------------------------------
# `edgegen build` without TensorRT


def _bundle(tmp_path: Path) -> Path:
    # tests/ is on sys.path: pytest prepends the folder of an __init__-less test module.
    from test_engine_cache import make_bundle

    return make_bundle(tmp_path / "bundle").path


def test_build_without_tensorrt_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    monkeypatch.setattr(trt_backend, "import_tensorrt", _missing("tensorrt"))
    monkeypatch.setattr(trt_backend, "is_jetson", lambda: False)
    code = main(["build", str(_bundle(tmp_path)), "--backend", "tensorrt"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("edgegen: error: cannot build TensorRT engines: TensorRT is not installed")
    assert 'pip install "edgegen[tensorrt]"' in err
    monkeypatch.setattr(trt_backend, "is_jetson", lambda: True)
    assert main(["build", str(_bundle(tmp_path)), "--backend", "tensorrt"]) == 2
    assert "python3-libnvinfer" in capsys.readouterr().err


def test_build_with_another_backend_is_refused(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["build", str(_bundle(tmp_path)), "--backend", "ort-cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tensorrt" in err and "when it loads" in err.replace("they load", "it loads")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here; the subprocess check is for machines without it")
def test_build_cli_process_without_tensorrt(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edgegen", "build", str(_bundle(tmp_path)), "--backend", "tensorrt"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "cannot build TensorRT engines" in out.stderr and "pip install" in out.stderr


# ---------------------------------------------------------------------------------------------
# On a GPU: the backends run a tiny model, bound buffers carry state, engines are cached


def _tiny_bundle(tmp_path: Path):
    """A bundle whose components are one tiny graph: y = 2x + 1, state_out = state + x (batch symbolic)."""
    onnx = pytest.importorskip("onnx", reason="building the test model needs onnx (the [train] extra)")
    from onnx import TensorProto, helper

    from edgegen.bundle import load_bundle, write_manifest

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    state = helper.make_tensor_value_info("state", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    state_out = helper.make_tensor_value_info("state_out", TensorProto.FLOAT, ["batch", 4])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["x2"]),
        helper.make_node("Add", ["x2", "one"], ["y"]),
        helper.make_node("Add", ["state", "x"], ["state_out"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [x, state], [y, state_out], [two, one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)  # readable by older runtimes
    root = tmp_path / "tiny"
    root.mkdir()
    onnx.save(model, root / "tiny.onnx")
    (root / "tokenizer.json").write_text("{}")
    io = {"inputs": [{"name": n, "dtype": "float32", "shape": ["batch", 4]} for n in ("x", "state")],
          "outputs": [{"name": n, "dtype": "float32", "shape": ["batch", 4]} for n in ("y", "state_out")]}
    comp = {"file": "tiny.onnx", **io, "opset": 17}
    write_manifest(root, {
        "model": {"name": "tiny", "config": {}},
        "video": {"height": 64, "width": 64, "chunk_frames": 4, "fps": 24},
        "latent": {"channels": 8, "height": 16, "width": 16},
        "cache": {"slots": 3, "tokens_per_slot": 64},
        "sampler": {"type": "rectified-flow-euler", "default_steps": 1, "schedules": {"1": [1.0, 0.0]}, "t_ctx": 0.0},
        "tokenizer": {"file": "tokenizer.json", "max_len": 24},
        "precisions": {"fp32": {"components": {name: comp for name in ("text_encoder", "context", "denoiser", "commit", "vae_decoder")}}},
        "files": {},
        "provenance": {},
    })
    return load_bundle(root)


def _exercise(session) -> None:
    """`run`, then a bound stream: the state is carried on the device across CUDA-graph replays."""
    x = np.arange(4, dtype=np.float32)[None]
    out = session.run({"x": x, "state": np.zeros((1, 4), np.float32)})
    np.testing.assert_allclose(out["y"], 2 * x + 1)
    np.testing.assert_allclose(out["state_out"], x)
    binding = session.bind()
    binding.write("state", np.zeros((1, 4), np.float32))
    for k in range(1, 6):  # arrangement A, B, A, B, A: two graphs, each captured once, replayed
        binding.write("x", x * k)
        got = binding.step(read=["y"])
        np.testing.assert_allclose(got["y"], 2 * k * x + 1)
        binding.carry("state_out", "state")
    final = binding.step(read=["state_out"])["state_out"]  # 1+2+3+4+5 times x, plus one more x
    np.testing.assert_allclose(final, (15 + 5) * x)
    binding.close()


@pytest.mark.parametrize("graph_ids", [False, True])
def test_ort_device_binding_logic_runs_on_the_cpu(tmp_path: Path, graph_ids: bool) -> None:
    """The IOBinding machinery shared by ort-cuda and trt-rtx, on CPU OrtValues: same code, no GPU."""
    import onnxruntime as ort

    bundle = _tiny_bundle(tmp_path)
    entry = bundle.component("fp32", "denoiser")
    session = ort.InferenceSession(str(bundle.file(entry.file)), providers=["CPUExecutionProvider"])

    def cpu(shape, dtype):
        return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype.type, "cpu", 0)

    owner = ort_cuda.OrtDeviceSession(session, entry, cpu, cuda_graph=graph_ids)
    _exercise(owner)
    binding = owner.bind()
    binding.write("state", np.ones((1, 4), np.float32))
    binding.write("x", np.ones((1, 4), np.float32))
    binding.step()
    binding.carry("state_out", "state")
    binding.step()
    binding.carry("state_out", "state")
    binding.step()
    assert len(binding._run_options) == (2 if graph_ids else 0)  # one graph id per buffer arrangement
    ids = {o.get_run_config_entry("gpu_graph_id") for o in binding._run_options.values()}
    assert len(ids) == len(binding._run_options) and "0" not in ids  # 0 is ORT's reserved id
    with pytest.raises(KeyError, match="has no input 'y'"):
        binding.write("y", np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="missing inputs"):
        owner.run({"x": np.zeros((1, 4), np.float32)})


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_builds_caches_and_runs(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install \"edgegen[tensorrt]\")")
    backend = trt_backend.TensorRTBackend(cache=trt_backend.EngineCache(tmp_path / "engines"))
    ok, why = backend.available()
    if not ok:
        pytest.skip(why)
    bundle = _tiny_bundle(tmp_path)
    first = backend.ensure_engine(bundle, "denoiser", "fp32")
    assert first.built and backend.ensure_engine(bundle, "denoiser", "fp32").built is False
    _exercise(backend.open(bundle, "denoiser", "fp32"))


@pytest.mark.gpu
def test_ort_cuda_runs_with_bound_device_buffers(tmp_path: Path) -> None:
    backend = ort_cuda.OrtCudaBackend()
    ok, why = backend.available()
    if not ok:
        pytest.skip(why)
    _exercise(backend.open(_tiny_bundle(tmp_path), "denoiser", "fp32"))


@pytest.mark.gpu
def test_trt_rtx_runs_with_bound_device_buffers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEGEN_CACHE_DIR", str(tmp_path / "cache"))
    backend = trt_rtx.TrtRtxBackend()
    ok, why = backend.available()
    if not ok:
        pytest.skip(why)
    _exercise(backend.open(_tiny_bundle(tmp_path), "denoiser", "fp32"))


def test_fake_libcuda_matches_ctypes_calling_convention() -> None:
    """The probe passes byref() pointers and a string buffer: the fake above must see the same objects."""
    value = ctypes.c_int(0)
    ref = ctypes.byref(value)
    ref._obj.value = 3
    assert value.value == 3


# ---------------------------------------------------------------------------------------------
# The TensorRT session logic on fakes: host memory stands in for the GPU, a recorded list of
# closures for a CUDA graph. This checks edgegen's control flow (buffers, carry, one capture per
# buffer arrangement, replay, capture failure), not TensorRT: the real thing is the GPU test above.


class _FakeCudart:
    class cudaError_t:  # cuda-python names
        cudaSuccess = 0
        cudaErrorMemoryAllocation = 2

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    class cudaStreamCaptureMode:
        cudaStreamCaptureModeThreadLocal = 1

    def __init__(self, fail_alloc: int | None = None) -> None:
        self.memory: dict[int, ctypes.Array] = {}
        self.recording: list | None = None
        self.captures = self.launches = 0
        self.allocs = 0
        self.fail_alloc = fail_alloc  # the n-th allocation (device or pinned host, from 1) fails
        self.devices: list[int] = []  # every cudaSetDevice
        self.graphs: set[int] = set()  # captured graphs not destroyed yet
        self.execs: set[int] = set()  # instantiated graphs not destroyed yet

    def _alloc(self, n: int):
        self.allocs += 1
        if self.allocs == self.fail_alloc:
            return self.cudaError_t.cudaErrorMemoryAllocation, None
        buf = (ctypes.c_uint8 * n)()
        self.memory[ctypes.addressof(buf)] = buf
        return 0, ctypes.addressof(buf)

    cudaMalloc = cudaMallocHost = _alloc

    def _free(self, ptr: int):
        self.memory.pop(ptr)
        return (0,)

    cudaFree = cudaFreeHost = _free

    def cudaSetDevice(self, device: int):
        self.devices.append(device)
        return (0,)

    def cudaStreamCreate(self):
        return 0, 7

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: int, stream: int):
        assert self.recording is None, "copies are never captured"
        ctypes.memmove(dst, src, n)
        return (0,)

    def cudaStreamBeginCapture(self, stream: int, mode: int):
        self.recording = []
        return (0,)

    def cudaStreamEndCapture(self, stream: int):
        ops, self.recording = self.recording, None
        self.captures += 1
        self.graphs.add(id(ops))
        return 0, ops

    def cudaGraphDestroy(self, graph: list):
        self.graphs.remove(id(graph))
        return (0,)

    def cudaGraphInstantiate(self, graph: list, flags: int):
        exec_graph = list(graph)
        self.execs.add(id(exec_graph))
        return 0, exec_graph

    def cudaGraphExecDestroy(self, exec_graph: list):
        self.execs.remove(id(exec_graph))
        return (0,)

    def cudaGraphLaunch(self, graph: list, stream: int):
        self.launches += 1
        for op in graph:
            op()
        return (0,)

    def _ok(self, *args):
        return (0,)

    cudaStreamSynchronize = cudaStreamDestroy = _ok


class _FakeContext:
    """y = 2x + 1, state_out = state + x on the bound addresses (read when the work runs, like a graph)."""

    def __init__(self, cudart: _FakeCudart, fail_capture: bool, reject_address: str | None = None) -> None:
        self.cudart, self.fail_capture, self.reject_address, self.addresses = cudart, fail_capture, reject_address, {}

    def set_input_shape(self, name: str, shape) -> bool:
        return tuple(shape) == (1, 4)

    def get_tensor_shape(self, name: str):
        return (1, 4)

    def set_tensor_address(self, name: str, address: int) -> bool:
        if name == self.reject_address:
            return False  # TensorRT's answer to e.g. a misaligned address
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream: int) -> bool:
        if self.cudart.recording is not None and self.fail_capture:
            self.cudart.recording.append(lambda: None)  # some work was captured before TensorRT gave up
            return False
        a = dict(self.addresses)  # the addresses at enqueue time are what a graph bakes in

        def view(name: str) -> np.ndarray:
            return np.ctypeslib.as_array((ctypes.c_float * 4).from_address(a[name])).reshape(1, 4)

        def work() -> None:
            view("y")[:] = 2 * view("x") + 1
            view("state_out")[:] = view("state") + view("x")

        if self.cudart.recording is not None:
            self.cudart.recording.append(work)
        else:
            work()
        return True


def _fake_trt_session(
    monkeypatch: pytest.MonkeyPatch,
    *,
    cuda_graph: bool,
    fail_capture: bool = False,
    cudart: _FakeCudart | None = None,
    reject_address: str | None = None,
    device: int = 0,
):
    from edgegen.bundle import ComponentEntry, TensorSpec

    cudart = cudart or _FakeCudart()
    names = ["x", "state", "y", "state_out"]
    engine = types.SimpleNamespace(
        num_io_tensors=4,
        get_tensor_name=lambda i: names[i],
        get_tensor_mode=lambda n: "in" if n in ("x", "state") else "out",
        get_tensor_dtype=lambda n: "f32",
        create_execution_context=lambda: _FakeContext(cudart, fail_capture, reject_address),
    )
    fake_trt = types.SimpleNamespace(__version__="10.3.0", TensorIOMode=types.SimpleNamespace(INPUT="in"), nptype=lambda dt: np.float32)
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: fake_trt)
    monkeypatch.setattr(trt_backend, "import_cudart", lambda: cudart)
    spec = lambda n: TensorSpec(n, "float32", ("batch", 4))  # noqa: E731
    entry = ComponentEntry("denoiser", "fp32", "tiny.onnx", (spec("x"), spec("state")), (spec("y"), spec("state_out")), 17)
    session = trt_backend.TensorRTSession(trt_backend._EngineHandle(engine, None), entry, cuda_graph=cuda_graph, device=device)
    return session, cudart


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_tensorrt_session_logic_on_fakes(monkeypatch: pytest.MonkeyPatch, cuda_graph: bool) -> None:
    session, cudart = _fake_trt_session(monkeypatch, cuda_graph=cuda_graph)
    _exercise(session)
    # run(): one arrangement, captured once; the bound stream: two arrangements (carry swaps), each once.
    assert cudart.captures == (3 if cuda_graph else 0)
    assert cudart.launches == (4 if cuda_graph else 0)  # 6 bound steps, minus the first of each arrangement
    assert len(cudart.memory) == 2 * 4  # the run binding's buffers (device + pinned host); the stream's were freed
    assert not cudart.graphs  # each captured graph destroyed once instantiated
    assert len(cudart.execs) == (1 if cuda_graph else 0)  # the run binding's; the stream's two were destroyed


def test_tensorrt_capture_failure_warns_once_and_still_computes(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    session, cudart = _fake_trt_session(monkeypatch, cuda_graph=True, fail_capture=True)
    with caplog.at_level("WARNING"):
        _exercise(session)
    assert cudart.launches == 0
    warnings = [r.getMessage() for r in caplog.records if "CUDA graph capture failed" in r.getMessage()]
    assert len(warnings) == 2  # once per binding (the run binding and the stream's), then uncaptured
    assert cudart.captures == 2 and not cudart.graphs and not cudart.execs  # the partial graphs were destroyed


@pytest.mark.parametrize("fail_alloc", [1, 2, 3, 8])
def test_tensorrt_binding_frees_everything_when_an_allocation_fails(monkeypatch: pytest.MonkeyPatch, fail_alloc: int) -> None:
    """2 allocations per tensor (device, pinned host): failing the 2nd is the case where _Buffer itself leaked."""
    session, cudart = _fake_trt_session(monkeypatch, cuda_graph=True)
    session_memory = dict(cudart.memory)
    cudart.allocs, cudart.fail_alloc = 0, fail_alloc
    with pytest.raises(trt_backend.CudaError, match="cudaMalloc"):
        session.bind()
    assert cudart.memory == session_memory  # nothing new is left allocated


def test_tensorrt_rejected_tensor_address_is_an_error_and_frees(monkeypatch: pytest.MonkeyPatch) -> None:
    cudart = _FakeCudart()
    with pytest.raises(RuntimeError, match="rejected the device address of state_out for denoiser"):
        _fake_trt_session(monkeypatch, cuda_graph=True, cudart=cudart, reject_address="state_out")
    assert cudart.memory == {}


def test_tensorrt_session_uses_its_device_on_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    session, cudart = _fake_trt_session(monkeypatch, cuda_graph=True, device=1)
    _exercise(session)
    assert cudart.devices and set(cudart.devices) == {1}


# ---------------------------------------------------------------------------------------------
# build_plan on a fake TensorRT: the control flow around the builder (not TensorRT itself)


class _FakeConfig:
    def __init__(self, profile_index: int) -> None:
        self.profile_index = profile_index
        self.attached: bytes | None = None
        self.progress_monitor = None

    def set_memory_pool_limit(self, pool, size: int) -> None:
        self.workspace = size

    def add_optimization_profile(self, profile) -> int:
        return self.profile_index

    def create_timing_cache(self, data: bytes):
        if data.startswith(b"garbage"):
            return None  # what TensorRT answers for bytes it cannot read
        return types.SimpleNamespace(data=data)

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        if cache.data.startswith(b"other-gpu"):
            return False
        self.attached = cache.data
        return True

    def get_timing_cache(self):
        return types.SimpleNamespace(serialize=lambda: self.attached + b"+new")


class _FakeBuilder:
    """Builds in 3 steps; `during` runs after the first (e.g. a Ctrl-C), `result` is the plan or None."""

    def __init__(self, config: _FakeConfig, during=None, result: bytes | None = b"PLAN") -> None:
        self.config, self.during, self.result = config, during, result
        self.answers: list[bool] = []
        self.unwound: BaseException | None = None

    def create_network(self, flags: int):
        return types.SimpleNamespace(
            num_inputs=1, num_outputs=1,
            get_input=lambda i: types.SimpleNamespace(name="x"), get_output=lambda i: types.SimpleNamespace(name="y"),
        )

    def create_builder_config(self) -> _FakeConfig:
        return self.config

    def create_optimization_profile(self):
        return types.SimpleNamespace(set_shape=lambda *a: None)

    def build_serialized_network(self, network, config: _FakeConfig):
        monitor = config.progress_monitor
        try:  # an exception here would have unwound through TensorRT's C++ frames
            monitor.phase_start("Building", None, 3)
            for i in range(3):
                if i == 1 and self.during:
                    self.during()
                self.answers.append(monitor.step_complete("Building", i))
                if not self.answers[-1]:
                    return None  # TensorRT cancels the build
            monitor.phase_finish("Building")
        except BaseException as exc:
            self.unwound = exc
            raise
        return self.result


def _fake_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, builder: _FakeBuilder, **kwargs):
    from test_engine_cache import ORIN, make_bundle

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    fake_trt = types.SimpleNamespace(
        __version__="10.3.0",
        NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=0),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE=0),
        IProgressMonitor=IProgressMonitor,
        Builder=lambda logger: builder,
        OnnxParser=lambda network, logger: types.SimpleNamespace(parse_from_file=lambda path: True),
    )
    cudart = _FakeCudart()
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: fake_trt)
    monkeypatch.setattr(trt_backend, "import_cudart", lambda: cudart)
    monkeypatch.setattr(trt_backend, "_LOGGER", object())
    bundle = make_bundle(tmp_path / "bundle")
    spec = trt_backend.EngineSpec.for_component(bundle, "text_encoder", "fp32", ORIN)
    entry = bundle.component("fp32", "text_encoder")
    result = trt_backend.build_plan(bundle.file(entry.file), entry, spec, kwargs.pop("timing", b""), kwargs.pop("progress", None), **kwargs)
    return result, cudart


def test_build_plan_builds_on_its_device_with_the_saved_timing_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    builder = _FakeBuilder(_FakeConfig(profile_index=0))
    (plan, timing), cudart = _fake_build(monkeypatch, tmp_path, builder, timing=b"saved", device=1)
    assert plan == b"PLAN" and timing == b"saved+new" and builder.answers == [True, True, True]
    assert cudart.devices == [1]


@pytest.mark.parametrize("saved", [b"garbage", b"other-gpu"])
def test_build_plan_replaces_an_unusable_timing_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture, saved: bytes
) -> None:
    builder = _FakeBuilder(_FakeConfig(profile_index=0))
    with caplog.at_level("INFO"):
        (plan, timing), _ = _fake_build(monkeypatch, tmp_path, builder, timing=saved)
    assert plan == b"PLAN" and timing == b"+new"  # built on a fresh cache
    assert "starting a fresh one" in caplog.text


def test_build_plan_rejects_an_invalid_profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    builder = _FakeBuilder(_FakeConfig(profile_index=-1))
    with pytest.raises(trt_backend.BundleError, match=r"TensorRT rejects the optimization profile for text_encoder \(fp32\) \(x:1x4\)"):
        _fake_build(monkeypatch, tmp_path, builder)
    assert builder.answers == []  # refused before building


def test_build_plan_failure_points_to_the_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    builder = _FakeBuilder(_FakeConfig(profile_index=0), result=None)
    with pytest.raises(trt_backend.UserError, match=r"could not build the engine for text_encoder \(fp32\).*rerun with --debug"):
        _fake_build(monkeypatch, tmp_path, builder)


def test_ctrl_c_during_a_build_cancels_it_through_the_monitor(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No progress display (the `generate` path): Ctrl-C still reaches TensorRT as a cancelled step,
    no exception unwinds through the builder, and KeyboardInterrupt comes out after it returned."""
    builder = _FakeBuilder(_FakeConfig(profile_index=0), during=lambda: signal.raise_signal(signal.SIGINT))
    # Python's own handler, as in a terminal: a background job (nohup CI) inherits SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            _fake_build(monkeypatch, tmp_path, builder)
        assert builder.answers == [True, False] and builder.unwound is None
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the usual handler is back
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_failing_progress_callback_cancels_the_build_and_is_raised_after(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []

    def progress(phase: str, step: int, total: int) -> bool:
        calls.append(step)
        if step == 2:
            raise OSError("stderr is gone")
        return True

    builder = _FakeBuilder(_FakeConfig(profile_index=0))
    with pytest.raises(OSError, match="stderr is gone"):
        _fake_build(monkeypatch, tmp_path, builder, progress=progress)
    assert builder.answers == [True, False] and builder.unwound is None and calls == [0, 1, 2]
