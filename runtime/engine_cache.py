"""Compiled TensorRT engines are a cache, not content.

An engine is valid only for the exact ONNX it was built from, the input shapes of its
optimization profile, the TensorRT version, the GPU and the builder settings. `EngineSpec` holds
all of those: the sha256 of the ONNX bytes on disk (external data included), the profile, the
TensorRT version, the GPU's name, compute capability, SM count and total memory (boards such as
the Jetson Orin Nano, NX and AGX all report "Orin", sm 8.7), the builder settings, and
`BUILD_RECIPE`, the version of how `build_plan` builds. Its `key()` (a hash of them) names the files:

    <cache>/denoiser.fp16.<key>.plan   the serialized engine
    <cache>/denoiser.fp16.<key>.json   the sidecar: every key field + the plan's size and sha256

where <cache> is `default_cache_dir()`. Before a plan is handed to TensorRT, `EngineCache.load`
checks the sidecar against the spec of the current environment and the plan's size and sha256
against the sidecar, so an engine recorded for another GPU, TensorRT version, recipe or ONNX, or a
truncated or corrupted file, is reported in one line and rebuilt, never deserialized. These are
edgegen's checks of what it recorded; TensorRT checks its own compatibility when it deserializes.
Writes go to a temporary file that is renamed into place (readers never see half a plan), and
builds of one key are serialized by a lock file, so concurrent `edgegen build`/`generate`
processes do the work once.

Pure Python: the TensorRT facts (version, GPU) come in as a `TrtEnvironment`, so all of this is
tested without TensorRT or a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edgegen.bundle import sha256_file
from edgegen.errors import BundleError
from edgegen.files import atomic_write_bytes

if TYPE_CHECKING:
    from edgegen.bundle import Bundle, ComponentEntry

log = logging.getLogger(__name__)

CACHE_ENV = "EDGEGEN_CACHE_DIR"  # the engine folder itself
CACHE_ROOT_ENV = "EDGEGEN_CACHE"  # every edgegen cache (calibration captures too); engines in its engines/
# Bump whenever build_plan changes how an engine is built (network flags, builder settings it sets,
# profile rules): engines built by an older recipe are then rebuilt, not reused.
BUILD_RECIPE = 1
SIDECAR_KIND = "edgegen.engine"
SIDECAR_VERSION = 1
MIB = 1 << 20
# Jetson-friendly: an Orin Nano has 8 GiB shared between CPU and GPU; TensorRT's default is "all of it".
DEFAULT_WORKSPACE_BYTES = 1024 * MIB
DEFAULT_OPT_LEVEL = 3  # TensorRT's own default builder_optimization_level

Shape = tuple[int, ...]


def default_cache_dir() -> Path:
    """$EDGEGEN_CACHE_DIR, else $EDGEGEN_CACHE/engines, else $XDG_CACHE_HOME/edgegen/engines,
    else ~/.cache/edgegen/engines. ($EDGEGEN_CACHE is the root the calibration cache uses too.)"""
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    if root := os.environ.get(CACHE_ROOT_ENV):
        return Path(root).expanduser() / "engines"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgegen" / "engines"


# ---------------------------------------------------------------------------------------------
# What makes an engine valid


@dataclass(frozen=True)
class TrtEnvironment:
    """The TensorRT build and GPU an engine is compiled for (engines are not portable across either)."""

    tensorrt: str  # trt.__version__, e.g. "10.3.0"
    gpu: str  # device name, e.g. "Orin" or "NVIDIA GeForce RTX 4070"
    compute_capability: str  # "8.7"
    multiprocessors: int = 0  # SM count (0: unknown)
    total_memory: int = 0  # bytes, as the driver reports (Jetson: the shared memory)


@dataclass(frozen=True)
class BuildSettings:
    """Builder settings that change the engine. Precision is not one: it lives in the ONNX."""

    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES
    optimization_level: int = DEFAULT_OPT_LEVEL

    def __post_init__(self) -> None:
        assert self.workspace_bytes > 0, "workspace must be positive"
        assert 0 <= self.optimization_level <= 5, "TensorRT optimization levels are 0..5"


@dataclass(frozen=True)
class ProfileShape:
    """One input of the optimization profile: TensorRT's (min, opt, max) shapes."""

    name: str
    min: Shape
    opt: Shape
    max: Shape


