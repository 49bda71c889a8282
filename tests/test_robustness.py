"""Robustness end to end: bad input, broken bundles, unwritable output, signals and long runs.

Every case runs the real `edgegen` command on the session's tiny bundle — in-process through
`edgegen.cli.main`, or as a subprocess where a signal, a resource limit, file permissions or a
pipe is the point — and checks the contract of docs/ERRORS.md: one line on stderr that names the
problem and what to do, a non-zero exit code, no traceback, nothing half-written or lost.

Each case is also recorded: with EDGEGEN_ERROR_LOG set (`python tools/error_table.py` sets it)
into that file, which the tool renders as docs/ERRORS.md; otherwise the case's rendered row must
already be in docs/ERRORS.md, so the table cannot drift from what edgegen really prints.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgegen.bundle import MANIFEST, write_manifest
from edgegen.cli import main
from edgegen.errors import PromptError

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red ball moving right"
MAX_SEED = 2**63 - 1


def _load_tool():
    spec = importlib.util.spec_from_file_location("error_table", ROOT / "tools" / "error_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


error_table = _load_tool()


# ---------------------------------------------------------------------------------------------
# Running the command and recording what it said


@dataclass
class Outcome:
    """One run of the command: argv (after `edgegen`), exit code, everything on stderr."""

    argv: list[str]
    code: int
    stderr: str

    @property
    def last_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""


class Recorder:
    """Checks the error contract for one case and records its row (or checks it is in the table)."""

    def __init__(self, nodeid: str, basetemp: Path) -> None:
        self.nodeid = nodeid
        base = re.escape(str(basetemp))
        # the tiny bundle, then any other pytest folder (tmp_path, module folders) → placeholders
        self._subs = [(re.compile(base + r"/bundles\d*/tiny"), "BUNDLE"), (re.compile(base + r"/[^/\s'\"]+"), "TMP")]

    def error(
        self, section: str, case: str, outcome: Outcome, *needles: str, code: int = 2, volatile: dict[str, str] | None = None
    ) -> str:
        """A user error: `code`, the last stderr line is the only `edgegen:` line, no traceback.

        `volatile` maps regexes to placeholders for parts of the message that depend on the
        build rather than the case (a file's size, a library's wording), so the table stays put.
        """
        lines = outcome.stderr.strip().splitlines()
        assert outcome.code == code, outcome.stderr
        assert lines and lines[-1].startswith("edgegen: error: "), outcome.stderr
        assert sum(line.startswith("edgegen:") for line in lines) == 1, outcome.stderr
        assert "Traceback" not in outcome.stderr, outcome.stderr
        for needle in needles:
            assert needle in lines[-1], (needle, lines[-1])
        message = lines[-1]
        for pattern, placeholder in (volatile or {}).items():
            message = re.sub(pattern, placeholder, message)
        self.record(section, case, outcome, message)
        return lines[-1]

    def record(self, section: str, case: str, outcome: Outcome, message: str | None = None) -> None:
        row = {
            "section": section,
            "case": case,
            "argv": [self._clean(a) for a in outcome.argv],
            "exit": outcome.code,
            "message": self._clean(outcome.last_line if message is None else message),
            "test": self.nodeid,
        }
        log_path = os.environ.get(error_table.LOG_VAR)
        if log_path:
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            return
        line = error_table.render_row(row)
        assert line in _table_text(), (
            f"docs/ERRORS.md has no current row for {case!r}; regenerate it: python tools/error_table.py\n"
            f"expected row: {line}"
        )

    def _clean(self, text: str) -> str:
        for pattern, placeholder in self._subs:
            text = pattern.sub(placeholder, text)
        return text


@functools.cache
def _table_text() -> str:
    return error_table.TABLE.read_text() if error_table.TABLE.is_file() else ""


@pytest.fixture
def rec(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Recorder:
    return Recorder(request.node.nodeid, tmp_path_factory.getbasetemp())


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Outcome]:
    """Run `edgegen ARGV...` in this process; returns its exit code and stderr."""

    def run(*argv: str) -> Outcome:
        capsys.readouterr()
        code = main(list(argv))
        return Outcome(list(argv), code, capsys.readouterr().err)

    return run


def _spawn(argv: Sequence[str], *, limit_bytes: int | None = None, **kwargs) -> subprocess.Popen:
    """`python -m edgegen ARGV` as a child: Ctrl-C raises KeyboardInterrupt there even when
    this runner ignores SIGINT (background CI jobs do), and `limit_bytes` caps file sizes
    (RLIMIT_FSIZE: writes past it fail with EFBIG, the path a full disk takes)."""

    def prepare() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if limit_bytes is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.Popen([sys.executable, "-m", "edgegen", *argv], cwd=ROOT, preexec_fn=prepare, **kwargs)


def _listing(folder: Path) -> dict[str, bytes | str]:
    """Every entry in `folder` (hidden temporaries included) with its bytes, or "dir"."""
    return {p.name: ("dir" if p.is_dir() else p.read_bytes()) for p in folder.iterdir()}


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ground-truth clip for `edgegen judge`."""
    from edgegen.video import write_video
    from edgegen.world import parse_prompt, render

    path = tmp_path_factory.mktemp("clips") / "clip.y4m"
    write_video(path, render(parse_prompt(PROMPT), 0, 8, 32), fps=24)
    return path


