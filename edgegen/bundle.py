"""The bundle: a folder with `manifest.json` beside the ONNX files, the tokenizer and nothing else.

Torch-free and shared by the exporter (which writes manifests) and the runtime (which reads them).
`load_bundle` checks everything it can before anything runs: the manifest parses, its kind and
schema version are known, its fields have the right shapes, and every file it lists is present
with the recorded size and sha256, and every component file's graph inputs and outputs have the
manifest's names, dtypes and shapes (read from the ONNX protobuf here, without onnx or an
inference library; a file that does not parse is left for the backend to report). Backends check
the names again on the model they really open (`check_io`). Every failure is a one-line
`BundleError` naming the file and what to do.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from edgegen.errors import BundleError
from edgegen.files import atomic_write_text
from edgegen.tokenizer import Tokenizer

KIND = "edgegen.bundle"
SCHEMA_VERSION = 2  # 2: the denoiser is three graphs (context, denoiser, commit); 1 had one graph with kv_cache_out
MANIFEST = "manifest.json"
COMPONENTS = ("text_encoder", "context", "denoiser", "commit", "vae_decoder", "vae_encoder")
REQUIRED_COMPONENTS = ("text_encoder", "context", "denoiser", "commit", "vae_decoder")  # what the streaming loop runs
PRECISIONS = ("fp32", "fp16", "int8", "fp8")
BATCH = "batch"  # the one symbolic dimension; everything else is static
DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool")

_HASH_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------------
# The parsed, immutable view of a manifest


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, numpy dtype name and shape (`"batch"` is symbolic)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def concrete_shape(self, batch: int = 1) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else int(d) for d in self.shape)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ComponentEntry:
    """One component at one precision: its ONNX file and I/O contract."""

    component: str
    precision: str
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    # backend name -> a file only that backend should load (same I/O contract), e.g. an ORT-CPU
    # int8 graph with uint8 / contrib ops that is faster there but would not parse in TensorRT.
    variants: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def file_for(self, backend: str) -> str:
        """The file `backend` should load: its variant if the bundle has one, else the portable file."""
        return self.variants.get(backend, self.file)

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name, f"{self.component} input")

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name, f"{self.component} output")

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


def _by_name(specs: Sequence[TensorSpec], name: str, what: str) -> TensorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise KeyError(f"no {what} named {name!r}; have {[s.name for s in specs]}")


@dataclass(frozen=True)
class Bundle:
    """A validated bundle on disk. Immutable; `manifest` is the raw JSON (read-only view)."""

    path: Path
    manifest: Mapping[str, Any]
    components: Mapping[str, Mapping[str, ComponentEntry]]  # precision -> component -> entry
    digest: str  # sha256 of manifest.json: identifies the bundle (engine caches key on it)

    # -- model geometry -----------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return str(self.manifest["model"]["name"])

    @property
    def model_config(self) -> Mapping[str, Any]:
        return self.manifest["model"]["config"]

    @property
    def video(self) -> Mapping[str, int]:
        return self.manifest["video"]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        lat = self.manifest["latent"]
        return int(lat["channels"]), int(lat["height"]), int(lat["width"])

    @property
    def chunk_frames(self) -> int:
        return int(self.manifest["video"]["chunk_frames"])

    @property
    def fps(self) -> int:
        return int(self.manifest["video"]["fps"])

    # -- sampler ------------------------------------------------------------------------------
    @property
    def steps_available(self) -> tuple[int, ...]:
        return tuple(sorted(int(k) for k in self.manifest["sampler"]["schedules"]))

    @property
    def default_steps(self) -> int:
        return int(self.manifest["sampler"]["default_steps"])

    @property
    def t_ctx(self) -> float:
        return float(self.manifest["sampler"]["t_ctx"])

    @property
    def t_ctx_from(self) -> int:
        """Chunks before this one are committed clean; bundles written before the field commit every chunk at t_ctx."""
        return int(self.manifest["sampler"].get("t_ctx_from", 0))

    def schedule(self, steps: int) -> tuple[float, ...]:
        """The stored times (1 → 0) for `steps` Euler steps."""
        schedules = self.manifest["sampler"]["schedules"]
        if str(steps) not in schedules:
            valid = ", ".join(str(s) for s in self.steps_available)
            raise BundleError(f"this bundle has no {steps}-step schedule; valid --steps: {valid}")
        return tuple(float(t) for t in schedules[str(steps)])

    # -- files and components -----------------------------------------------------------------
    @property
    def precisions(self) -> tuple[str, ...]:
        """Precisions this bundle carries, in the canonical order (fp32, fp16, int8, fp8)."""
        have = self.components.keys()
        return tuple(p for p in PRECISIONS if p in have) + tuple(sorted(set(have) - set(PRECISIONS)))

    def precision_info(self, precision: str) -> Mapping[str, Any]:
        """The manifest's record for one precision (components plus e.g. calibration, quality)."""
        self._check_precision(precision)
        return self.manifest["precisions"][precision]

    def component(self, precision: str, component: str) -> ComponentEntry:
        self._check_precision(precision)
        entries = self.components[precision]
        if component not in entries:
            raise BundleError(
                f"{self.path / MANIFEST}: precision {precision!r} has no component {component!r}; "
                f"it has {', '.join(entries)}"
            )
        return entries[component]

    def file(self, name: str) -> Path:
        return self.path / name

    def file_sha256(self, name: str) -> str:
        return str(self.manifest["files"][name]["sha256"])

    def tokenizer(self) -> Tokenizer:
        """The bundle's tokenizer; a BundleError naming the file when it is not a tokenizer."""
        path = self.file(self.manifest["tokenizer"]["file"])
        try:
            return Tokenizer.load(path)
        except (OSError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BundleError(f"{path} is not a valid tokenizer file ({reason}); re-export the bundle") from None

    def _check_precision(self, precision: str) -> None:
        if precision not in self.components:
            raise BundleError(
                f"bundle {self.path} has no {precision!r} precision; valid --precision: {', '.join(self.precisions)}"
            )


# ---------------------------------------------------------------------------------------------
# Reading


def load_bundle(path: str | os.PathLike[str], *, verify_files: bool = True) -> Bundle:
    """Read and validate a bundle folder (or its manifest.json); raises a one-line BundleError."""
    try:
        return _load_bundle(Path(path), verify_files)
    except OSError as exc:  # a folder or file this user may not read, an I/O error
        where = exc.filename or path
        raise BundleError(f"cannot read {where}: {exc.strerror or exc}; check the bundle's permissions") from None


def _load_bundle(root: Path, verify_files: bool) -> Bundle:
    if root.name == MANIFEST and root.is_file():
        root = root.parent
    if not root.exists():
        raise BundleError(f"bundle {root} does not exist; pass a folder written by `edgegen export`")
    if not root.is_dir():
        raise BundleError(f"bundle {root} is a file, not a folder; pass the bundle folder written by `edgegen export` (the one holding manifest.json)")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path} is missing: {root} is not an edgegen bundle; export one with `edgegen export --out DIR`")
    raw = manifest_path.read_bytes()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path} is not valid JSON ({exc}); re-export the bundle") from None
    problems = validate_manifest(data)
    if problems:
        raise BundleError(_problems_line(manifest_path, problems))
    if verify_files:
        verify_bundle_files(root, data["files"])
    bundle = bundle_from_manifest(root, data, digest=hashlib.sha256(raw).hexdigest())
    if verify_files:
        verify_onnx_io(bundle)
    return bundle


