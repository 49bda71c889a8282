"""Generate docs/ERRORS.md: every robustness case with its command, exit code and message.

The rows come from the tests, not from anyone's memory of the messages: tests/test_robustness.py
records each case it runs (section, case, argv, exit code, the line edgegen printed, test id)
into the JSON-lines file named by EDGEGEN_ERROR_LOG, and this script runs those tests with the
variable set and renders the markdown. Without the variable the same tests check that their row
in docs/ERRORS.md is current, so a changed message fails CI until the table is regenerated.
Cases proven by other test files (engine cache, runtime threads, video writer, fuzzing) are
listed in REFERENCES by test id; tests/test_robustness.py checks that every id in the table exists.

    python tools/error_table.py                  # run the tests, rewrite docs/ERRORS.md
    python tools/error_table.py --log rows.jsonl # render rows recorded earlier
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("error_table")

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "ERRORS.md"
TESTS = "tests/test_robustness.py"
LOG_VAR = "EDGEGEN_ERROR_LOG"
MAX_MESSAGE = 180  # the vocabulary list makes some messages long; the table shows their start
MAX_COMMAND = 140
ERROR_PREFIX = "edgegen: error: "  # said once in the header, not in every row

SECTIONS = (
    "Prompts", "Numbers and names", "Bundles", "Engines", "Training, export and calibration", "Output", "Interruptions", "Long runs",
    "Parsers (fuzzed)", "Debugging",
)

# Cases whose proof lives in another test file (or needs no message): (section, case, what
# happens, test id). Their test ids are checked to exist; their text is not generated.
REFERENCES: tuple[tuple[str, str, str, str], ...] = (
    ("Numbers and names", "generate: other out-of-range flags (frames 0 / 100001, seed -1 / 2**63, steps 3, precision the bundle lacks, fps 0 / 1001 / nan)",
     "one line listing the valid range or names, exit 2", "tests/test_generate_cli.py::test_bad_flags_are_one_line_errors"),
    ("Engines", "engine built on another GPU", "not loaded: 'it was built for <GPU> (sm X); this GPU is <GPU> (sm Y)'; rebuilt",
     "tests/test_engine_cache.py::test_engine_from_another_gpu_in_this_slot_is_detected"),
    ("Engines", "engine built with another TensorRT version or GPU", "a miss naming each engine it could not use and why ('TensorRT 10.8.0 ... this is TensorRT 10.3.0'); rebuilt",
     "tests/test_engine_cache.py::test_a_miss_explains_the_engines_it_could_not_use"),
    ("Engines", "truncated engine", "stale ('truncated: 100 bytes, expected 4096'); rebuilt with one log line saying why",
     "tests/test_engine_cache.py::test_ensure_engine_rebuilds_a_truncated_engine_and_says_why_in_one_line"),
    ("Engines", "corrupted engine of the right size", "stale ('corrupted: sha256 ...'); rebuilt",
     "tests/test_engine_cache.py::test_corrupted_plan_of_the_same_size_is_stale"),
    ("Engines", "engine from another bundle", "a miss: 'built from another denoiser.onnx (<digest>)'; rebuilt",
     "tests/test_engine_cache.py::test_engine_from_another_bundle_is_explained"),
    ("Engines", "half-written engine (killed mid-build)", "a miss or stale entry ('has no sidecar', 'is missing', 'unreadable'); rebuilt",
     "tests/test_engine_cache.py::test_plain_miss_and_half_written_entries"),
    ("Engines", "fp8 on a GPU without FP8", "refused before building: 'fp8 needs FP8 tensor cores ... use --precision int8 or fp16'",
     "tests/test_engine_cache.py::test_fp8_on_a_gpu_without_fp8_is_refused_before_building"),
    ("Engines", "edgegen build without TensorRT", "one line saying what to install, exit 2",
     "tests/test_backends_gpu.py::test_build_without_tensorrt_is_one_line_and_exit_2"),
    ("Bundles", "manifest I/O shape or dtype edited so it disagrees with the ONNX file", "refused at load, naming the component and the tensor, exit 2",
     "tests/test_bundle.py::test_io_shape_or_dtype_edited_in_the_manifest_is_caught_at_load"),
    ("Output", "GIF at more than 100 fps; unquoted prompt words; a file given as --bundle; --out ''", "one line saying what to do (e.g. 'use --fps 100 or less, or write .mp4'; 'quote it'), exit 2",
     "tests/test_generate_cli.py::test_output_bundle_and_unquoted_prompt_errors_say_what_to_do"),
    ("Numbers and names", "bench: bad prompt, --frames/--threads out of range, --plot not .png, nothing requested can run", "one line, exit 2, before measuring",
     "tests/test_bench.py::test_bad_flags_are_one_line_errors"),
    ("Training, export and calibration", "train/export/calibrate without torch (base install)", "one line: 'needs PyTorch and the train extra ...: pip install torch==2.13.0 && pip install ...', exit 2",
     "tests/test_train.py::test_cli_train_without_torch_says_how_to_install_it"),
    ("Training, export and calibration", "config that is not valid JSON", "'config X is not valid JSON at line L:C (...); fix the file', exit 2",
     "tests/test_train.py::test_cli_train_says_where_a_config_is_not_valid_json"),
    ("Training, export and calibration", "config with an unknown key", "'unknown key 'train.vae.lrr' (did you mean 'lr'?)', exit 2, before any folder is made",
     "tests/test_train.py::test_unknown_config_keys_are_refused_with_the_closest_known_key"),
    ("Training, export and calibration", "config value out of range (e.g. dit_depth -1, height != width)", "one line naming the key and what it must be, exit 2, before any folder is made",
     "tests/test_train.py::test_config_values_are_checked_before_any_folder_is_made"),
    ("Training, export and calibration", "train a stage whose --out already holds a run", "refused: pass --resume to continue it or --force to start over; --force keeps the old checkpoint until the first save",
     "tests/test_train.py::test_a_second_run_of_a_stage_needs_resume_or_force"),
    ("Training, export and calibration", "--resume / --init with a checkpoint of another config", "one line naming the differing config fields (or tensor), exit 2",
     "tests/test_train.py::test_resume_with_another_config_says_so"),
    ("Training, export and calibration", "train --out is a file or not writable", "one line naming the folder, exit 2",
     "tests/test_train.py::test_cli_train_refuses_an_out_that_is_a_file_or_not_writable"),
    ("Training, export and calibration", "export over a bundle of another checkpoint", "refused, the bundle untouched: choose a new folder, or --force to replace it",
     "tests/test_export.py::test_export_over_another_checkpoints_bundle_needs_force"),
    ("Training, export and calibration", "export fp32 over a bundle with fp16 (same checkpoint)", "fp16 kept in the manifest with its files",
     "tests/test_export.py::test_reexport_keeps_the_precisions_already_in_the_bundle"),
    ("Training, export and calibration", "calibrate --components ''", "'--components is empty; name the components to quantize ...', exit 2",
     "tests/test_train.py::test_calibrate_refuses_an_empty_component_list"),
    ("Output", "any command: disk full / permission denied / read-only folder", "one line: 'no space left to write (<path>); free some space or choose another --out' or '<reason> (<path>); ...', exit 2",
     "tests/test_generate_cli.py::test_a_full_disk_or_a_denied_write_is_one_line"),
    ("Output", "a temporary left by a killed (SIGKILL) writer", "removed by the next write of the same file once an hour old",
     "tests/test_files.py::test_a_temp_left_by_a_killed_writer_is_removed_by_the_next_write"),
    ("Output", "disk full while writing (mp4, PNG folder)", "one line 'cannot write ...', the old file kept, no temporary left",
     "tests/test_video.py::test_disk_full_is_one_line_and_keeps_the_old_file"),
    ("Output", "--out - on a terminal", "'refusing to write video to a terminal; pipe it into a player: --out - | mpv -'",
     "tests/test_video.py::test_stdout_refuses_a_terminal"),
    ("Interruptions", "SIGTERM while writing mp4 / PNG frames (writer level)", "no partial file, the old file kept",
     "tests/test_video.py::test_sigterm_mid_write_leaves_no_partial_file"),
    ("Long runs", "10,000 frames streamed to stdout", "every frame arrives; the process's RSS grows by less than 20 MB from frame 1,000 to frame 9,500",
     "tests/test_robustness.py::test_ten_thousand_frames_stream_at_flat_memory"),
    ("Long runs", "unbounded stream", "the KV cache and VAE state keep their shapes (fixed memory)",
     "tests/test_runtime.py::test_unbounded_stream_keeps_fixed_state"),
    ("Long runs", "two streams of one Generator in two threads", "the same frames as one after the other",
     "tests/test_runtime.py::test_two_threads_match_sequential_runs"),
    ("Parsers (fuzzed)", "prompt parser (200 generated prompts)", "a scene or a one-line PromptError, nothing else",
     "tests/test_fuzz.py::test_parse_prompt_raises_only_prompt_error"),
    ("Parsers (fuzzed)", "tokenizer (200 generated prompts)", "ids or a one-line PromptError; it refuses a prompt the parser accepts only for its length",
     "tests/test_fuzz.py::test_tokenizer_raises_only_prompt_error_and_agrees_with_the_parser"),
    ("Parsers (fuzzed)", "manifest loader (200 mutated manifests: keys removed, wrong types, bad shapes, extra fields)",
     "a one-line BundleError, or a bundle whose every accessor works", "tests/test_fuzz.py::test_load_bundle_raises_only_bundle_error"),
    ("Parsers (fuzzed)", "tokenizer file that is not one (checksums valid)", "a one-line BundleError naming the file",
     "tests/test_fuzz.py::test_a_checksummed_tokenizer_that_is_not_one_is_a_bundle_error"),
    ("Debugging", "--debug on a user error", "the traceback, for reporting bugs",
     "tests/test_robustness.py::test_debug_shows_the_traceback"),
)

HEADER = """\
# Errors: what edgegen says when something is wrong

