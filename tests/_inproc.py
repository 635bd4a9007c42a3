"""``quantgate ARGS`` inside the test process (no interpreter and torch start-up per call)."""
from __future__ import annotations

import contextlib
import io
import os


def run_main(*args) -> tuple[int, str, str]:
    """Exit code, stdout, stderr. Anything but a handled error escapes as an exception (a test
    failure: a user would have seen a traceback)."""
    from harness.cli import main
    out, err = io.StringIO(), io.StringIO()
    old = os.environ.pop("QUANTGATE_DEBUG", None)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main([str(a) for a in args])
    finally:
        if old is not None:
            os.environ["QUANTGATE_DEBUG"] = old
    return rc, out.getvalue(), err.getvalue()


def one_error_line(rc: int, err: str, code: int = 2) -> str:
    assert rc == code, (rc, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("quantgate: "), err[:2000]
    return lines[0]


class Done:
    """A finished call, shaped like subprocess.CompletedProcess (returncode, stdout, stderr)."""

    def __init__(self, rc, out, err):
        self.returncode, self.stdout, self.stderr = rc, out, err


def cli_runner(capsys):
    """`run(*args, subprocess=False)`: `quantgate ARGS` in this process (same parser, exit codes and
    messages, without a new interpreter's start-up); ``subprocess=True`` runs the real process (one case per
    file covers that path)."""
    from harness.cli import main as cli_main
    from tests.conftest import run_cli

    def run(*args, subprocess=False):
        if subprocess:
            return run_cli(*args)
        capsys.readouterr()
        rc = cli_main([str(a) for a in args])
        cap = capsys.readouterr()
        return Done(rc, cap.out, cap.err)
    return run