def profile_from_entry(entry: ComponentEntry, batch: tuple[int, int, int] = (1, 1, 1)) -> tuple[ProfileShape, ...]:
    """The optimization profile for a manifest component: static dims as they are, `batch` = (min, opt, max).

    Everything but the batch dimension is static in the bundle contract (DESIGN.md), so by
    default min = opt = max and TensorRT specializes every kernel for the one shape it will see.
    """
    lo, opt, hi = batch
    assert 1 <= lo <= opt <= hi, f"batch profile must satisfy 1 <= min <= opt <= max, got {batch}"
    return tuple(
        ProfileShape(t.name, t.concrete_shape(lo), t.concrete_shape(opt), t.concrete_shape(hi))
        for t in sorted(entry.inputs, key=lambda t: t.name)
    )


def onnx_digest(bundle: Bundle, entry: ComponentEntry) -> str:
    """The sha256 of the bytes TensorRT will parse: the component's .onnx file plus its external data.

    Hashed from the files on disk (not read from the manifest), so the key follows what the builder
    reads even for a bundle loaded with `verify_files=False`; a file whose bytes differ from the
    manifest's record is a BundleError. External-data files are the manifest files named
    `<file>.<anything>` (torch's exporter writes `denoiser.onnx.data`); with none, this is the
    sha256 of the .onnx file, which equals the manifest's.
    """
    files = bundle.manifest["files"]
    names = [entry.file, *sorted(n for n in files if n.startswith(entry.file + "."))]
    digests = {name: _disk_sha256(bundle.file(name)) for name in names}
    for name, digest in digests.items():
        if digest != bundle.file_sha256(name):
            raise BundleError(
                f"{bundle.file(name)} does not match its sha256 in the manifest: the file was changed; re-export the bundle"
            )
    if len(names) == 1:
        return digests[entry.file]
    lines = [f"{n}:{digests[n]}" for n in names]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _disk_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime, inode) so a process hashes each version once."""
    st = path.stat()
    return _sha256_of_version(str(path), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=256)
def _sha256_of_version(path: str, size: int, mtime_ns: int, inode: int) -> str:
    return sha256_file(path)


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine depends on; equal specs ⇔ interchangeable engines."""

    component: str
    precision: str
    onnx_file: str
    onnx_sha256: str
    profile: tuple[ProfileShape, ...]
    env: TrtEnvironment
    settings: BuildSettings

    @classmethod
    def for_component(
        cls,
        bundle: Bundle,
        component: str,
        precision: str,
        env: TrtEnvironment,
        settings: BuildSettings | None = None,
        batch: tuple[int, int, int] = (1, 1, 1),
    ) -> EngineSpec:
        entry = bundle.component(precision, component)
        return cls(
            component=component,
            precision=precision,
            onnx_file=entry.file,
            onnx_sha256=onnx_digest(bundle, entry),
            profile=profile_from_entry(entry, batch),
            env=env,
            settings=settings or BuildSettings(),
        )

    @property
    def label(self) -> str:
        return f"{self.component} ({self.precision})"

    def fields(self) -> dict[str, Any]:
        """The key fields as plain JSON (what the sidecar records)."""
        return {
            "component": self.component,
            "precision": self.precision,
            "onnx_file": self.onnx_file,
            "onnx_sha256": self.onnx_sha256,
            "profile": {p.name: {"min": list(p.min), "opt": list(p.opt), "max": list(p.max)} for p in self.profile},
            "tensorrt": self.env.tensorrt,
            "gpu": self.env.gpu,
            "compute_capability": self.env.compute_capability,
            "multiprocessors": self.env.multiprocessors,
            "gpu_memory_bytes": self.env.total_memory,
            "settings": asdict(self.settings),
            "recipe": BUILD_RECIPE,
        }

    def key(self) -> str:
        canonical = json.dumps(self.fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def explain_mismatch(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> str | None:
    """One line saying why an engine recorded with `recorded` fields is not valid for `wanted`, or None."""
    r, w = recorded, wanted
    if (r.get("component"), r.get("precision")) != (w["component"], w["precision"]):
        return f"it is the {r.get('component')} ({r.get('precision')}) engine, not {w['component']} ({w['precision']})"
    if r.get("onnx_sha256") != w["onnx_sha256"] or r.get("onnx_file") != w["onnx_file"]:
        return (
            f"it was built from another {r.get('onnx_file')} (sha256 {str(r.get('onnx_sha256'))[:12]}…); "
            f"this bundle's {w['onnx_file']} is {w['onnx_sha256'][:12]}…"
        )
    if r.get("recipe") != w["recipe"]:
        return f"it was built by edgegen's engine recipe {r.get('recipe', 0)}; this edgegen builds with recipe {w['recipe']}"
    if r.get("tensorrt") != w["tensorrt"]:
        return f"it was built with TensorRT {r.get('tensorrt')}; this is TensorRT {w['tensorrt']}"
    if any(r.get(k) != w[k] for k in _GPU_FIELDS):
        return f"it was built for {_fields_device_text(r)}; this GPU is {_fields_device_text(w)}"
    if r.get("profile") != w["profile"]:
        return f"it was built for input shapes {_shapes(r.get('profile'))}; these are {_shapes(w['profile'])}"
    if r.get("settings") != w["settings"]:
        return f"it was built with builder settings {_settings(r.get('settings'))}; asked for {_settings(w['settings'])}"
    extra = sorted(set(r) ^ set(w))
    if extra:
        return f"its sidecar has different fields ({', '.join(extra)})"
    return None


_GPU_FIELDS = ("gpu", "compute_capability", "multiprocessors", "gpu_memory_bytes")


def _device_text(gpu: Any, cc: Any, sms: Any, memory: Any) -> str:
    extra = [f"sm {cc}"]
    if isinstance(sms, int) and sms:
        extra.append(f"{sms} SMs")
    if isinstance(memory, int) and memory:
        extra.append(f"{memory / (1 << 30):.1f} GiB")
    return f"{gpu} ({', '.join(extra)})"


def _fields_device_text(fields: Mapping[str, Any]) -> str:
    return _device_text(*(fields.get(k) for k in _GPU_FIELDS))


def _shapes(profile: Any) -> str:
    if not isinstance(profile, Mapping):
        return repr(profile)
    def one(p: Mapping[str, Any]) -> str:
        lo, opt, hi = ("x".join(map(str, p[k])) for k in ("min", "opt", "max"))
        return opt if lo == opt == hi else f"{lo}..{opt}..{hi}"

    return ", ".join(f"{name}:{one(p)}" for name, p in sorted(profile.items()))


def _settings(settings: Any) -> str:
    if not isinstance(settings, Mapping):
        return repr(settings)
    ws = settings.get("workspace_bytes")
    ws_text = f"{ws // MIB} MiB" if isinstance(ws, int) else repr(ws)
    return f"workspace {ws_text}, optimization level {settings.get('optimization_level')}"


# ---------------------------------------------------------------------------------------------
# The cache on disk


@dataclass(frozen=True)
class Lookup:
    """The result of `EngineCache.load`: a validated plan (`hit`) or why there is none."""

    status: Literal["hit", "miss", "stale"]
    reason: str  # one line; empty for a hit
    path: Path  # where the plan is (hit) or will be written
    plan: bytes | None = None


class EngineCache:
    """Serialized engines on disk, keyed by `EngineSpec.key()`, each with a JSON sidecar."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def plan_path(self, spec: EngineSpec) -> Path:
        return self.root / f"{slug(spec.component)}.{slug(spec.precision)}.{spec.key()}.plan"

    def sidecar_path(self, spec: EngineSpec) -> Path:
        return self.plan_path(spec).with_suffix(".json")

    def load(self, spec: EngineSpec) -> Lookup:
        """The validated plan for `spec`, or a `miss`/`stale` with the reason in one line."""
        plan_path, sidecar_path = self.plan_path(spec), self.sidecar_path(spec)
        have_plan, have_sidecar = plan_path.is_file(), sidecar_path.is_file()
        if not have_plan and not have_sidecar:
            return Lookup("miss", self._explain_miss(spec), plan_path)
        if not have_sidecar:
            return Lookup("stale", f"{plan_path.name} has no sidecar (an interrupted write?)", plan_path)
        if not have_plan:
            return Lookup("stale", f"{plan_path.name} is missing next to its sidecar", plan_path)
        try:
            sidecar = json.loads(sidecar_path.read_text())
            recorded, size, digest = sidecar["fields"], int(sidecar["plan"]["bytes"]), str(sidecar["plan"]["sha256"])
            if sidecar.get("kind") != SIDECAR_KIND or sidecar.get("version") != SIDECAR_VERSION:
                raise ValueError(f"kind/version {sidecar.get('kind')!r}/{sidecar.get('version')!r}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return Lookup("stale", f"its sidecar {sidecar_path.name} is unreadable ({exc})", plan_path)
        if why := explain_mismatch(recorded, spec.fields()):
            return Lookup("stale", why, plan_path)
        plan = plan_path.read_bytes()
        if len(plan) != size:
            return Lookup("stale", f"{plan_path.name} is truncated: {len(plan)} bytes, its sidecar says {size}", plan_path)
        if hashlib.sha256(plan).hexdigest() != digest:
            return Lookup("stale", f"{plan_path.name} is corrupted: its sha256 differs from the sidecar's", plan_path)
        return Lookup("hit", "", plan_path, plan)

    def store(self, spec: EngineSpec, plan: bytes, *, build_seconds: float | None = None) -> Path:
        """Write the plan, then its sidecar, each atomically; returns the plan's path."""
        from edgegen import __version__

        self.root.mkdir(parents=True, exist_ok=True)
        plan_path = self.plan_path(spec)
        sidecar = {
            "kind": SIDECAR_KIND,
            "version": SIDECAR_VERSION,
            "key": spec.key(),
            "fields": spec.fields(),
            "plan": {"file": plan_path.name, "bytes": len(plan), "sha256": hashlib.sha256(plan).hexdigest()},
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": None if build_seconds is None else round(build_seconds, 1),
            "edgegen": __version__,
        }
        # Plan first: a reader that sees the new sidecar always finds the plan it describes.
        atomic_write_bytes(plan_path, plan)
        atomic_write_bytes(self.sidecar_path(spec), (json.dumps(sidecar, indent=2) + "\n").encode())
        return plan_path

    @contextlib.contextmanager
    def lock(self, spec: EngineSpec) -> Iterator[None]:
        """Hold the build lock for `spec`'s key (blocks while another process builds it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.plan_path(spec).with_suffix(".lock"), what=spec.label):
            yield

    def timing_cache_path(self, env: TrtEnvironment) -> Path:
        """TensorRT's timing cache, one per TensorRT version and GPU (it is only valid for those)."""
        gpu = f"{slug(env.gpu)}.sm{slug(env.compute_capability)}.{env.multiprocessors}sms"
        return self.root / f"timing.{slug(env.tensorrt)}.{gpu}.cache"

    def read_timing_cache(self, env: TrtEnvironment) -> bytes:
        path = self.timing_cache_path(env)
        return path.read_bytes() if path.is_file() else b""

    def write_timing_cache(self, env: TrtEnvironment, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.timing_cache_path(env), data)

    def _explain_miss(self, spec: EngineSpec) -> str:
        """Why there is no engine: the closest cached engine for the same component and precision, if any."""
        wanted = spec.fields()
        reasons = []
        for sidecar in sorted(self.root.glob(f"{slug(spec.component)}.{slug(spec.precision)}.*.json")):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                if why := explain_mismatch(json.loads(sidecar.read_text())["fields"], wanted):
                    reasons.append(why)
        if not reasons:
            return f"no cached engine for {spec.label} in {self.root}"
        return f"no cached engine for {spec.label} matches: the cached one is unusable, {reasons[0]}"


# ---------------------------------------------------------------------------------------------
# Files


@contextlib.contextmanager
def _file_lock(path: Path, *, what: str) -> Iterator[None]:
    """An exclusive advisory lock on `path` (flock on POSIX, msvcrt on Windows); logs when it waits."""
    with open(path, "a+b") as f:
        if os.name == "nt":
            import msvcrt

            announced = False
            while True:
                try:
                    msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
                    break
                except OSError:
                    if not announced:
                        log.info("waiting for another process that is building the %s engine", what)
                        announced = True
                    time.sleep(0.5)
            try:
                yield
            finally:
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another process that is building the %s engine", what)
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"
