"""What the GPU backends share: the device-resident fast path and a dependency-free GPU probe.

The `Session` protocol (`run(feeds) -> outputs`) moves every input to the device and every
output back, every call. For the per-step denoiser that would upload the chunk's whole context
(depth × 2 × (W·N + L) × D floats) on every step. GPU sessions therefore also implement
`DeviceSession.bind()`, which returns a `DeviceBinding`: one persistent device buffer per input
and output (plus, for TensorRT, its own execution context and CUDA stream), allocated once, and
three primitives on top of them:

    write(name, array)       host → device, into input `name`'s buffer (stays until overwritten)
    step(read=())            run on the bound buffers; copy back only the outputs named in `read`
    carry(output, input)     `input` now holds what `output` produced; no copy, no host trip

A binding is stream state (DESIGN.md: the stream owns its caches), so each `Stream` binds its
own; the session (engine, weights) stays shared and immutable. `carry` swaps the two buffers
(double buffering): the next `step` reads the old output buffer as its input and writes into the
old input buffer. Backends that replay CUDA graphs keep one graph per buffer arrangement (two for
a carried pair), so a swap never invalidates a graph. The VAE decoder carries its state this way.

The streaming loop (DESIGN.md) binds the per-step denoiser, per stream:

    b = denoiser.bind()
    b.write("text_pooled", pooled)
    per chunk:  context, bias = context_session.run(...)          # once per chunk, plain run
                b.write("context", context); b.write("context_bias", bias)
        per step:   b.write("latent", x); b.write("t", t); v = b.step(read=["velocity"])["velocity"]
                    x = sampling.euler_step(x, v, t, t_next)        # the shared numpy sampler
    commit:     kv = commit_session.run(...)                        # once per chunk, plain run

Per step only the latent and t go up and the velocity comes back (C×h×w floats, 8 KiB at the
default size), deliberately: the Euler update stays the shared numpy sampler every backend uses.
The context (~1.1 MB at the default size) crosses once per chunk, and the K/V cache lives on the
host (rolled in place); the context and commit graphs run once per chunk through `Session.run`.
`Session.run(feeds)` is a private binding's `write` for every input plus `step(read=all outputs)`,
so the plain protocol and the fast path share one implementation.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class DeviceBinding(Protocol):
    """Persistent device buffers for one stream (see module doc). Not thread-safe: one stream, one thread."""

    def write(self, name: str, value: np.ndarray) -> None:
        """Copy `value` (exactly the input's shape) into input `name`'s device buffer."""
        ...

    def step(self, read: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Run once on the bound buffers; return host copies of the outputs named in `read`."""
        ...

    def carry(self, output: str, input: str) -> None:
        """Make input `input` hold what output `output` produced in the last `step` (a buffer swap)."""
        ...

    def close(self) -> None:
        """Free the device buffers now (they are also freed when the binding is collected)."""
        ...


@runtime_checkable
class DeviceSession(Protocol):
    """A Session that can also hand out per-stream device-resident bindings."""

    def bind(self) -> DeviceBinding:
        """New buffers (and stream/context) for one stream; the weights stay shared."""
        ...


class RunThroughBinding:
    """`Session.run` for device sessions: one private binding, made on the first call (streams that
    `bind()` never pay for it); concurrent callers take turns. Needs `entry` and `bind()`."""

    entry: Any
    _run_binding: DeviceBinding | None
    _run_lock: threading.Lock

    def _init_run(self) -> None:
        self._run_binding = None
        self._run_lock = threading.Lock()

    def bind(self) -> DeviceBinding:  # pragma: no cover - provided by the session class
        raise NotImplementedError

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.entry.input_names if n not in feeds]
        if missing:
            raise ValueError(f"{self.entry.component}: missing inputs {missing}")
        with self._run_lock:
            if self._run_binding is None:
                self._run_binding = self.bind()
            for name in self.entry.input_names:
                self._run_binding.write(name, feeds[name])
            return self._run_binding.step(read=self.entry.output_names)


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA device, as the driver reports it."""

    index: int
    name: str
    compute_capability: tuple[int, int]
    total_memory: int  # bytes; on Jetson this is the shared CPU+GPU memory
    driver_version: int  # e.g. 12060 for CUDA 12.6
    multiprocessors: int = 0  # SM count: tells apart boards that share a name ("Orin" is Nano, NX and AGX)

    @property
    def sm(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


# CUdevice_attribute values from cuda.h (stable since CUDA 3.x).
_SM_COUNT, _CC_MAJOR, _CC_MINOR = 16, 75, 76


def _load_libcuda() -> ctypes.CDLL | None:
    names = ["nvcuda.dll"] if sys.platform == "win32" else ["libcuda.so.1", "libcuda.so"]
    found = ctypes.util.find_library("cuda")
    if found:
        names.append(found)
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def probe_gpu(index: int = 0) -> tuple[GpuInfo | None, str]:
    """(GPU `index`, "") or (None, why not) via the CUDA driver API, with no Python CUDA package.

    Used by `available()` so a backend can say "no GPU" before importing a heavy library, and by
    the trt-rtx backend to check the compute capability.
    """
    lib = _load_libcuda()
    if lib is None:
        return None, "no NVIDIA driver found (libcuda could not be loaded): this machine has no usable NVIDIA GPU"
    if (err := lib.cuInit(0)) != 0:
        return None, f"the NVIDIA driver is present but cuInit failed (CUresult {err}): no usable GPU (check nvidia-smi)"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return None, "the NVIDIA driver reports no CUDA device"
    if index >= count.value:
        return None, f"GPU {index} does not exist (the driver reports {count.value})"
    device = ctypes.c_int(0)
    lib.cuDeviceGet(ctypes.byref(device), index)
    name = ctypes.create_string_buffer(256)
    lib.cuDeviceGetName(name, len(name), device)
    major, minor, sms, driver = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    lib.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, device)
    lib.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, device)
    lib.cuDeviceGetAttribute(ctypes.byref(sms), _SM_COUNT, device)
    lib.cuDriverGetVersion(ctypes.byref(driver))
    memory = ctypes.c_size_t(0)
    lib.cuDeviceTotalMem_v2(ctypes.byref(memory), device)
    info = GpuInfo(
        index, name.value.decode(errors="replace"), (major.value, minor.value), memory.value, driver.value, sms.value
    )
    return info, ""


def is_jetson() -> bool:
    """True on an NVIDIA Jetson (L4T writes /etc/nv_tegra_release)."""
    return platform.machine() == "aarch64" and Path("/etc/nv_tegra_release").exists()


def check_feed(name: str, value: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """`value` as a C-contiguous array of `dtype`, or a ValueError naming the input and the mismatch."""
    value = np.asarray(value)
    if value.shape != shape:
        raise ValueError(f"input {name!r} has shape {value.shape}, the session was built for {shape}")
    if not np.can_cast(value.dtype, dtype, casting="same_kind"):
        raise ValueError(f"input {name!r} has dtype {value.dtype}, the model takes {dtype}")
    return np.ascontiguousarray(value, dtype=dtype)