<!-- Generated by `python tools/error_table.py` from tests/test_robustness.py; do not edit by hand.
     The tests fail when a row here no longer matches what edgegen prints. -->

Every problem a user can cause is **one line on stderr** that names the problem and what to do,
`edgegen: error: <message>`, and **exit code 2** (`edgegen judge` exits 1 when the clip does not match
its prompt) — never a traceback; `edgegen --debug ...` shows one. Ctrl-C exits 130
(`edgegen: interrupted`), SIGTERM 143 (`edgegen: terminated`), a reader closing `--out -` 141,
quietly. Output is written to a hidden temporary beside the target and renamed at the end, so
none of these leaves a partial file or loses the file `--force` would replace.
`edgegen: internal error: ...` (exit 1) is a bug: please report it with the `--debug` traceback.

Each row is a test that runs the real command; the message is what that test saw. In commands,
BUNDLE is the tiny test bundle and TMP a fresh folder; N stands for a number that depends on the
build. Messages (after `edgegen: error: `) are cut at {limit} characters, commands at {command}.
"""


# ---------------------------------------------------------------------------------------------
# Rendering (the tests use `render_row` to find their own row)


def display_command(argv: Sequence[str]) -> str:
    """The command as a user would type it; non-printable characters as bash $'...' escapes."""
    return " ".join(["edgegen", *(_quote(a) for a in argv)])


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit].rstrip() + " …"


def _quote(arg: str) -> str:
    if arg.isprintable():
        return shlex.quote(arg)
    escaped = arg.encode("unicode_escape").decode("ascii").replace("'", "\\'")
    return f"$'{escaped}'"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if "`" in text else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _message(text: str) -> str:
    if not text:
        return "(nothing)"
    text = text.removeprefix(ERROR_PREFIX)
    return _cut(text, MAX_MESSAGE).replace("<", "&lt;")


def render_row(row: Mapping[str, Any]) -> str:
    """One table line for a recorded case (argv, exit, message) or a reference (behaviour)."""
    if "behaviour" in row:
        cells = [row["case"], "—", "—", row["behaviour"], _code(row["test"])]
    else:
        command = _cut(display_command(row["argv"]), MAX_COMMAND)
        cells = [row["case"], _code(command), str(row["exit"]), _message(row["message"]), _code(row["test"])]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def render(rows: Iterable[Mapping[str, Any]]) -> str:
    """The whole document: recorded rows in test order, then the references, by section."""
    rows = list(rows) + [dict(section=s, case=c, behaviour=b, test=t) for s, c, b, t in REFERENCES]
    unknown = {r["section"] for r in rows} - set(SECTIONS)
    assert not unknown, f"rows in sections the table does not know: {unknown}"
    parts = [HEADER.format(limit=MAX_MESSAGE, command=MAX_COMMAND)]
    for section in SECTIONS:
        mine = [r for r in rows if r["section"] == section]
        if not mine:
            continue
        parts.append(f"\n## {section}\n\n| case | command | exit | message / what happens | test |\n| --- | --- | --- | --- | --- |")
        parts.extend(render_row(r) for r in mine)
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------
# Test ids named in the table


_TEST_ID = re.compile(r"`(tests/[\w/]+\.py::\w+(?:\[[^`]*\])?)`")


def test_ids(markdown: str) -> list[str]:
    """Every pytest node id the table names, e.g. `tests/test_x.py::test_y[case]`."""
    return [i.replace("\\|", "|") for i in _TEST_ID.findall(markdown)]


# ---------------------------------------------------------------------------------------------
# Command line


def run_tests(log_path: Path, pytest_args: Sequence[str]) -> None:
    """Run the robustness tests with recording on; a failing test means no table."""
    env = {**os.environ, LOG_VAR: str(log_path)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TESTS, *pytest_args]
    log.info("running %s", " ".join(cmd))
    result = subprocess.run(cmd, cwd=ROOT, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"the robustness tests failed (exit {result.returncode}); fix them before regenerating the table")


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, help="render rows recorded earlier instead of running the tests")
    parser.add_argument("--out", type=Path, default=TABLE, help=f"where to write the table (default: {TABLE.relative_to(ROOT)})")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. -x)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.log is not None:
        rows = read_log(args.log)
    else:
        with tempfile.TemporaryDirectory(prefix="edgegen-errors-") as tmp:
            log_path = Path(tmp) / "rows.jsonl"
            run_tests(log_path, args.pytest_args)
            rows = read_log(log_path)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_name(f".{args.out.name}.partial")
    tmp_out.write_text(render(rows))
    tmp_out.replace(args.out)
    log.info("wrote %d cases (%d recorded, %d referenced) to %s", len(rows) + len(REFERENCES), len(rows), len(REFERENCES), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