def bundle_from_manifest(root: str | os.PathLike[str], data: Mapping[str, Any], *, digest: str = "") -> Bundle:
    """A `Bundle` for a manifest held in memory (validated; files not checked).

    The exporter uses this to run its parity checks before the manifest is written.
    """
    root = Path(root)
    data = thaw(data)
    problems = validate_manifest(data)
    if problems:
        raise BundleError(_problems_line(root / MANIFEST, problems))
    components = {
        precision: MappingProxyType({
            name: _entry(name, precision, spec) for name, spec in record["components"].items()
        })
        for precision, record in data["precisions"].items()
    }
    if not digest:
        digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return Bundle(path=root.resolve(), manifest=_freeze(data), components=MappingProxyType(components), digest=digest)


def _problems_line(path: Path, problems: list[str]) -> str:
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return f"{path}: {problems[0]}{more}"


def verify_bundle_files(root: Path, files: Mapping[str, Mapping[str, Any]]) -> None:
    """Every listed file present with the recorded size and sha256, else a BundleError naming it."""
    for name, record in files.items():
        file = root / name
        if not file.is_file():
            raise BundleError(f"{file} is missing from the bundle; re-export it or copy the whole folder")
        size = file.stat().st_size
        if size != int(record["bytes"]):
            raise BundleError(f"{file} has {size} bytes, the manifest says {record['bytes']}: the file was changed or truncated; re-export the bundle")
        if sha256_file(file) != record["sha256"]:
            raise BundleError(f"{file} does not match its sha256 in the manifest: the file was changed; re-export the bundle")


