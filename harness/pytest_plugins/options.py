"""Command-line options shared by the format- and render-gate pytest plugins (defined once here), and where
the gate's tests come from.

Relative paths given to the gates' options are resolved against the directory the user ran from
(``QUANTGATE_CALLER_DIR``, set by ./qg, which runs pytest from the checkout), else pytest's own.

The gate's tests ship in the package (``gate_tests/``). An installed quantgate loads these plugins through its
``pytest11`` entry points; with ``--checkpoint`` and no test paths on the command line, the collection is the
gate's tests instead of the current directory (which may be a folder of model files), or the gate's tests
beside the project's own ``testpaths``. Without ``--checkpoint`` nothing is added, so a user's ordinary
``pytest`` never runs quantgate's tests; quantgate's checkout names the folder in its own ``testpaths``.

Outside a project (no pytest ini file, no ``--rootdir``) pytest guesses its rootdir from every path-looking word
of the command line, the model files given to ``--checkpoint`` / ``--source`` included -- the common ancestor
of the run directory and the models' folders, often ``/`` or the user's home -- and would write its
``.pytest_cache`` there and load any ``conftest.py`` between it and the tests. In that case a gate run keeps
pytest's cache off (no ``--lf``: nothing is written beside the user's files) and reads conftest files only
under the run directory; the report header says so."""
import os
from pathlib import Path

import pytest

PATH_OPTIONS = ("checkpoint", "source", "reference", "render_out", "render_policy", "workflow", "comfy_root",
                "comfy_python")
GATE_TESTS = Path(__file__).resolve().parent / "gate_tests"
MARKERS = (
    "format: format-gate checks of a checkpoint (pytest -m format --checkpoint CKPT [--source SRC] [--reference REF])",
    "render: render-gate checks in a real ComfyUI server (pytest -m render --checkpoint CKPT --source SRC)",
)


def pytest_addoption(parser):
    g = parser.getgroup("quantgate gates")
    g.addoption("--checkpoint", action="store", default=None, metavar="CKPT",
                help="checkpoint to check (pytest -m format / -m render): file, index.json or shard dir")
    g.addoption("--source", action="store", default=None, metavar="SRC",
                help="unquantized source checkpoint it was made from")


_GUESSED_ROOT: dict = {}


def _rootdir_guessed(config) -> bool:
    ns = config.known_args_namespace
    return bool(getattr(ns, "checkpoint", None)) and config.inipath is None and not getattr(ns, "rootdir", None)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    """A gate run outside a project: pytest's cache off, conftest files only under the run directory."""
    if not _rootdir_guessed(early_config):
        return
    pm = early_config.pluginmanager
    for name in ("stepwise", "cacheprovider"):      # stepwise needs the cache (pytest blocks both together)
        plugin = pm.get_plugin(name)
        if plugin is not None:
            pm.unregister(plugin, name)
            pm.set_blocked(name)
    early_config.known_args_namespace.confcutdir = str(early_config.invocation_params.dir)
    _GUESSED_ROOT[id(early_config)] = str(early_config.rootpath)


def pytest_report_header(config):
    root = _GUESSED_ROOT.get(id(config))
    if root is None:
        return None
    return [f"quantgate: no pytest ini file here; pytest's rootdir guess is {root} (from the model paths): "
            "its cache is off for this run, so nothing is written there"]


def _covers(arg: str, base: Path) -> bool:
    """Whether collecting ``arg`` (a path or node id from args/testpaths) already collects the gate's tests."""
    p = Path(arg.split("::")[0])
    p = (p if p.is_absolute() else base / p).resolve()
    return p == GATE_TESTS or GATE_TESTS.is_relative_to(p) or p.is_relative_to(GATE_TESTS)


def _add_gate_tests(config) -> None:
    if not config.getoption("checkpoint", None):
        return
    src = getattr(config, "args_source", None)
    if src is None or src == pytest.Config.ArgsSource.ARGS:
        return                              # the user named what to collect
    if src == pytest.Config.ArgsSource.INVOCATION_DIR:
        config.args = [str(GATE_TESTS)]     # not the current directory: it may be a folder of model files
    elif not any(_covers(a, config.invocation_params.dir) for a in config.args):
        config.args = [*config.args, str(GATE_TESTS)]


def pytest_configure(config):
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    _add_gate_tests(config)
    base = Path(os.environ.get("QUANTGATE_CALLER_DIR") or config.invocation_params.dir)
    for name in PATH_OPTIONS:
        v = getattr(config.option, name, None)
        if not isinstance(v, str) or not v or os.path.isabs(v):
            continue
        if name == "reference" and not (base / v).exists():
            continue                    # a golden manifest name such as kj/Wan2_2-..., not a path
        setattr(config.option, name, str((base / v).resolve()))