# ---------------------------------------------------------------------------------------------
# Prompts, in every command that takes one

BAD_PROMPTS = {
    "empty": ("", "empty"),
    "whitespace only": ("   ", "empty"),
    "unknown word": ("a red zebra moving right", "'zebra'"),
    "three objects": ("a red ball and a blue star and a green box", "3 objects"),
    "over-long": (PROMPT + " and" + " the" * 80, "at most 300"),
    "control character": ("a red ball\x1b[31m moving right", "control character '\\x1b'"),
    "non-ASCII": ("a red bäll moving right", "non-ASCII character 'ä'"),
}


def _prompt_argv(command: str, prompt: str, out: Path, bundle: Path, clip: Path) -> list[str]:
    if command == "generate":
        return ["generate", prompt, "--bundle", str(bundle), "--out", str(out)]
    if command == "world render":
        return ["world", "render", prompt, "--out", str(out)]
    return ["judge", str(clip), "--prompt", prompt]


@pytest.mark.parametrize("command", ["generate", "world render", "judge"])
@pytest.mark.parametrize("case", list(BAD_PROMPTS))
def test_bad_prompt(cli, rec: Recorder, tiny_bundle: Path, clip: Path, tmp_path: Path, command: str, case: str) -> None:
    prompt, needle = BAD_PROMPTS[case]
    outcome = cli(*_prompt_argv(command, prompt, tmp_path / "clip.y4m", tiny_bundle, clip))
    message = rec.error("Prompts", f"{command}: {case}", outcome, needle)
    if case == "unknown word":  # names the word and lists the vocabulary
        assert "known words: a, an, and, ball," in message
    assert _listing(tmp_path) == {}


def test_prompt_longer_than_the_bundle_takes(cli, rec: Recorder, tiny_bundle: Path, tmp_path: Path) -> None:
    """26 words is a valid scene (the world renders it) but more than the tokenizer's 24 slots."""
    prompt = "the " * 22 + "red ball moving right"
    assert cli("world", "render", prompt, "--out", str(tmp_path / "gt.y4m"), "--frames", "4").code == 0
    outcome = cli("generate", prompt, "--bundle", str(tiny_bundle), "--out", str(tmp_path / "clip.y4m"))
    rec.error("Prompts", "generate: more words than the bundle's tokenizer takes", outcome, "26 words, at most 24")
    assert not (tmp_path / "clip.y4m").exists()


# ---------------------------------------------------------------------------------------------
# Numbers and names

GENERATE_FLAGS = {
    "negative frames": (["--frames", "-5"], "use 1 to 100000"),
    "absurd frames": (["--frames", str(10**12)], "use 1 to 100000"),
    "frames not a number": (["--frames", "ten"], "--frames"),
    "steps 0": (["--steps", "0"], "valid: 1, 2, 4"),
    "steps the bundle lacks": (["--steps", "1000"], "valid: 1, 2, 4"),
    "negative seed": (["--seed", "-7"], f"use 0 to {MAX_SEED}"),
    "huge seed": (["--seed", str(2**64)], f"use 0 to {MAX_SEED}"),
    "unknown backend": (["--backend", "cuda"], "valid: auto, ort-cpu"),
    "unknown precision": (["--precision", "int4"], "valid: fp32, fp16, int8, fp8"),
    "threads 0": (["--threads", "0"], "--threads 0 is out of range; use 1 or more"),
    "--size (the bundle fixes the size)": (["--size", "64"], "No such option: --size"),
}