def check_io(entry: ComponentEntry, path: Path, inputs: Iterable[str], outputs: Iterable[str]) -> None:
    """Backends call this with the names an opened model really has; a mismatch is a BundleError."""
    for what, actual, expected in (("inputs", list(inputs), entry.input_names), ("outputs", list(outputs), entry.output_names)):
        if sorted(actual) != sorted(expected):
            raise BundleError(
                f"{path}: the ONNX file's {what} {actual} do not match the manifest's {list(expected)} "
                f"for {entry.component} ({entry.precision}); re-export the bundle"
            )


# ---------------------------------------------------------------------------------------------
# The ONNX files' graph inputs and outputs, read from the protobuf (no onnx, no inference library)

# ONNX TensorProto.DataType -> the numpy dtype names the manifest uses
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 16: "bfloat16"}
_Dim = int | str | None  # a fixed size, a symbolic name, or unknown


class _NotOnnx(ValueError):
    """The bytes are not a protobuf message of the expected shape."""


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _NotOnnx("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int | tuple[int, int] | None]]:
    """(field number, value) of one protobuf message: an int (varint) or (start, end) of a length-delimited field."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        value: int | tuple[int, int] | None = None
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 2:
            size, pos = _varint(buf, pos, end)
            value, pos = (pos, pos + size), pos + size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise _NotOnnx(f"wire type {wire}")
        if number == 0 or pos > end:
            raise _NotOnnx("bad field")
        yield number, value


def _sub(buf: bytes, span: Any) -> tuple[int, int]:
    if not isinstance(span, tuple):
        raise _NotOnnx("expected a message")
    return span


def _text(buf: bytes, span: Any) -> str:
    start, end = _sub(buf, span)
    try:
        return buf[start:end].decode()
    except UnicodeDecodeError:
        raise _NotOnnx("name is not UTF-8") from None


def _value_info(buf: bytes, span: Any) -> tuple[str, str | None, tuple[_Dim, ...] | None]:
    """ValueInfoProto -> (name, dtype name or None, shape or None)."""
    name, dtype, shape = "", None, None
    for number, value in _fields(buf, *_sub(buf, span)):
        if number == 1:
            name = _text(buf, value)
        elif number == 2:  # TypeProto
            for n_type, tensor in _fields(buf, *_sub(buf, value)):
                if n_type == 1:  # tensor_type
                    dtype, shape = _tensor_type(buf, tensor)
    return name, dtype, shape


def _tensor_type(buf: bytes, span: Any) -> tuple[str | None, tuple[_Dim, ...] | None]:
    dtype, shape = None, None
    for number, value in _fields(buf, *_sub(buf, span)):
        if number == 1 and isinstance(value, int):
            dtype = _ONNX_DTYPES.get(value, f"onnx type {value}")
        elif number == 2:  # TensorShapeProto
            shape = tuple(_dim(buf, dim) for n_dim, dim in _fields(buf, *_sub(buf, value)) if n_dim == 1)
    return dtype, shape


def _dim(buf: bytes, span: Any) -> _Dim:
    for number, value in _fields(buf, *_sub(buf, span)):
        if number == 1 and isinstance(value, int):
            return value if value < 2**62 else None
        if number == 2:
            return _text(buf, value)
    return None


def _initializer_name(buf: bytes, span: Any) -> str:
    return next((_text(buf, v) for n, v in _fields(buf, *_sub(buf, span)) if n == 8), "")


def onnx_io(path: Path) -> tuple[list[tuple[str, str | None, tuple[_Dim, ...] | None]], list[tuple[str, str | None, tuple[_Dim, ...] | None]]] | None:
    """The graph's (inputs, outputs) as (name, dtype, shape), initializers left out; None if `path` is not ONNX."""
    buf = path.read_bytes()
    try:
        graph = next((v for n, v in _fields(buf, 0, len(buf)) if n == 7), None)  # ModelProto.graph
        if graph is None:
            return None
        inputs, outputs, weights = [], [], set()
        for number, value in _fields(buf, *_sub(buf, graph)):
            if number == 11:
                inputs.append(_value_info(buf, value))
            elif number == 12:
                outputs.append(_value_info(buf, value))
            elif number == 5:  # initializer: old exporters list weights among the inputs too
                weights.add(_initializer_name(buf, value))
    except _NotOnnx:
        return None
    inputs = [t for t in inputs if t[0] not in weights]
    return (inputs, outputs) if inputs and outputs else None


def verify_onnx_io(bundle: Bundle) -> None:
    """Every component file's graph I/O has the manifest's names, dtypes and shapes, else a BundleError naming it."""
    checked: set[tuple[str, str]] = set()
    for entries in bundle.components.values():
        for entry in entries.values():
            for file in dict.fromkeys((entry.file, *entry.variants.values())):
                key = (file, json.dumps([[t.to_json() for t in entry.inputs], [t.to_json() for t in entry.outputs]]))
                if key not in checked:
                    checked.add(key)
                    _check_file_io(entry, bundle.file(file))


def _check_file_io(entry: ComponentEntry, path: Path) -> None:
    found = onnx_io(path)
    if found is None:  # not parseable here: the backend's loader names the problem when it opens it
        return
    inputs, outputs = found
    check_io(entry, path, [t[0] for t in inputs], [t[0] for t in outputs])
    for side, actual, specs in (("input", inputs, entry.inputs), ("output", outputs, entry.outputs)):
        by_name = {name: (dtype, shape) for name, dtype, shape in actual}
        for spec in specs:
            dtype, shape = by_name[spec.name]
            if (dtype is not None and dtype != spec.dtype) or not _same_shape(shape, spec.shape):
                raise BundleError(
                    f"{path}: {side} {spec.name!r} is {dtype} {_shape_text(shape)} in the ONNX file but "
                    f"{spec.dtype} {_shape_text(spec.shape)} in the manifest for {entry.component} ({entry.precision}); "
                    "the manifest was edited: re-export the bundle"
                )


def _same_shape(onnx: tuple[_Dim, ...] | None, manifest: tuple[int | str, ...]) -> bool:
    """Same rank and the same size wherever both are fixed (a symbolic or unknown dimension matches any)."""
    if onnx is None:
        return True
    if len(onnx) != len(manifest):
        return False
    return all(not (isinstance(a, int) and isinstance(b, int)) or a == b for a, b in zip(onnx, manifest, strict=True))


def _shape_text(shape: Sequence[Any] | None) -> str:
    return "[?]" if shape is None else "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _entry(component: str, precision: str, spec: Mapping[str, Any]) -> ComponentEntry:
    return ComponentEntry(
        component=component,
        precision=precision,
        file=spec["file"],
        inputs=tuple(_tensor(t) for t in spec["inputs"]),
        outputs=tuple(_tensor(t) for t in spec["outputs"]),
        opset=int(spec["opset"]),
        variants=MappingProxyType({backend: v["file"] for backend, v in spec.get("variants", {}).items()}),
    )


def _tensor(t: Mapping[str, Any]) -> TensorSpec:
    return TensorSpec(name=t["name"], dtype=t["dtype"], shape=tuple(t["shape"]))


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """A plain-JSON copy of a frozen manifest (or part of one), e.g. to edit and rewrite it."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [thaw(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Validation (shared by reading and writing)


def validate_manifest(data: Any) -> list[str]:
    """Problems with a manifest's structure, each one short; an empty list means valid."""
    if not isinstance(data, dict):
        return ["the manifest is not a JSON object"]
    if data.get("kind") != KIND:
        return [f"kind is {data.get('kind')!r}, expected {KIND!r}: not an edgegen bundle"]
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        return [f"schema_version {version!r} is not supported (this edgegen reads schema_version {SCHEMA_VERSION}); use a matching edgegen or re-export the bundle"]
    problems: list[str] = []
    need = {
        "model": ("name", "config"),
        "video": ("height", "width", "chunk_frames", "fps"),
        "latent": ("channels", "height", "width"),
        "cache": ("slots", "tokens_per_slot"),
        "sampler": ("type", "default_steps", "schedules", "t_ctx"),
        "tokenizer": ("file", "max_len"),
        "provenance": (),
        "precisions": (),
        "files": (),
    }
    for section, keys in need.items():
        if not isinstance(data.get(section), dict):
            problems.append(f"section {section!r} is missing")
            continue
        problems += [f"{section}.{k} is missing" for k in keys if k not in data[section]]
    if problems:
        return problems
    problems += _validate_numbers(data)
    if not isinstance(data["model"]["config"], dict):
        problems.append("model.config must be an object")
    files = data["files"]
    for name, record in files.items():
        if not (isinstance(record, dict) and isinstance(record.get("sha256"), str) and isinstance(record.get("bytes"), int)):
            problems.append(f"files[{name!r}] needs sha256 and bytes")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            problems.append(f"files[{name!r}] must be a plain path inside the bundle")
    problems += _validate_sampler(data["sampler"])
    if not _listed(data["tokenizer"]["file"], files):
        problems.append(f"tokenizer file {data['tokenizer']['file']!r} is not listed in files")
    if not data["precisions"]:
        problems.append("no precisions")
    for precision, record in data["precisions"].items():
        comps = record.get("components") if isinstance(record, dict) else None
        if not isinstance(comps, dict):
            problems.append(f"precisions.{precision}.components is missing")
            continue
        problems += [f"precisions.{precision} lacks component {c!r}" for c in REQUIRED_COMPONENTS if c not in comps]
        for name, spec in comps.items():
            problems += _validate_component(f"precisions.{precision}.components.{name}", spec, files)
    return problems


# Geometry the runtime computes buffer shapes from: whole numbers > 0.
_COUNTS = {
    "video": ("height", "width", "chunk_frames", "fps"),
    "latent": ("channels", "height", "width"),
    "cache": ("slots", "tokens_per_slot"),
    "tokenizer": ("max_len",),
    "sampler": ("default_steps",),
}
_STEP_KEY = re.compile(r"[1-9][0-9]*")  # "2", not "02" or "²": steps_available round-trips to it


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _listed(name: Any, files: Mapping[str, Any]) -> bool:
    """`name` is a file name listed in `files` (a non-string, e.g. a list, is not; nor a crash)."""
    return isinstance(name, str) and name in files


def _validate_numbers(data: Mapping[str, Any]) -> list[str]:
    problems = [
        f"{section}.{key} is {data[section][key]!r}, expected a whole number > 0"
        for section, keys in _COUNTS.items()
        for key in keys
        if not _is_count(data[section][key])
    ]
    t_ctx = data["sampler"]["t_ctx"]
    if not (_is_number(t_ctx) and 0.0 <= t_ctx <= 1.0):
        problems.append(f"sampler.t_ctx is {t_ctx!r}, expected a number from 0 to 1")
    t_ctx_from = data["sampler"].get("t_ctx_from", 0)
    if not (isinstance(t_ctx_from, int) and not isinstance(t_ctx_from, bool) and t_ctx_from >= 0):
        problems.append(f"sampler.t_ctx_from is {t_ctx_from!r}, expected a whole number >= 0")
    return problems


def _validate_sampler(sampler: Mapping[str, Any]) -> list[str]:
    problems = []
    schedules = sampler["schedules"]
    if not isinstance(schedules, dict) or not schedules:
        return ["sampler.schedules must map step counts to time lists"]
    for steps, times in schedules.items():
        ok = _STEP_KEY.fullmatch(steps) is not None and isinstance(times, list) and len(times) == int(steps) + 1
        ok = ok and all(_is_number(t) for t in times) and times[0] == 1.0 and times[-1] == 0.0
        ok = ok and all(a > b for a, b in itertools.pairwise(times))
        if not ok:
            problems.append(f"sampler.schedules[{steps!r}] must be {steps}+1 decreasing times from 1 to 0")
    if str(sampler["default_steps"]) not in schedules:
        problems.append(f"sampler.default_steps {sampler['default_steps']} has no schedule")
    return problems


def _validate_component(where: str, spec: Any, files: Mapping[str, Any]) -> list[str]:
    if not isinstance(spec, dict):
        return [f"{where} is not an object"]
    problems = [f"{where}.{k} is missing" for k in ("file", "inputs", "outputs", "opset") if k not in spec]
    if problems:
        return problems
    if not _listed(spec["file"], files):
        problems.append(f"{where}.file {spec['file']!r} is not listed in files")
    variants = spec.get("variants", {})
    if not isinstance(variants, dict) or not all(isinstance(v, dict) and _listed(v.get("file"), files) for v in variants.values()):
        problems.append(f"{where}.variants must map backend names to {{\"file\": ...}} entries listed in files")
    if not _is_count(spec["opset"]):
        problems.append(f"{where}.opset is {spec['opset']!r}, expected a whole number > 0")
    for side in ("inputs", "outputs"):
        tensors = spec[side]
        if not isinstance(tensors, list) or not tensors:
            problems.append(f"{where}.{side} must be a non-empty list")
            continue
        for t in tensors:
            if not (isinstance(t, dict) and isinstance(t.get("name"), str) and t.get("dtype") in DTYPES and isinstance(t.get("shape"), list)):
                problems.append(f"{where}.{side} entry {t!r} needs name, dtype (one of {', '.join(DTYPES)}) and shape")
            elif not all((isinstance(d, int) and d > 0) or d == BATCH for d in t["shape"]):
                problems.append(f"{where}.{side}.{t['name']} shape {t['shape']} must hold positive ints or {BATCH!r}")
    return problems


# ---------------------------------------------------------------------------------------------
# Writing


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest's `files` entry for one file."""
    return {"sha256": sha256_file(path), "bytes": Path(path).stat().st_size}


def component_json(
    file: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], opset: int
) -> dict[str, Any]:
    return {
        "file": file,
        "inputs": [t.to_json() for t in inputs],
        "outputs": [t.to_json() for t in outputs],
        "opset": int(opset),
    }


