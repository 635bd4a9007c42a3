"""HTTP + websocket client for a ComfyUI server, with bounded timeouts everywhere.

Every call has a connect and read timeout; :meth:`ComfyClient.run` has an overall deadline after
which it asks the server to ``/interrupt`` and raises :class:`RenderTimeout`. A server that stops
answering (or the process we started exiting) becomes :class:`ServerDied`; nothing listening at the
URL is :class:`ServerUnreachable` at the first request; a node that raised is
:class:`ExecutionError` naming the node and the exception.
"""
from __future__ import annotations

import ast
import io
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

import numpy as np
import requests

from .errors import ExecutionError, PromptRejected, RenderTimeout, ServerDied, ServerUnreachable

CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 30.0

_LOAD_RE = re.compile(r"unet (missing|unexpected): (\[.*\])")


def parse_load_warnings(log_text: str) -> list[dict]:
    """``unet missing: [...]`` / ``unet unexpected: [...]`` lines of a ComfyUI log.

    ComfyUI only logs these (no error): a missing scale or an unrecognised key means the model in
    memory is not the model in the file."""
    out = []
    for m in _LOAD_RE.finditer(log_text):
        try:
            keys = ast.literal_eval(m.group(2))
            keys = [str(k) for k in keys] if isinstance(keys, (list, tuple)) else [m.group(2)]
        except (ValueError, SyntaxError):
            keys = [m.group(2)[:500]]
        out.append({"kind": m.group(1), "keys": keys})
    return out


@dataclass
class RunResult:
    prompt_id: str
    images: list[tuple[str, np.ndarray]]          # (output node id, HxWx3 uint8 RGB)
    seconds: float
    history: dict
    log: str = ""                                   # server log lines written during the run ("" if not ours)
    load_warnings: list[dict] = field(default_factory=list)


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


