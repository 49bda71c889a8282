"""The `edgegen` command.

Each command group lives in its own module with a `register(app)` function; the modules import
nothing heavy at import time (torch, onnx, onnxruntime are imported inside the commands), so
`edgegen --help` is instant and works on a base install.
"""

from __future__ import annotations

import errno
import logging
import signal
import sys
from collections.abc import Sequence

import typer

from edgegen import __version__
from edgegen.errors import Interrupted, UserError

log = logging.getLogger("edgegen")

app = typer.Typer(
    name="edgegen",
    help="Edge-optimized, compressed text-to-video: generate, train, export, calibrate, run, bench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgegen {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors on stderr."),
    debug: bool = typer.Option(False, "--debug", help="Debug logging, and tracebacks for errors."),
) -> None:
    """edgegen: text-to-video that runs on your own device."""
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)


def _register_commands() -> None:
    from edgegen.cli import bench, build, calibrate, export, generate, judge, train, world

    for module in (generate, world, judge, train, export, calibrate, build, bench):
        module.register(app)


# typer >= 0.20 vendors click (`typer._click`) with its own exception classes and no longer
# installs click; older typer is built on click. Catch whichever this install has.
try:
    import click
except ImportError:  # typer >= 0.20 without click installed
    _CLICK: tuple[tuple[type[BaseException], ...], ...] = ((), (), ())
else:
    _CLICK = ((click.exceptions.Exit,), (click.exceptions.Abort,), (click.ClickException,))
_EXIT = (*_CLICK[0], typer.Exit)
_ABORT = (*_CLICK[1], typer.Abort)
_USAGE = (*_CLICK[2], *((typer.TyperException,) if hasattr(typer, "TyperException") else ()))


def _usage_error(exc: Exception) -> int:
    """A bad flag or argument as one line naming the help to read; a bare command shows its help."""
    message = exc.format_message().strip()  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    if "\n" in message:  # no_args_is_help: the "message" is the command's help text
        exc.show()  # type: ignore[attr-defined]
    elif message:  # (newer typer prints that help itself and leaves the message empty)
        hint = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
        print(f"edgegen: error: {message.rstrip('.')}{hint}", file=sys.stderr)
    return exc.exit_code  # type: ignore[attr-defined]


# A full disk or a folder the user cannot write: theirs to fix, not a bug of ours.
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def _disk_error(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left to write{where}; free some space or choose another --out"
    return f"{exc.strerror}{where}; use files and folders you have access to (for output: another --out)"


def _on_sigterm(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


_GLOBAL_OPTIONS = ("--debug", "--quiet", "-q")


def _global_options_first(args: list[str]) -> list[str]:
    """`edgegen generate ... --debug` works like `edgegen --debug generate ...`: the root's flags
    (no subcommand has options of those names) move to the front; after `--` nothing moves."""
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in _GLOBAL_OPTIONS]
    return flags + [a for a in args[:end] if a not in _GLOBAL_OPTIONS] + args[end:]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: runs the CLI and turns every failure into one line and an exit code."""
    args = _global_options_first(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in args
    _register_commands()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = app(args=args, prog_name="edgegen", standalone_mode=False)
        # typer >= 0.20 returns an Exit's code instead of raising it, Ctrl-C included (as 130).
        if code == 130:
            print("edgegen: interrupted", file=sys.stderr)
        return code if isinstance(code, int) else 0
    except SystemExit as exc:
        if isinstance(exc.__context__, BrokenPipeError):  # typer >= 0.20 exits 1 on a closed pipe
            return 141
        raise
    except _EXIT as exc:
        return exc.exit_code
    except _USAGE as exc:
        return _usage_error(exc)
    except (KeyboardInterrupt, *_ABORT):
        print("edgegen: interrupted", file=sys.stderr)
        return 130
    except Interrupted as exc:
        print("edgegen: terminated", file=sys.stderr)
        return 128 + exc.signum
    except UserError as exc:
        if debug:
            raise
        print(f"edgegen: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # the reader of `--out -` went away: not our failure to report
        sys.stderr.close()
        return 141
    except OSError as exc:
        if debug or exc.errno not in _DISK_ERRORS:
            raise
        print(f"edgegen: error: {_disk_error(exc)}", file=sys.stderr)
        return UserError.exit_code
    except Exception as exc:
        if debug:
            raise
        print(f"edgegen: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
