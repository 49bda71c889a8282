"""Fuzzing the two parsers users feed directly: prompts and bundle manifests.

The contract under test: whatever the input, `parse_prompt` and the tokenizer either succeed or
raise `PromptError`, and `load_bundle` either returns a bundle whose every accessor works or
raises `BundleError` — each with a one-line message. Anything else (KeyError, TypeError,
IndexError, ...) would reach the user as "internal error" and is a bug in the parser or loader.

Runs are bounded and reproducible in CI: `derandomize=True` (examples depend on the test, not
on the clock), a fixed example count, no deadline (the CI machine is shared) and no database.
For a deeper local run: `EDGEGEN_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py`.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgegen.bundle import (
    MANIFEST,
    REQUIRED_COMPONENTS,
    Bundle,
    TensorSpec,
    component_json,
    load_bundle,
    write_manifest,
)
from edgegen.errors import BundleError, PromptError
from edgegen.tokenizer import Tokenizer
from edgegen.world import VOCABULARY, parse_prompt

FUZZ = settings(
    max_examples=int(os.environ.get("EDGEGEN_FUZZ_EXAMPLES", "200")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MAX_LEN = 24
TOKENIZER = Tokenizer.from_vocabulary(VOCABULARY, MAX_LEN)


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message and "\r" not in message, repr(message)
    return message


# ---------------------------------------------------------------------------------------------
# Prompts

# Pieces a prompt is made of: known words (so many draws parse), near misses, separators,
# whitespace and control characters, non-ASCII, digits, and arbitrary short text.
_PIECES = st.one_of(
    st.sampled_from(VOCABULARY),
    st.sampled_from(["zebra", "hexagon", "Red", "BALL", "Moving", "and", "and and", "redball"]),
    st.sampled_from([",", ".", ";", ":", "!", "?", "-", "'", '"', "(", "/", "_", "2", "3.5"]),
    st.sampled_from([" ", "  ", "\t", "\n", "\r", "\x00", "\x1b[31m", "\x7f", "\u200b", "\u00a0"]),
    st.sampled_from(["é", "bäll", "ｒｅｄ", "🎈", "\ufeff", "ı", "ﬁ"]),
    st.text(max_size=6),
)
PROMPTS = st.one_of(
    st.lists(_PIECES, max_size=40).map(" ".join),
    st.lists(_PIECES, max_size=12).map("".join),
    st.text(max_size=400),
)


@FUZZ
@given(PROMPTS)
def test_parse_prompt_raises_only_prompt_error(prompt: str) -> None:
    try:
        scene = parse_prompt(prompt)
    except PromptError as exc:
        _one_line(exc)
        return
    assert 1 <= len(scene.objects) <= 2 and all(o.shape for o in scene.objects)


@FUZZ
@given(PROMPTS)
def test_tokenizer_raises_only_prompt_error_and_agrees_with_the_parser(prompt: str) -> None:
    try:
        scene = parse_prompt(prompt)
    except PromptError:
        scene = None
    try:
        ids = TOKENIZER.encode(prompt)
    except PromptError as exc:
        message = _one_line(exc)
        # A prompt the world accepts is refused by the tokenizer only for its length.
        assert scene is None or "at most" in message, (prompt, message)
        return
    assert ids.dtype == np.int64 and ids.shape == (MAX_LEN,)
    assert ((ids >= 0) & (ids < TOKENIZER.vocab_size)).all()


@pytest.mark.parametrize("prompt", [None, b"a red ball", 5, ["a", "red", "ball"]])
def test_parse_prompt_refuses_what_is_not_text(prompt: Any) -> None:
    with pytest.raises(PromptError, match="must be text"):
        parse_prompt(prompt)


# ---------------------------------------------------------------------------------------------
# Manifests: a schema-valid bundle whose ONNX files are placeholder bytes (loading checks
# structure and checksums; only opening a session reads the ONNX), mutated and reloaded.


def _spec(name: str, shape: list[int | str], dtype: str = "float32") -> TensorSpec:
    return TensorSpec(name, dtype, tuple(shape))


def _components() -> dict[str, dict[str, Any]]:
    b = "batch"
    return {
        "text_encoder": component_json(
            "text_encoder.onnx",
            [_spec("tokens", [b, MAX_LEN], "int64")],
            [_spec("text", [b, MAX_LEN, 32]), _spec("text_pooled", [b, 32])],
            20,
        ),
        "context": component_json(
            "context.onnx",
            [_spec("kv_cache", [b, 2, 2, 2, 16, 32]), _spec("cache_valid", [b, 2]), _spec("text", [b, MAX_LEN, 32])],
            [_spec("context", [b, 2, 2, 2, 32 + MAX_LEN, 16]), _spec("context_bias", [b, 48 + MAX_LEN])],
            20,
        ),
        "denoiser": component_json(
            "denoiser.onnx",
            [
                _spec("latent", [b, 4, 8, 8]), _spec("t", [b]), _spec("text_pooled", [b, 32]),
                _spec("context", [b, 2, 2, 2, 32 + MAX_LEN, 16]), _spec("context_bias", [b, 48 + MAX_LEN]),
            ],
            [_spec("velocity", [b, 4, 8, 8])],
            20,
        ),
        "commit": component_json(
            "commit.onnx",
            [
                _spec("latent", [b, 4, 8, 8]), _spec("t", [b]), _spec("text_pooled", [b, 32]),
                _spec("context", [b, 2, 2, 2, 32 + MAX_LEN, 16]), _spec("context_bias", [b, 48 + MAX_LEN]),
            ],
            [_spec("kv", [b, 2, 2, 16, 32])],
            20,
        ),
        "vae_decoder": component_json(
            "vae_decoder.onnx",
            [_spec("latent", [b, 4, 8, 8]), _spec("state", [b, 8, 8, 8])],
            [_spec("frames", [b, 4, 32, 32, 3]), _spec("state_out", [b, 8, 8, 8])],
            20,
        ),
    }


def _manifest() -> dict[str, Any]:
    return {
        "schema_version": 2,
        "kind": "edgegen.bundle",
        "model": {"name": "fuzz", "config": {"height": 32, "width": 32}},
        "video": {"height": 32, "width": 32, "chunk_frames": 4, "fps": 24},
        "latent": {"channels": 4, "height": 8, "width": 8},
        "cache": {"slots": 2, "tokens_per_slot": 16},
        "sampler": {
            "type": "rectified-flow-euler", "default_steps": 2, "t_ctx": 0.0,
            "schedules": {"1": [1.0, 0.0], "2": [1.0, 0.5, 0.0]},
        },
        "tokenizer": {"file": "tokenizer.json", "max_len": MAX_LEN},
        "precisions": {"fp32": {"components": _components()}},
        "provenance": {"edgegen": "0.1.0", "opset": 20},
    }


@pytest.fixture(scope="module")
def valid_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """(folder, manifest JSON) of a small valid bundle; tests write mutated manifests beside it."""
    root = tmp_path_factory.mktemp("fuzz") / "bundle"
    root.mkdir()
    TOKENIZER.save(root / "tokenizer.json")
    for name in ("text_encoder.onnx", "context.onnx", "denoiser.onnx", "commit.onnx", "vae_decoder.onnx"):
        (root / name).write_bytes(f"placeholder for {name}".encode())
    write_manifest(root, _manifest())
    data = json.loads((root / MANIFEST).read_text())
    exercise(load_bundle(root))  # the unmutated bundle is valid and usable
    return root, data


def exercise(bundle: Bundle) -> None:
    """Everything the runtime and the CLI read from a loaded bundle; must not raise for a valid one."""
    _ = (bundle.model_name, bundle.model_config, bundle.video, bundle.latent_shape)
    _ = (bundle.chunk_frames, bundle.fps, bundle.t_ctx, bundle.precisions)
    assert bundle.default_steps in bundle.steps_available
    for steps in bundle.steps_available:
        times = bundle.schedule(steps)
        assert len(times) == steps + 1 and times[0] == 1.0 and times[-1] == 0.0
    for precision in bundle.precisions:
        bundle.precision_info(precision)
        for component in REQUIRED_COMPONENTS:
            entry = bundle.component(precision, component)
            assert bundle.file(entry.file_for("ort-cpu")).is_file()
            for tensor in (*entry.inputs, *entry.outputs):
                assert all(d > 0 for d in tensor.concrete_shape())
    bundle.tokenizer().encode("a red ball")


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every location in a JSON tree, as key/index tuples (the root is `()`)."""
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*prefix, i))
    return found


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (k, *_strings(v))]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


_SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-3, max_value=70), st.sampled_from([0, -1, 2**31, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.5, 1.0, 24.0, -0.0]),
    st.text(max_size=8), st.sampled_from(["batch", "", "1", "²", "../x", "fp32", "float32", "tokenizer.json"]),
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)


def _mutate(data: Any, draw: st.DataObject) -> Any:
    """One mutation at a random location: delete, replace (any JSON, or a string the manifest
    already holds), add an extra field, or grow / shrink / reverse a list."""
    path = draw.draw(st.sampled_from(_paths(data)))
    if not path:  # the root: replace the whole manifest
        return draw.draw(_JSON)
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    key, node = path[-1], parent[path[-1]]
    op = draw.draw(st.sampled_from(["delete", "replace", "reuse", "extra", "grow", "shrink", "reverse"]))
    if op == "delete":
        del parent[key]
    elif op == "replace":
        parent[key] = draw.draw(_JSON)
    elif op == "reuse":
        parent[key] = draw.draw(st.sampled_from(_strings(data) or ["x"]))
    elif op == "extra" and isinstance(node, dict):
        node[draw.draw(st.text(max_size=8))] = draw.draw(_JSON)
    elif op == "grow" and isinstance(node, list):
        node.append(copy.deepcopy(node[-1]) if node else draw.draw(_JSON))
    elif op == "shrink" and isinstance(node, list) and node:
        node.pop(draw.draw(st.integers(0, len(node) - 1)))
    elif op == "reverse" and isinstance(node, list):
        node.reverse()
    else:
        parent[key] = draw.draw(_JSON)
    return data