@pytest.mark.parametrize("case", list(GENERATE_FLAGS))
def test_generate_flag_out_of_range(cli, rec: Recorder, tiny_bundle: Path, tmp_path: Path, case: str) -> None:
    flags, needle = GENERATE_FLAGS[case]
    out = tmp_path / "clip.y4m"
    outcome = cli("generate", PROMPT, "--bundle", str(tiny_bundle), "--out", str(out), *flags)
    rec.error("Numbers and names", f"generate: {case}", outcome, needle)
    assert _listing(tmp_path) == {}


RENDER_FLAGS = {
    "size not a multiple of 8": (["--size", "30"], "multiple of 8"),
    "size 0": (["--size", "0"], "multiple of 8"),
    "huge size": (["--size", "100000"], "from 8 to 2048"),
    "frames 0": (["--frames", "0"], "use 1 to 100000"),
    "huge seed": (["--seed", str(10**23)], f"use 0 to {MAX_SEED}"),
}


@pytest.mark.parametrize("case", list(RENDER_FLAGS))
def test_world_render_flag_out_of_range(cli, rec: Recorder, tmp_path: Path, case: str) -> None:
    flags, needle = RENDER_FLAGS[case]
    outcome = cli("world", "render", PROMPT, "--out", str(tmp_path / "gt.y4m"), *flags)
    rec.error("Numbers and names", f"world render: {case}", outcome, needle)
    assert _listing(tmp_path) == {}


def test_eval_size_not_a_multiple_of_8(cli, rec: Recorder, tmp_path: Path) -> None:
    outcome = cli("eval", "--truth", "--size", "12", "--n", "2", "--out", str(tmp_path / "report"))
    rec.error("Numbers and names", "eval: size not a multiple of 8", outcome, "multiple of 8")
    assert _listing(tmp_path) == {}


def test_unknown_command(cli, rec: Recorder) -> None:
    rec.error("Numbers and names", "unknown command", cli("render", PROMPT), "No such command 'render'", "see 'edgegen --help'")


# ---------------------------------------------------------------------------------------------
# Bundles: refused at load, naming the file


def _edit_manifest(root: Path, edit: Callable[[dict], None], *, refresh: bool = False) -> None:
    data = json.loads((root / MANIFEST).read_text())
    edit(data)
    if refresh:  # checksums follow the edit: only the content is wrong
        write_manifest(root, data)
    else:
        (root / MANIFEST).write_text(json.dumps(data))


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _rename_denoiser_input(data: dict) -> None:
    data["precisions"]["fp32"]["components"]["denoiser"]["inputs"][0]["name"] = "latents"


def _not_onnx(root: Path) -> None:
    (root / "vae_decoder.onnx").write_bytes(b"this is not an ONNX model")
    _edit_manifest(root, lambda d: None, refresh=True)


def _tokenizer_that_is_not_one(root: Path) -> None:
    (root / "README.txt").write_text("not a tokenizer")
    _edit_manifest(root, lambda d: d["tokenizer"].update(file="README.txt"), refresh=True)