def precision_files(record: Mapping[str, Any]) -> set[str]:
    """The ONNX files one manifest precision record names: each component's file and its variants'."""
    return {f for comp in record["components"].values() for f in (comp["file"], *(v["file"] for v in comp.get("variants", {}).values()))}


def write_manifest(root: str | os.PathLike[str], manifest: Mapping[str, Any], *, refresh_files: bool = True) -> Path:
    """Validate and atomically write `root/manifest.json`.

    With `refresh_files`, the `files` section is recomputed (sha256 + bytes) for every file the
    manifest references (component files and the tokenizer) plus any file already listed.
    """
    root = Path(root)
    data = thaw(manifest)
    data.setdefault("kind", KIND)
    data.setdefault("schema_version", SCHEMA_VERSION)
    if refresh_files:
        names = set(data.get("files", {}))
        names.add(data["tokenizer"]["file"])
        for record in data["precisions"].values():
            names |= precision_files(record)
        missing = sorted(n for n in names if not (root / n).is_file())
        if missing:
            raise BundleError(f"cannot write the manifest: {root / missing[0]} does not exist")
        data["files"] = {n: file_record(root / n) for n in sorted(names)}
    problems = validate_manifest(data)
    assert not problems, f"refusing to write an invalid manifest: {problems}"
    target = root / MANIFEST
    atomic_write_text(target, json.dumps(data, indent=2, sort_keys=False) + "\n")
    return target


# ---------------------------------------------------------------------------------------------
# The shipped default


def default_bundle_path() -> Path:
    """The bundle shipped inside the package (`edgegen/assets/default/`)."""
    path = Path(__file__).resolve().parent / "assets" / "default"
    if not (path / MANIFEST).is_file():
        raise BundleError(
            f"no default bundle is installed at {path}; pass a bundle folder written by `edgegen export --out DIR`"
        )
    return path