@FUZZ
@given(st.data())
def test_load_bundle_raises_only_bundle_error(valid_bundle: tuple[Path, dict[str, Any]], data: st.DataObject) -> None:
    root, manifest = valid_bundle
    mutated = copy.deepcopy(manifest)
    for _ in range(data.draw(st.integers(1, 3))):
        mutated = _mutate(mutated, data)
    (root / MANIFEST).write_text(json.dumps(mutated))
    try:
        bundle = load_bundle(root)
    except BundleError as exc:
        _one_line(exc)
        return
    try:
        exercise(bundle)
    except BundleError as exc:  # e.g. a precision without a component, found when asked for
        _one_line(exc)


@pytest.mark.parametrize("text", ["", "{", "[]", "null", "1", '"manifest"', "\xff\xfe", "{\"kind\": 1e999}"])
def test_manifest_that_is_not_a_json_object(valid_bundle: tuple[Path, dict[str, Any]], text: str) -> None:
    root, _ = valid_bundle
    (root / MANIFEST).write_bytes(text.encode("latin-1"))
    with pytest.raises(BundleError) as exc:
        load_bundle(root)
    assert MANIFEST in _one_line(exc.value)


@pytest.mark.parametrize(
    "content",
    [b"\xf0\x28 not utf-8", b"{", b"[]", b'{"words": "abc", "max_len": 24}', b'{"words": ["<pad>", 3], "max_len": 24}',
     b'{"words": ["<pad>", "red"], "max_len": -1}', b'{"words": ["<pad>"], "max_len": true}', b'{"max_len": 24}'],
)
def test_a_checksummed_tokenizer_that_is_not_one_is_a_bundle_error(
    valid_bundle: tuple[Path, dict[str, Any]], tmp_path: Path, content: bytes
) -> None:
    root = Path(shutil.copytree(valid_bundle[0], tmp_path / "bundle"))
    (root / "tokenizer.json").write_bytes(content)
    write_manifest(root, valid_bundle[1])  # the checksums match: the loader must read the content
    with pytest.raises(BundleError) as exc:
        load_bundle(root).tokenizer()
    assert "tokenizer.json" in _one_line(exc.value)