BUNDLE_DAMAGE: dict[str, tuple[Callable[[Path], object], str]] = {
    "folder without a manifest": (lambda r: (r / MANIFEST).unlink(), "manifest.json is missing"),
    "manifest not JSON": (lambda r: (r / MANIFEST).write_text("{"), "is not valid JSON"),
    "unknown schema version": (lambda r: _edit_manifest(r, lambda d: d.update(schema_version=99)), "schema_version 99 is not supported"),
    "manifest field of the wrong type": (lambda r: _edit_manifest(r, lambda d: d["video"].update(fps="fast")), "video.fps is 'fast'"),
    "listed file missing": (lambda r: (r / "vae_decoder.onnx").unlink(), "vae_decoder.onnx is missing"),
    "file tampered (checksum mismatch)": (lambda r: _flip_middle_byte(r / "denoiser.onnx"), "denoiser.onnx does not match its sha256"),
    "file truncated": (lambda r: (r / "text_encoder.onnx").write_bytes(b"\x08\x01"), "text_encoder.onnx has 2 bytes"),
    "I/O names differ from the ONNX": (lambda r: _edit_manifest(r, _rename_denoiser_input, refresh=True), "denoiser.onnx"),
    "file that is not ONNX": (_not_onnx, "vae_decoder.onnx"),
    "tokenizer file that is not one": (_tokenizer_that_is_not_one, "README.txt is not a valid tokenizer file"),
}
VOLATILE = {  # what depends on the export or the library version, not on the case
    "file truncated": {r"the manifest says \d+": "the manifest says N"},
    "file that is not ONNX": {r"\(\[ONNXRuntimeError\].*\); re-export": "(ONNX Runtime's reason); re-export"},
}


@pytest.mark.parametrize("case", list(BUNDLE_DAMAGE))
def test_broken_bundle_is_refused_naming_the_file(cli, rec: Recorder, bundle_copy: Path, tmp_path: Path, case: str) -> None:
    damage, needle = BUNDLE_DAMAGE[case]
    damage(bundle_copy)
    out = tmp_path / "clip.y4m"
    outcome = cli("generate", PROMPT, "--bundle", str(bundle_copy), "--backend", "ort-cpu", "--out", str(out))
    rec.error("Bundles", case, outcome, needle, volatile=VOLATILE.get(case))
    assert not out.exists() and not list(tmp_path.glob(".clip.y4m*"))


def test_bundle_folder_that_does_not_exist(cli, rec: Recorder, tmp_path: Path) -> None:
    outcome = cli("generate", PROMPT, "--bundle", str(tmp_path / "no-bundle"), "--out", str(tmp_path / "clip.y4m"))
    rec.error("Bundles", "bundle folder that does not exist", outcome, "no-bundle does not exist")


# ---------------------------------------------------------------------------------------------
# Output paths


def _existing_file(tmp_path: Path) -> Path:
    (tmp_path / "clip.y4m").write_bytes(b"the user's clip")
    return tmp_path / "clip.y4m"


def _under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "notes.txt").write_text("x")
    return tmp_path / "notes.txt" / "clip.y4m"


def _existing_folder(tmp_path: Path) -> Path:
    (tmp_path / "clip.y4m").mkdir()
    return tmp_path / "clip.y4m"


def _folder_of_other_files(tmp_path: Path) -> Path:
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "notes.txt").write_text("x")
    return tmp_path / "frames"


OUTPUT_CASES: dict[str, tuple[Callable[[Path], Path], list[str], str]] = {
    "unknown suffix": (lambda t: t / "clip.avi", [], "use .mp4, .gif, .y4m"),
    "folder does not exist": (lambda t: t / "no" / "such" / "clip.y4m", [], "does not exist; create it first"),
    "parent is a file": (_under_a_file, [], "is not a folder"),
    "existing file without --force": (_existing_file, [], "exists; pass --force to overwrite"),
    "existing folder where a file goes": (_existing_folder, ["--force"], "is a folder"),
    "frame folder holding other files": (_folder_of_other_files, ["--force"], "holds files other than frame_*.png"),
}


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
def test_bad_output_path_keeps_everything(cli, rec: Recorder, tmp_path: Path, case: str) -> None:
    make, flags, needle = OUTPUT_CASES[case]
    out = make(tmp_path)
    before = _listing(tmp_path)
    outcome = cli("world", "render", PROMPT, "--out", str(out), "--frames", "4", *flags)
    rec.error("Output", f"world render: {case}", outcome, needle)
    assert _listing(tmp_path) == before


def test_eval_report_exists(cli, rec: Recorder, tmp_path: Path) -> None:
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.json").write_text("{}")
    outcome = cli("eval", "--truth", "--n", "2", "--frames", "8", "--size", "32", "--out", str(tmp_path / "report"))
    rec.error("Output", "eval: report exists without --force", outcome, "report.json exists; pass --force")
    assert (tmp_path / "report" / "report.json").read_text() == "{}"


