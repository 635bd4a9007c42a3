"""Faults end in a clear failure within seconds, never a hang, and never leave a server process:
unreachable URL, a server that accepts but never answers, a render timeout (then /interrupt),
the server killed mid-render, a server that cannot start, Ctrl-C on `quantgate comfy start`."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from harness.comfy.client import ComfyClient
from harness.comfy.errors import RenderTimeout, ServerDied, ServerStartError, ServerUnreachable
from harness.comfy.server import ComfyServer, free_port, prepare_embedded
from harness.render.workflow import Workflow

ROOT = Path(__file__).resolve().parents[3]
LONG = {"steps": 10000, "cfg": 1.0, "sampler": "euler", "scheduler": "simple"}   # minutes if not stopped


def _long_wf(session_or_vae, model_name, size=512):
    vae = session_or_vae if isinstance(session_or_vae, str) else session_or_vae.vae()
    return Workflow.from_arg(None, None).build(model_name, 1, size, size, dict(LONG, vae=vae), "long")


def _group_alive(pgid: int) -> list:
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return out


def test_unreachable_url_fails_fast():
    c = ComfyClient(f"http://127.0.0.1:{free_port()}")
    t = time.monotonic()
    with pytest.raises(ServerUnreachable, match="cannot reach ComfyUI at http://127.0.0.1"):
        c.system_stats()
    assert time.monotonic() - t < 5


def test_unreachable_url_cli_one_line_exit_2(cli, thin_source, tmp_path):
    t = time.monotonic()
    r = cli("gate", thin_source, "--source", thin_source, "--comfy-url", f"http://127.0.0.1:{free_port()}",
            "--out", tmp_path / "rep", timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("quantgate: cannot reach ComfyUI"), r.stderr
    assert "Traceback" not in r.stderr
    assert time.monotonic() - t < 60


def test_server_that_never_answers_times_out():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])        # accept, then say nothing
            except OSError:
                pass
    th = threading.Thread(target=accept, daemon=True)
    th.start()
    try:
        c = ComfyClient(f"http://127.0.0.1:{srv.getsockname()[1]}", read_timeout=1.0)
        t = time.monotonic()
        with pytest.raises(ServerDied, match="did not answer GET /system_stats"):
            c.system_stats()
        assert time.monotonic() - t < 5
    finally:
        stop.set()
        th.join(2)
        for s in conns:
            s.close()
        srv.close()


def test_render_timeout_interrupts_and_server_recovers(comfy_session, thin_source):
    c = comfy_session.client
    name = comfy_session.model(thin_source)
    t = time.monotonic()
    with pytest.raises(RenderTimeout, match="within 2 s; asked ComfyUI to interrupt"):
        c.run(_long_wf(comfy_session, name), timeout=2)
    assert time.monotonic() - t < 6
    deadline = time.monotonic() + 20                     # the interrupt really stopped it
    while time.monotonic() < deadline:
        q = c.queue()
        if not q["queue_running"] and not q["queue_pending"]:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the interrupted prompt is still running 20 s later")
    ok = c.run(Workflow.from_arg(None, None).build(name, 1, 64, 64, dict(LONG, steps=2, vae=comfy_session.vae()),
                                                     "after"), timeout=60)
    assert ok.images and ok.images[0][1].shape == (64, 64, 3)


def test_server_killed_mid_render(tmp_path, thin_source):
    from harness.render import models
    root = prepare_embedded()
    with pytest.raises(ServerDied, match="exited"):
        with ComfyServer(root, tmp_path / "base") as srv:
            pgid = os.getpgid(srv.proc.pid)
            name = srv.add_model(thin_source)
            vae = srv.add_model(models.reference_vae(root), "vae_approx", models.VAE_NAME)
            killer = threading.Timer(2.0, lambda: os.killpg(pgid, signal.SIGKILL))
            killer.start()
            t = time.monotonic()
            try:
                srv.client().run(_long_wf(vae, name), timeout=120)
            finally:
                killer.cancel()
                assert time.monotonic() - t < 10           # noticed within seconds of the kill
    assert not srv.alive() and _group_alive(pgid) == []


def test_server_that_cannot_start_is_reported_and_gone(tmp_path):
    root = tmp_path / "FakeComfy"
    (root / "comfy").mkdir(parents=True)
    (root / "main.py").write_text("import sys\nprint('RuntimeError: torch is broken here', flush=True)\nsys.exit(3)\n")
    t = time.monotonic()
    srv = ComfyServer(root, tmp_path / "base", startup_timeout=30)
    with pytest.raises(ServerStartError, match="exited with code 3 .*torch is broken here"):
        srv.start()
    assert time.monotonic() - t < 10 and not srv.alive()


def test_ctrl_c_on_comfy_start_leaves_no_server(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "harness.cli", "comfy", "start", "--no-models",
                          "--base", str(tmp_path / "base")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=env, cwd=ROOT, start_new_session=True,
                         # a runner started in the background ignores SIGINT, and children inherit that
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        url, deadline = None, time.monotonic() + 120
        for line in p.stdout:
            if " at http://127.0.0.1:" in line:
                url = line.split(" at ")[1].split()[0]
                break
            if time.monotonic() > deadline:
                break
        assert url, "comfy start did not report its URL"
        assert ComfyClient(url).system_stats()["system"]["comfyui_version"] == "0.3.75"
        server_pids = [c.pid for c in psutil.Process(p.pid).children(recursive=True)]
        assert server_pids
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=20) == 0
        time.sleep(0.3)
        left = [pid for pid in server_pids if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        assert left == []
        with pytest.raises(ServerUnreachable):
            ComfyClient(url).system_stats()
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


def test_killed_quantgate_takes_its_server_along(tmp_path):
    """Even SIGKILL (no finally, no atexit) of the process that started a server ends the server."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "harness.cli", "comfy", "start", "--no-models",
                          "--base", str(tmp_path / "base")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=env, cwd=ROOT)
    try:
        for line in p.stdout:
            if " at http://127.0.0.1:" in line:
                break
        server_pids = [c.pid for c in psutil.Process(p.pid).children(recursive=True)]
        assert server_pids
        p.kill()
        p.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(psutil.pid_exists(x) for x in server_pids):
            time.sleep(0.1)
        assert not any(psutil.pid_exists(x) and psutil.Process(x).status() != psutil.STATUS_ZOMBIE
                       for x in server_pids)
    finally:
        if p.poll() is None:
            p.kill()
