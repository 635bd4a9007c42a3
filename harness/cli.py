"""`quantgate` command line. Each subcommand lives in ``harness/commands/<name>.py`` and provides
``register(subparsers)`` which adds its parser and sets ``func`` (args -> exit code).

Exit codes: 0 ok / passes, 1 defects found, 2 bad input / usage / unreachable server, 130 Ctrl-C.
Errors are printed as one line ``quantgate: <file>: <problem>`` with no traceback
(set QUANTGATE_DEBUG=1 to see tracebacks).
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from quant.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, QuantgateError

# The first commands of --help, in this order; every other module of harness/commands/ follows in
# alphabetical order (a new command needs only its module: nothing to add here, nothing skipped).
FIRST = ["demo", "convert", "plan", "inspect", "verify", "diff", "gate"]


def command_names() -> list[str]:
    import pkgutil
    from harness import commands
    mods = sorted(m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_"))
    return [n for n in FIRST if n in mods] + [n for n in mods if n not in FIRST]


COMMANDS = command_names()

# commands whose checkpoint arguments may be an index.json / shard directory
READS_CHECKPOINTS = ("convert", "plan", "inspect", "verify", "diff")

EPILOG = """\
exit codes: 0 ok/passes, 1 defects found, 2 unreadable input, usage error or server failure, 130 interrupted.
Typical release gate:
  quantgate convert model_bf16.safetensors --format fp8 --preset wan22-ti2v-5b -o model_fp8.safetensors
  quantgate verify model_fp8.safetensors --source model_bf16.safetensors --strict
  quantgate gate model_fp8.safetensors --source model_bf16.safetensors --out gate-report/
"""


def one_line(msg: str, limit: int = 2000) -> str:
    """The error line as printed: one line, at most ``limit`` characters, printable (a lone
    surrogate from a hostile file is escaped, never a UnicodeEncodeError)."""
    msg = " ".join(msg.splitlines())
    if len(msg) > limit:
        msg = msg[:limit] + f"... ({len(msg):,} characters)"
    return msg.encode("utf-8", "backslashreplace").decode("utf-8")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quantgate",
        description="Make and prove FP8 / NVFP4 quantized diffusion checkpoints for ComfyUI.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from quant import __version__
    p.add_argument("--version", action="version", version=f"quantgate {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"harness.commands.{name}").register(sub)
    for name in READS_CHECKPOINTS:
        if name in sub.choices:
            sub.choices[name].add_argument(
                "--allow-outside", action="store_true",
                help="read index.json shards that lie outside the index's directory (absolute paths, '..', "
                     "symlinks out); refused by default")
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM / SIGHUP: unwinds exactly like Ctrl-C (temp files removed, servers stopped, exit 130)."""

    def __init__(self, signame: str):
        super().__init__(signame)
        self.signame = signame


def _raise_terminated(signum, frame):
    raise Terminated(signal.Signals(signum).name)


def install_signal_handlers() -> dict:
    """SIGTERM and SIGHUP behave like SIGINT (a KeyboardInterrupt) in the main thread. Returns the
    previous handlers (``main`` puts them back when it returns)."""
    prev = {}
    if threading.current_thread() is not threading.main_thread():
        return prev
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            prev[sig] = signal.signal(sig, _raise_terminated)
        except (ValueError, OSError):
            pass
    return prev


def main(argv: list[str] | None = None) -> int:
    prev = install_signal_handlers()
    try:
        return _main(argv)
    finally:
        for sig, h in prev.items():
            try:
                signal.signal(sig, h if h is not None else signal.SIG_DFL)
            except (ValueError, OSError):
                pass


class _Quiet(argparse.ArgumentParser):
    """The early look at a convert command line: never prints, never exits (the real parser does both)."""

    def error(self, message):
        raise ValueError(message)


def _early_start(argv: list[str] | None) -> None:
    """``convert ... --device cuda``: start CUDA, the target format's kernels and the first reads in the
    background (quant.startup) before the other commands' modules are imported and the arguments parsed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "convert" or "-h" in argv or "--help" in argv or "--device" not in " ".join(argv):
        return
    try:
        p = _Quiet(add_help=False)
        sub = p.add_subparsers(dest="command", parser_class=_Quiet)
        importlib.import_module("harness.commands.convert").register(sub)
        args, _rest = p.parse_known_args(argv)
    except (ValueError, SystemExit):
        return                                  # the real parser reports it
    from quant import startup
    startup.begin(args.source, args.device, args.target)


def _main(argv: list[str] | None) -> int:
    debug = bool(os.environ.get("QUANTGATE_DEBUG"))
    from quant import startup
    startup.mark("entry")
    _early_start(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    startup.mark("parsed")
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    token = None
    if getattr(args, "allow_outside", False):
        from quant.sources import ALLOW_OUTSIDE
        token = ALLOW_OUTSIDE.set(True)
    try:
        rc = args.func(args)
        return int(rc or 0)
    except QuantgateError as e:
        if debug:
            raise
        from harness.commands import message
        print(f"quantgate: {one_line(message(e))}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        return 0
    except OSError as e:                  # disk full, permission denied, vanished paths, ...
        if debug:
            raise
        where = e.filename or ""
        print(one_line(f"quantgate: {str(where) + ': ' if where else ''}{e.strerror or e}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as e:
        why = f"terminated ({e.signame})" if isinstance(e, Terminated) else "interrupted"
        print(f"quantgate: {why}; no partial output was kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        print("quantgate: out of memory", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        startup.end()
        if token is not None:
            from quant.sources import ALLOW_OUTSIDE
            ALLOW_OUTSIDE.reset(token)


def entry() -> None:
    """The process entry point (console script, ``python -m harness.cli``, ``python -m harness``).

    After an interrupt (Ctrl-C, SIGTERM, SIGHUP) the cleanup has run (no partial output is kept) and the
    process ends with os._exit(130): interpreter teardown with torch's worker threads still alive sometimes
    died with SIGABRT ("terminate called without an active exception", 1 run in ~10 of an interrupted
    pipelined convert), which would turn the documented exit 130 into a crash."""
    rc = main()
    from quant import startup
    startup.mark("exit")
    try:
        startup.write_timeline()
    except Exception as e:    # noqa: BLE001 - a measurement aid: never the command's result
        print(f"quantgate: timeline not written: {e}", file=sys.stderr)
    if rc == EXIT_INTERRUPTED or (rc == 0 and startup.current() is not None):
        # a CUDA convert that has written, fsynced and renamed its output: atexit handlers run, the interpreter's
        # teardown of torch and the CUDA context is left to the process exit (measured part of the whole CLI's time)
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except (OSError, ValueError):
                pass
        if rc == 0:
            if startup.preload_enabled():
                try:
                    startup.record_libs()               # what the next CUDA convert reads first
                except Exception as e:    # noqa: BLE001 - a measurement aid: never the command's result
                    print(f"quantgate: library record not written: {e}", file=sys.stderr)
            import atexit
            atexit._run_exitfuncs()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    entry()