def _without_root_powers() -> list[str]:
    """A command prefix under which root obeys permission bits (it ignores them by default)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root, which ignores permission bits, and setpriv (util-linux) is missing to drop that")
    caps = "-dac_override,-dac_read_search"
    prefix = ["setpriv", "--bounding-set", caps, "--inh-caps", caps]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:  # e.g. a container without CAP_SETPCAP
        pytest.skip(f"running as root, which ignores permission bits, and setpriv cannot drop that: {probe.stderr.strip()}")
    return prefix


_RUN_ALL = """
import contextlib, io, json, sys
from edgegen.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def test_permission_denied(rec: Recorder, tiny_bundle: Path, tmp_path: Path) -> None:
    """Folders and files this user may not use: one process (root: without its DAC override)."""
    read_only, locked, bundle = tmp_path / "read-only", tmp_path / "locked", tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    read_only.mkdir()
    locked.mkdir()
    cases = {
        "output folder not writable": (["world", "render", PROMPT, "--out", str(read_only / "clip.y4m")], "Permission denied"),
        "output inside a folder the user may not enter": (["world", "render", PROMPT, "--out", str(locked / "clip.y4m")], "Permission denied"),
        "clip inside a folder the user may not enter": (["judge", str(locked / "clip.y4m"), "--prompt", PROMPT], "cannot read"),
        "bundle file not readable": (["generate", PROMPT, "--bundle", str(bundle), "--out", str(tmp_path / "clip.y4m")], "denoiser.onnx: Permission denied"),
    }
    read_only.chmod(0o555)
    locked.chmod(0o000)
    (bundle / "denoiser.onnx").chmod(0o000)
    try:
        argvs = [argv for argv, _ in cases.values()]
        cmd = [*_without_root_powers(), sys.executable, "-c", _RUN_ALL, json.dumps(argvs)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        read_only.chmod(0o755)
        locked.chmod(0o755)
        (bundle / "denoiser.onnx").chmod(0o644)
    assert proc.returncode == 0, proc.stderr
    section = {"bundle file not readable": "Bundles"}
    for (case, (argv, needle)), (code, err) in zip(cases.items(), json.loads(proc.stdout), strict=True):
        rec.error(section.get(case, "Output"), case, Outcome(argv, code, err), needle)
    assert _listing(read_only) == {} and _listing(locked) == {}
    assert not (tmp_path / "clip.y4m").exists()


def test_disk_full_keeps_the_old_file(rec: Recorder, tiny_bundle: Path, tmp_path: Path) -> None:
    old = _existing_file(tmp_path)
    argv = ["generate", PROMPT, "--bundle", str(tiny_bundle), "--out", str(old), "--frames", "96", "--force"]
    proc = _spawn(argv, limit_bytes=20_000, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=300)
    rec.error("Output", "disk full while writing (ulimit -f), with --force over an old file", Outcome(argv, proc.returncode, err), "File too large")
    assert _listing(tmp_path) == {"clip.y4m": b"the user's clip"}


def test_reader_closing_the_pipe_ends_quietly(rec: Recorder, tiny_bundle: Path) -> None:
    argv = ["generate", PROMPT, "--bundle", str(tiny_bundle), "--out", "-", "--frames", "100000"]
    proc = _spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"YUV4MPEG2 ")
    proc.stdout.read(10_000)
    proc.stdout.close()  # like `| head -c 10000`
    code = proc.wait(timeout=120)
    err = proc.stderr.read().decode()
    assert code == 141 and "edgegen:" not in err and "Traceback" not in err and "Exception" not in err, err
    rec.record("Output", "reader closes --out - (e.g. | head)", Outcome(argv, code, err), message="")


# ---------------------------------------------------------------------------------------------
# Interruptions: a real process, mid-generation