class ComfyClient:
    def __init__(self, url: str, server=None, connect_timeout: float = CONNECT_TIMEOUT,
                 read_timeout: float = READ_TIMEOUT):
        url = url.rstrip("/")
        if "://" not in url:
            url = "http://" + url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServerUnreachable(f"not an http(s) URL: {url!r}")
        self.url = url
        self.server = server                 # the ComfyServer we started, if any (liveness + log)
        self.timeout = (connect_timeout, read_timeout)
        self.session = requests.Session()
        self.session.trust_env = False       # never route 127.0.0.1 through a proxy
        self._answered = False

    # -- low level --------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kw) -> requests.Response:
        if self.server is not None:
            self.server.check_alive()
        kw.setdefault("timeout", self.timeout)
        try:
            r = self.session.request(method, self.url + path, **kw)
        except requests.ConnectionError as e:
            if self.server is not None:
                self.server.check_alive()
            if self._answered:
                raise ServerDied(f"ComfyUI at {self.url} stopped answering ({_short(e)})") from None
            raise ServerUnreachable(f"cannot reach ComfyUI at {self.url} ({_short(e)})") from None
        except requests.Timeout:
            if self.server is not None:
                self.server.check_alive()
            raise ServerDied(f"ComfyUI at {self.url} did not answer {method} {path} within "
                             f"{kw['timeout'] if not isinstance(kw['timeout'], tuple) else kw['timeout'][1]} s") from None
        except requests.RequestException as e:
            raise ServerUnreachable(f"request to {self.url}{path} failed ({_short(e)})") from None
        self._answered = True
        return r

    def _json(self, method: str, path: str, **kw):
        r = self._request(method, path, **kw)
        if r.status_code != 200:
            raise ServerDied(f"ComfyUI {method} {path} answered HTTP {r.status_code}: {r.text[:200]}")
        try:
            return r.json()
        except ValueError:
            raise ServerDied(f"ComfyUI {method} {path} did not answer JSON (is {self.url} a ComfyUI server?)") from None

    # -- endpoints --------------------------------------------------------------------------
    def system_stats(self) -> dict:
        return self._json("GET", "/system_stats")

    def version(self) -> str:
        return str(self.system_stats().get("system", {}).get("comfyui_version", "unknown"))

    def object_info(self, node_class: str | None = None) -> dict:
        return self._json("GET", "/object_info" + (f"/{node_class}" if node_class else ""))

    def queue(self) -> dict:
        return self._json("GET", "/queue")

    def history(self, prompt_id: str) -> dict:
        return self._json("GET", f"/history/{prompt_id}").get(prompt_id) or {}

    def interrupt(self, prompt_id: str | None = None) -> None:
        body = {"prompt_id": prompt_id} if prompt_id else {}
        try:
            self._request("POST", "/interrupt", json=body, timeout=(CONNECT_TIMEOUT, 5))
        except (ServerDied, ServerUnreachable):
            pass

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        self._request("POST", "/free", json={"unload_models": unload_models, "free_memory": free_memory})

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        q = urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        r = self._request("GET", f"/view?{q}")
        if r.status_code != 200:
            raise ServerDied(f"ComfyUI /view {filename} answered HTTP {r.status_code}")
        return r.content

    def remote_log(self) -> list | None:
        """The server's in-memory log (``/internal/logs/raw``, last 300 entries), for servers we did
        not start; None where the route does not exist."""
        try:
            r = self._request("GET", "/internal/logs/raw", timeout=(CONNECT_TIMEOUT, 5))
            if r.status_code != 200:
                return None
            entries = r.json().get("entries")
            return entries if isinstance(entries, list) else None
        except (ServerDied, ServerUnreachable, ValueError, AttributeError):
            return None

    def queue_prompt(self, workflow: dict, client_id: str) -> str:
        r = self._request("POST", "/prompt", json={"prompt": workflow, "client_id": client_id})
        try:
            body = r.json()
        except ValueError:
            body = {}
        if r.status_code == 400 or body.get("error"):
            raise PromptRejected(describe_rejection(body), body)
        if r.status_code != 200 or "prompt_id" not in body:
            raise ServerDied(f"ComfyUI POST /prompt answered HTTP {r.status_code}: {r.text[:200]}")
        return body["prompt_id"]

    # -- one render -------------------------------------------------------------------------
    def _ws_connect(self, client_id: str):
        try:
            import websocket
        except ImportError:
            return None
        p = urlsplit(self.url)
        scheme = "wss" if p.scheme == "https" else "ws"
        try:
            ws = websocket.create_connection(f"{scheme}://{p.netloc}/ws?clientId={client_id}",
                                             timeout=CONNECT_TIMEOUT, suppress_origin=True)
            ws.settimeout(0.2)
            return ws
        except Exception:
            return None      # progress is optional; /history polling is the source of truth

    def run(self, workflow: dict, *, timeout: float = 300.0, on_progress=None, poll: float = 0.5) -> RunResult:
        """Queue ``workflow``, wait for it (bounded by ``timeout``), fetch its images."""
        import websocket
        t0 = time.monotonic()
        log_from = self.server.log_size() if self.server is not None else None
        remote_before = self.remote_log() if self.server is None else None
        cid = uuid.uuid4().hex
        ws = self._ws_connect(cid)
        try:
            pid = self.queue_prompt(workflow, cid)
            deadline = t0 + timeout
            next_poll = 0.0
            hist: dict = {}
            while True:
                now = time.monotonic()
                if self.server is not None:
                    self.server.check_alive()
                if now > deadline:
                    self.interrupt(pid)
                    raise RenderTimeout(f"render did not finish within {timeout:g} s; asked ComfyUI to interrupt it")
                if ws is not None:
                    try:
                        msg = ws.recv()
                        if isinstance(msg, str):
                            m = json.loads(msg)
                            d = m.get("data") or {}
                            if d.get("prompt_id") in (None, pid):
                                if m.get("type") == "progress" and on_progress:
                                    on_progress(int(d.get("value", 0)), int(d.get("max", 0)), d.get("node"))
                                elif m.get("type") in ("execution_error", "execution_success",
                                                       "execution_interrupted") or (
                                        m.get("type") == "executing" and d.get("node") is None
                                        and d.get("prompt_id") == pid):
                                    next_poll = 0.0
                    except websocket.WebSocketTimeoutException:
                        pass
                    except (websocket.WebSocketException, OSError, ValueError):
                        ws = None
                else:
                    time.sleep(min(poll, 0.1))
                if time.monotonic() >= next_poll:
                    hist = self.history(pid)
                    st = hist.get("status") or {}
                    if st.get("completed") or st.get("status_str") in ("success", "error"):
                        break
                    next_poll = time.monotonic() + poll
        finally:
            if ws is not None:
                try:
                    ws.close()
                except Exception:
                    pass
        log = ""
        if self.server is not None and log_from is not None:
            time.sleep(0.05)
            log = self.server.log_text(since=log_from)
        elif remote_before is not None:
            after = self.remote_log() or []
            last = remote_before[-1] if remote_before else None
            idx = next((i for i in range(len(after) - 1, -1, -1) if after[i] == last), -1) if last else -1
            log = "".join(str(e.get("m", "")) for e in after[idx + 1:] if isinstance(e, dict))
        err = _execution_error(hist, pid)
        if err is not None:
            err.log = log
            raise err
        if (hist.get("status") or {}).get("status_str") != "success":
            raise ServerDied(f"prompt {pid} ended with status {hist.get('status')!r}")
        images = []
        for node_id, out in (hist.get("outputs") or {}).items():
            for im in out.get("images") or []:
                images.append((str(node_id), decode_png(self.view(im["filename"], im.get("subfolder", ""),
                                                                    im.get("type", "output")))))
        return RunResult(pid, images, time.monotonic() - t0, hist, log, parse_load_warnings(log))


def _execution_error(hist: dict, pid: str) -> ExecutionError | None:
    st = hist.get("status") or {}
    for item in st.get("messages") or []:
        if isinstance(item, (list, tuple)) and len(item) == 2 and item[0] == "execution_error":
            d = item[1] or {}
            return ExecutionError(d.get("node_id", "?"), d.get("node_type", "?"), d.get("exception_type", "?"),
                                  d.get("exception_message", ""), pid)
        if isinstance(item, (list, tuple)) and len(item) == 2 and item[0] == "execution_interrupted":
            d = item[1] or {}
            return ExecutionError(d.get("node_id", "?"), d.get("node_type", "?"), "Interrupted",
                                  "the prompt was interrupted", pid)
    if st.get("status_str") == "error":
        return ExecutionError("?", "?", "error", "ComfyUI reported an error without details", pid)
    return None


def describe_rejection(body: dict) -> str:
    err = body.get("error") or {}
    msg = err.get("message") or "prompt rejected"
    parts = []
    for nid, ne in (body.get("node_errors") or {}).items():
        for e in ne.get("errors") or []:
            det = e.get("details") or e.get("message") or ""
            parts.append(f"node {nid} ({ne.get('class_type', '?')}): {det}")
    if not parts and err.get("details"):
        parts.append(str(err["details"]))
    return f"ComfyUI rejected the workflow: {msg}" + (f" - {'; '.join(parts)[:400]}" if parts else "")


def _short(e: Exception) -> str:
    s = str(e)
    m = re.search(r"\[Errno -?\d+\][^')\"]*", s)
    if m:
        return m.group(0).strip()
    return s[:160]