def _wait_until_writing(folder: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the writer's hidden temporary beside the target holds data (frames are flowing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "edgegen ended before it was interrupted"
        if any(p.stat().st_size > 0 for p in folder.glob(".*.partial-*")):
            return
        time.sleep(0.02)
    proc.kill()
    pytest.fail("edgegen wrote nothing to its temporary file in time")


@pytest.mark.parametrize(
    ("signum", "code", "line", "name", "existing"),
    [
        (signal.SIGINT, 130, "edgegen: interrupted", "clip.y4m", False),
        (signal.SIGTERM, 143, "edgegen: terminated", "clip.mp4", True),
    ],
    ids=["sigint-new-y4m", "sigterm-mp4-over-old-file"],
)
def test_signal_mid_generation_leaves_nothing_partial(
    rec: Recorder, tiny_bundle: Path, tmp_path: Path, signum: int, code: int, line: str, name: str, existing: bool
) -> None:
    out = tmp_path / name
    if existing:
        out.write_bytes(b"the user's clip")
    before = _listing(tmp_path)
    argv = ["generate", PROMPT, "--bundle", str(tiny_bundle), "--out", str(out), "--frames", "100000", *(["--force"] if existing else [])]
    proc = _spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_until_writing(tmp_path, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    outcome = Outcome(argv, proc.returncode, err)
    assert outcome.code == code and outcome.last_line == line and "Traceback" not in err, err
    assert _listing(tmp_path) == before  # no partial target, no temporary; the old file intact
    rec.record("Interruptions", f"{signal.Signals(signum).name} mid-generation" + (" (--force over an old file)" if existing else ""), outcome)


# ---------------------------------------------------------------------------------------------
# Long runs


def _rss_bytes(pid: int) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the child's RSS from /proc (Linux)")
def test_ten_thousand_frames_stream_at_flat_memory(tiny_bundle: Path) -> None:
    """Read from the pipe and counted, never stored; RSS from frame 1,000 to frame 9,500 stays flat."""
    frames = 10_000
    argv = ["-q", "generate", PROMPT, "--bundle", str(tiny_bundle), "--out", "-", "--frames", str(frames), "--steps", "1"]
    proc = _spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    header = proc.stdout.readline().split()
    width, height = (int(t[1:]) for t in header[1:3])
    assert header[0] == b"YUV4MPEG2" and b"C444" in header
    count, rss = 0, {}
    while proc.stdout.readline() == b"FRAME\n":
        assert len(proc.stdout.read(3 * width * height)) == 3 * width * height
        count += 1
        if count in (1_000, 9_500):
            rss[count] = _rss_bytes(proc.pid)
    assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()
    assert count == frames
    growth = rss[9_500] - rss[1_000]
    assert growth < 20 * 2**20, f"RSS grew by {growth / 2**20:.1f} MB over 8,500 frames"


def test_build_with_an_unknown_backend_lists_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "--backend", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown --backend 'nope'; valid: ort-cpu, ort-cuda, tensorrt" in err
    assert main(["build", "--backend", "ort-cpu"]) == 2
    assert "ort-cpu has nothing to compile" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Debugging, and the table itself


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    """--debug lets the exception out (Python prints the traceback); without it: one line."""
    with pytest.raises(PromptError, match="empty"):
        main(["--debug", "world", "render", "", "--out", str(tmp_path / "gt.y4m")])


def test_every_test_the_table_names_exists() -> None:
    """Rows of this file name collected node ids (parameters included); others name functions."""
    ids = error_table.test_ids(error_table.TABLE.read_text())
    assert len(ids) >= len(error_table.REFERENCES)
    collect = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests/test_robustness.py"]
    collected = set(subprocess.run(collect, cwd=ROOT, capture_output=True, text=True, timeout=300).stdout.splitlines())
    for node in ids:
        file, _, name = node.partition("::")
        if file == "tests/test_robustness.py":
            assert node in collected, f"docs/ERRORS.md names {node}, which is not a test (any more)"
        else:
            function = name.partition("[")[0]
            assert f"def {function}(" in (ROOT / file).read_text(), f"docs/ERRORS.md names {node}, which does not exist"


def test_render_quotes_what_markdown_and_shells_would_mangle() -> None:
    row = {"section": "Prompts", "case": "x", "argv": ["generate", "a|b\x1b", "--out", "-"], "exit": 2, "message": "use <pad> | `x`", "test": "t"}
    line = error_table.render_row(row)
    assert "`edgegen generate $'a\\|b\\x1b' --out -`" in line
    assert "use &lt;pad> \\| `x`" in line and line.count(" | ") == 4
