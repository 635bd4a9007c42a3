"""THE one HTTP + websocket client for a ComfyUI server (issue 20): every talk with a server goes through
:class:`ComfyClient`, bounded in time and size.

* Every request has a connect timeout, an idle (per read) timeout and an **overall deadline**: a watchdog
  shuts the socket down when it passes, so a server trickling one byte every few seconds cannot hold a
  command (headers included).
* Bodies are capped (:data:`MAX_JSON_BYTES` for JSON, :data:`MAX_IMAGE_BYTES` for ``/view``), announced
  ``Content-Length`` included, before anything is read; JSON answers must say ``application/json`` and
  images ``image/*``; JSON is parsed with quantgate's bounded parser and validated against the schema of
  the endpoint (:mod:`quant.inputs.server`).
* The websocket is quantgate's own small RFC 6455 reader: a frame announcing more than
  :data:`MAX_FRAME_BYTES` (2^62, say) is refused at its header, fragments are capped, and every receive
  returns within 0.2 s, so :meth:`ComfyClient.run`'s render deadline is always checked.
* PNGs are decoded by Pillow with its decompression-bomb limit: a bomb is :class:`BadAnswer` (exit 2).

:meth:`ComfyClient.run` has an overall deadline after which it asks the server to ``/interrupt`` and
raises :class:`RenderTimeout`. A server that stops answering (or the process we started exiting) becomes
:class:`ServerDied`; nothing listening at the URL is :class:`ServerUnreachable` at the first request; a
node that raised is :class:`ExecutionError` naming the node and the exception; an answer that is not
what ComfyUI answers is :class:`BadAnswer` naming the URL and the field.
"""
from __future__ import annotations

import ast
import base64
import hashlib
import http.client
import io
import json
import os
import re
import socket
import ssl
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

import numpy as np

from quant.inputs import server as answers

from .errors import ComfyError, ExecutionError, PromptRejected, RenderTimeout, ServerDied, ServerUnreachable

CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 30.0
# overall seconds per request (headers + body); QUANTGATE_REQUEST_DEADLINE changes the default
REQUEST_DEADLINE = 120.0
MAX_JSON_BYTES = answers.MAX_JSON_BYTES
MAX_IMAGE_BYTES = 256 << 20
MAX_FRAME_BYTES = 32 << 20        # one websocket message (ComfyUI's binary previews are far smaller)
MAX_IMAGE_PIXELS = 64 * 1024 * 1024

_LOAD_RE = re.compile(r"unet (missing|unexpected): (\[.*\])")


class BadAnswer(ComfyError):
    """The server answered, but not what ComfyUI answers (wrong JSON type, too big, wrong content type,
    a decompression bomb): one line naming the URL and the problem (exit 2)."""


def parse_load_warnings(log_text: str) -> list[dict]:
    """``unet missing: [...]`` / ``unet unexpected: [...]`` lines of a ComfyUI log.

    ComfyUI only logs these (no error): a missing scale or an unrecognised key means the model in
    memory is not the model in the file."""
    out = []
    for m in _LOAD_RE.finditer(log_text):
        try:
            keys = ast.literal_eval(m.group(2)) if len(m.group(2)) < (4 << 20) else None
            keys = [str(k) for k in keys] if isinstance(keys, (list, tuple)) else [m.group(2)[:500]]
        except (ValueError, SyntaxError, MemoryError, RecursionError):
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


def decode_png(data: bytes, where: str = "image") -> np.ndarray:
    """HxWx3 uint8 RGB; anything Pillow cannot decode safely (a decompression bomb, more than
    :data:`MAX_IMAGE_PIXELS` pixels, a bad file) is :class:`BadAnswer`."""
    import warnings

    from PIL import Image, UnidentifiedImageError
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise BadAnswer(f"image of {w} x {h} pixels (more than {MAX_IMAGE_PIXELS:,}): a decompression bomb?",
                                    where)
                return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadAnswer(f"image refused: a decompression bomb ({str(e)[:120]})", where) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        raise BadAnswer(f"not a decodable image ({type(e).__name__})", where) from None


class _Watchdog:
    """Shuts ``sock`` down when ``seconds`` pass: a recv blocked on a trickling server returns."""

    def __init__(self, sock, seconds: float):
        self.sock, self.fired = sock, False
        self.timer = threading.Timer(max(0.0, seconds), self._fire)
        self.timer.daemon = True
        self.timer.start()

    def _fire(self):
        self.fired = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def cancel(self):
        self.timer.cancel()


def _snippet(data: bytes, n: int = 160) -> str:
    s = data[:n * 2].decode("utf-8", "replace")
    s = "".join(ch if ch.isprintable() else " " for ch in s)
    return s[:n].strip()


def _media(ctype: str | None) -> str:
    return (ctype or "").split(";", 1)[0].strip().lower()


class ComfyClient:
    def __init__(self, url: str, server=None, connect_timeout: float = CONNECT_TIMEOUT,
                 read_timeout: float = READ_TIMEOUT, request_deadline: float | None = None):
        url = url.rstrip("/")
        if "://" not in url:
            url = "http://" + url
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            raise ServerUnreachable(f"not an http(s) URL: {url[:200]!r}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ServerUnreachable(f"not an http(s) URL: {url[:200]!r}")
        self.url = url
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = port or (443 if parts.scheme == "https" else 80)
        self.base = parts.path.rstrip("/")
        self.server = server                 # the ComfyServer we started, if any (liveness + log)
        self.connect_timeout, self.read_timeout = float(connect_timeout), float(read_timeout)
        self.timeout = (self.connect_timeout, self.read_timeout)
        if request_deadline is None:
            try:
                request_deadline = float(os.environ.get("QUANTGATE_REQUEST_DEADLINE", REQUEST_DEADLINE))
            except ValueError:
                request_deadline = REQUEST_DEADLINE
        self.request_deadline = request_deadline if 0 < request_deadline < 1e6 else REQUEST_DEADLINE
        self._answered = False

    # -- low level --------------------------------------------------------------------------
    def _alive(self):
        if self.server is not None:
            self.server.check_alive()

    def _connect(self, timeout: float):
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _http(self, method: str, path: str, *, body=None, deadline: float | None = None,
              read_timeout: float | None = None, max_bytes: int = MAX_JSON_BYTES) -> tuple[int, str, bytes]:
        """One request: (status, media type, body bytes), bounded by the connect timeout, the idle timeout
        (``read_timeout``), the overall ``deadline`` (seconds) and ``max_bytes``."""
        self._alive()
        read_timeout = self.read_timeout if read_timeout is None else float(read_timeout)
        total = self.request_deadline if deadline is None else max(0.5, float(deadline))
        t0 = time.monotonic()
        conn = self._connect(min(self.connect_timeout, total))
        try:
            conn.connect()
        except OSError as e:
            conn.close()
            self._alive()
            if self._answered:
                raise ServerDied(f"ComfyUI at {self.url} stopped answering ({_short(e)})") from None
            raise ServerUnreachable(f"cannot reach ComfyUI at {self.url} ({_short(e)})") from None
        conn.sock.settimeout(read_timeout)
        wd = _Watchdog(conn.sock, total - (time.monotonic() - t0))
        what = f"{method} {path.split('?', 1)[0]}"
        try:
            headers = {"Accept": "application/json, image/*;q=0.9, */*;q=0.5", "Connection": "close",
                       "User-Agent": "quantgate"}
            data = None
            if body is not None:
                data = json.dumps(body).encode("utf-8")
                headers["Content-Type"] = "application/json"
            conn.request(method, self.base + path, body=data, headers=headers)
            resp = conn.getresponse()
            n = resp.getheader("Content-Length")
            if n is not None:
                try:
                    n = int(n.strip()) if len(n) < 40 else None
                except ValueError:
                    n = None
                if n is None or n < 0:
                    raise BadAnswer(f"{what}: invalid Content-Length", self.url)
                if n > max_bytes:
                    raise BadAnswer(f"{what}: the answer announces {n:,} bytes; at most {max_bytes:,} are read",
                                    self.url)
            chunks, size = [], 0
            while True:
                b = resp.read1(1 << 16)
                if not b:
                    break
                size += len(b)
                if size > max_bytes:
                    raise BadAnswer(f"{what}: the answer is larger than {max_bytes:,} bytes", self.url)
                chunks.append(b)
                if wd.fired:
                    break
            if wd.fired:
                raise ServerDied(f"ComfyUI at {self.url} did not finish answering {what} within {total:g} s "
                                 "(a server trickling its answer?)")
            status, ctype = resp.status, _media(resp.getheader("Content-Type"))
        except BadAnswer:
            raise
        except (TimeoutError, socket.timeout):
            self._alive()
            if wd.fired:
                raise ServerDied(f"ComfyUI at {self.url} did not finish answering {what} within {total:g} s "
                                 "(a server trickling its answer?)") from None
            raise ServerDied(f"ComfyUI at {self.url} did not answer {what} within {read_timeout:g} s") from None
        except (OSError, http.client.HTTPException, ValueError) as e:
            self._alive()
            if wd.fired:
                raise ServerDied(f"ComfyUI at {self.url} did not finish answering {what} within {total:g} s "
                                 "(a server trickling its answer?)") from None
            raise ServerDied(f"ComfyUI at {self.url} stopped answering {what} ({_short(e)})") from None
        finally:
            wd.cancel()
            conn.close()
        self._answered = True
        return status, ctype, b"".join(chunks)

    def _json(self, method: str, path: str, model, *, wrap: str | None = None, body=None,
              deadline: float | None = None, read_timeout: float | None = None, ok=(200,)):
        status, ctype, data = self._http(method, path, body=body, deadline=deadline, read_timeout=read_timeout)
        what = f"{method} {path.split('?', 1)[0]}"
        if status not in ok:
            raise ServerDied(f"ComfyUI at {self.url}: {what} answered HTTP {status}: {_snippet(data)}")
        if ctype != "application/json":
            raise BadAnswer(f"{what}: answered {ctype[:60] or 'no content type'}, not application/json "
                            f"(is {self.url} a ComfyUI server?)", self.url)
        return answers.answer(data, self.url + path.split("?", 1)[0], model, error=BadAnswer,
                              what=f"{what} answer", wrap=wrap)

    def get_json(self, path: str, params: dict | None = None, **kw):
        """GET a JSON route (a custom node's, e.g. ``/quantgate/memory``): bounded, any JSON object."""
        q = f"?{urlencode(params)}" if params else ""
        return self._json("GET", path + q, answers.AnyObject, wrap="value", **kw)

    def extensions(self) -> list[str]:
        """The web extensions (front-end scripts) the server serves, e.g. a node pack's ``/extensions/<pack>/x.js``."""
        return self._json("GET", "/extensions", answers.Extensions, wrap="value")

    def post(self, path: str, body: dict, *, deadline: float | None = None, read_timeout: float | None = None) -> int:
        status, _, _ = self._http("POST", path, body=body, deadline=deadline, read_timeout=read_timeout,
                                  max_bytes=1 << 20)
        return status

    # -- endpoints --------------------------------------------------------------------------
    def system_stats(self) -> dict:
        return self._json("GET", "/system_stats", answers.SystemStats)

    def version(self) -> str:
        return str((self.system_stats().get("system") or {}).get("comfyui_version", "unknown"))

    def object_info(self, node_class: str | None = None) -> dict:
        path = "/object_info" + (f"/{_quote(node_class)}" if node_class else "")
        return self._json("GET", path, answers.ObjectInfo, wrap="nodes")

    def queue(self) -> dict:
        return self._json("GET", "/queue", answers.Queue)

    def history(self, prompt_id: str, *, deadline: float | None = None) -> dict:
        h = self._json("GET", f"/history/{_quote(prompt_id)}", answers.History, wrap="entries", deadline=deadline)
        return h.get(prompt_id) or {}

    def interrupt(self, prompt_id: str | None = None) -> None:
        body = {"prompt_id": prompt_id} if prompt_id else {}
        try:
            self._http("POST", "/interrupt", body=body, read_timeout=5, deadline=10, max_bytes=1 << 20)
        except ComfyError:
            pass

    def free(self, unload_models: bool = True, free_memory: bool = True, *, deadline: float | None = None) -> None:
        self._http("POST", "/free", body={"unload_models": unload_models, "free_memory": free_memory},
                   deadline=deadline, max_bytes=1 << 20)

    def view(self, filename: str, subfolder: str = "", type: str = "output", *, accept: str | None = None,
             deadline: float | None = None, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
        """A file the server wrote (``/view``); ``accept``: the media type prefix it must have (``image/``)."""
        q = urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        status, ctype, data = self._http("GET", f"/view?{q}", deadline=deadline, max_bytes=max_bytes)
        if status != 200:
            raise ServerDied(f"ComfyUI at {self.url}: /view {filename[:80]!r} answered HTTP {status}")
        if accept and not ctype.startswith(accept):
            raise BadAnswer(f"GET /view {filename[:80]!r}: answered {ctype[:60] or 'no content type'}, "
                            f"not {accept}*", self.url)
        return data

    def remote_log(self) -> list | None:
        """The server's in-memory log (``/internal/logs/raw``, last 300 entries), for servers we did
        not start; None where the route does not exist."""
        try:
            status, ctype, data = self._http("GET", "/internal/logs/raw", read_timeout=5, deadline=15)
            if status != 200 or ctype != "application/json":
                return None
            obj = answers.answer(data, self.url + "/internal/logs/raw", answers.Logs, error=BadAnswer,
                                 what="GET /internal/logs/raw answer")
            entries = obj.get("entries")
            return entries if isinstance(entries, list) else None
        except (ServerDied, ServerUnreachable, BadAnswer):
            return None

    def queue_prompt(self, workflow: dict, client_id: str, *, deadline: float | None = None) -> str:
        status, ctype, data = self._http("POST", "/prompt", body={"prompt": workflow, "client_id": client_id},
                                         deadline=deadline)
        body: dict = {}
        if ctype == "application/json":
            try:
                body = answers.answer(data, self.url + "/prompt", answers.PromptAnswer, error=BadAnswer,
                                      what="POST /prompt answer")
            except BadAnswer:
                if status == 200:
                    raise
                body = {}
        elif status == 200:
            raise BadAnswer(f"POST /prompt: answered {ctype[:60] or 'no content type'}, not application/json", self.url)
        if status == 400 or body.get("error"):
            raise PromptRejected(describe_rejection(body), body)
        if status != 200 or not body.get("prompt_id"):
            raise ServerDied(f"ComfyUI at {self.url}: POST /prompt answered HTTP {status}: {_snippet(data)}")
        return str(body["prompt_id"])

    # -- one render -------------------------------------------------------------------------
    def _ws_connect(self, client_id: str, deadline: float):
        try:
            return _WebSocket.connect(self, f"{self.base}/ws?clientId={client_id}", min(CONNECT_TIMEOUT, deadline))
        except (OSError, BadAnswer, http.client.HTTPException):
            return None      # progress is optional; /history polling is the source of truth

    def run(self, workflow: dict, *, timeout: float = 300.0, on_progress=None, poll: float = 0.5) -> RunResult:
        """Queue ``workflow``, wait for it (everything bounded by ``timeout``), fetch its images."""
        t0 = time.monotonic()
        deadline = t0 + timeout

        def left(floor: float = 0.5) -> float:
            return max(floor, deadline - time.monotonic())

        def expired():
            if time.monotonic() > deadline:
                if pid is not None:
                    self.interrupt(pid)
                raise RenderTimeout(f"render did not finish within {timeout:g} s; asked ComfyUI to interrupt it")
        pid = None
        log_from = self.server.log_size() if self.server is not None else None
        remote_before = self.remote_log() if self.server is None else None
        cid = uuid.uuid4().hex
        ws = self._ws_connect(cid, left())
        try:
            pid = self.queue_prompt(workflow, cid, deadline=left())
            next_poll = 0.0
            hist: dict = {}
            while True:
                self._alive()
                expired()
                if ws is not None:
                    try:
                        msg = ws.recv(0.2)
                    except BadAnswer:
                        raise
                    except (OSError, ValueError, http.client.HTTPException):
                        ws, msg = None, None
                    if isinstance(msg, str):
                        m = _ws_message(msg)
                        d = (m or {}).get("data") or {}
                        if m is not None and d.get("prompt_id") in (None, pid):
                            if m.get("type") == "progress" and on_progress:
                                v, mx = d.get("value"), d.get("max")
                                if type(v) is int and type(mx) is int and 0 <= v <= mx < 1 << 31:
                                    on_progress(v, mx, d.get("node") if isinstance(d.get("node"), str) else None)
                            elif m.get("type") in ("execution_error", "execution_success",
                                                   "execution_interrupted") or (
                                    m.get("type") == "executing" and d.get("node") is None
                                    and d.get("prompt_id") == pid):
                                next_poll = 0.0
                else:
                    time.sleep(min(poll, 0.1))
                expired()
                if time.monotonic() >= next_poll:
                    hist = self.history(pid, deadline=min(self.request_deadline, left()))
                    st = hist.get("status") or {}
                    if st.get("completed") or st.get("status_str") in ("success", "error"):
                        break
                    next_poll = time.monotonic() + poll
        finally:
            if ws is not None:
                ws.close()
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
            raise ServerDied(f"prompt {pid} ended with status {str(hist.get('status'))[:200]}")
        images = []
        for node_id, out in (hist.get("outputs") or {}).items():
            for im in out.get("images") or []:
                data = self.view(im["filename"], im.get("subfolder", ""), im.get("type", "output"), accept="image/",
                                 deadline=max(10.0, deadline - time.monotonic()))
                images.append((str(node_id), decode_png(data, f"{self.url}/view?filename={im['filename'][:80]}")))
        return RunResult(pid, images, time.monotonic() - t0, hist, log, parse_load_warnings(log))


def _ws_message(text: str) -> dict | None:
    """A websocket text message as {type, data}; None for anything else (progress is optional)."""
    try:
        return answers.answer(text, "ws", answers.WsMessage, error=BadAnswer, what="websocket message",
                              max_bytes=MAX_FRAME_BYTES)
    except BadAnswer:
        return None


def _quote(s: str) -> str:
    from urllib.parse import quote
    return quote(str(s), safe="")


class _WebSocket:
    """A minimal RFC 6455 client for ComfyUI's ``/ws``: reads frames incrementally from a buffer (a receive
    never blocks more than its timeout), refuses a frame or message larger than :data:`MAX_FRAME_BYTES` at
    its header, answers pings, never sends anything else."""
    GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, sock, url: str, buf: bytes = b""):
        self.sock, self.url, self.buf = sock, url, bytearray(buf)
        self.frags: list[bytes] = []
        self.frag_op = 0
        self.frag_size = 0

    @classmethod
    def connect(cls, client: ComfyClient, path: str, timeout: float) -> "_WebSocket":
        sock = socket.create_connection((client.host, client.port), timeout=timeout)
        try:
            if client.scheme == "https":
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=client.host)
            key = base64.b64encode(os.urandom(16))
            req = (f"GET {path} HTTP/1.1\r\nHost: {client.host}:{client.port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n")
            sock.sendall(req.encode("ascii"))
            end = time.monotonic() + timeout
            head = b""
            while b"\r\n\r\n" not in head:
                if time.monotonic() > end or len(head) > 16384:
                    raise BadAnswer("websocket handshake: no complete answer", client.url)
                sock.settimeout(max(0.05, end - time.monotonic()))
                b = sock.recv(4096)
                if not b:
                    raise BadAnswer("websocket handshake: connection closed", client.url)
                head += b
            head, rest = head.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            if not re.match(r"HTTP/1\.[01] 101\b", lines[0]):
                raise BadAnswer("websocket handshake refused", client.url)
            hdrs = {ln.split(":", 1)[0].strip().lower(): ln.split(":", 1)[1].strip() for ln in lines[1:] if ":" in ln}
            want = base64.b64encode(hashlib.sha1(key + cls.GUID).digest()).decode()
            if hdrs.get("sec-websocket-accept") != want:
                raise BadAnswer("websocket handshake: wrong Sec-WebSocket-Accept", client.url)
            return cls(sock, client.url, rest)
        except BaseException:
            sock.close()
            raise

    def _frame(self):
        """One complete frame from the buffer: (fin, opcode, payload) or None when incomplete."""
        b = self.buf
        if len(b) < 2:
            return None
        fin, op, masked, n = b[0] & 0x80, b[0] & 0x0F, b[1] & 0x80, b[1] & 0x7F
        i = 2
        if n == 126:
            if len(b) < 4:
                return None
            n, i = struct.unpack(">H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, i = struct.unpack(">Q", b[2:10])[0], 10
        if masked:
            raise BadAnswer("websocket: the server sent a masked frame", self.url)
        if op >= 8 and (n > 125 or not fin):
            raise BadAnswer("websocket: an invalid control frame", self.url)
        if n > MAX_FRAME_BYTES or self.frag_size + n > MAX_FRAME_BYTES:
            raise BadAnswer(f"websocket: a frame announces {n:,} bytes; at most {MAX_FRAME_BYTES:,} are read",
                            self.url)
        if len(b) < i + n:
            return None
        payload = bytes(b[i:i + n])
        del b[:i + n]
        return bool(fin), op, payload

    def _send(self, op: int, payload: bytes = b""):
        mask = os.urandom(4)
        head = bytes([0x80 | op, 0x80 | len(payload)]) + mask
        self.sock.sendall(head + bytes(c ^ mask[i % 4] for i, c in enumerate(payload)))

    def recv(self, timeout: float):
        """The next complete message (str for text, bytes for binary) or None when none arrived in ``timeout``."""
        end = time.monotonic() + timeout
        while True:
            fr = self._frame()
            while fr is not None:
                fin, op, payload = fr
                if op == 9:
                    self._send(10, payload)
                elif op == 8:
                    raise OSError("websocket closed by the server")
                elif op in (1, 2) or (op == 0 and self.frag_op):
                    if op in (1, 2):
                        if self.frag_op:
                            raise BadAnswer("websocket: a new message inside a fragmented one", self.url)
                        self.frag_op = op
                    self.frags.append(payload)
                    self.frag_size += len(payload)
                    if fin:
                        data, kind = b"".join(self.frags), self.frag_op
                        self.frags, self.frag_op, self.frag_size = [], 0, 0
                        if kind == 1:
                            try:
                                return data.decode("utf-8")
                            except UnicodeDecodeError:
                                raise BadAnswer("websocket: a text message that is not UTF-8", self.url) from None
                        return data
                elif op != 10:
                    raise BadAnswer(f"websocket: unknown opcode {op}", self.url)
                fr = self._frame()
            rest = end - time.monotonic()
            if rest <= 0:
                return None
            self.sock.settimeout(rest)
            try:
                b = self.sock.recv(1 << 16)
            except (TimeoutError, socket.timeout):
                return None
            if not b:
                raise OSError("websocket closed by the server")
            self.buf += b

    def close(self):
        try:
            self._send(8, b"\x03\xe8")
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


def _execution_error(hist: dict, pid: str) -> ExecutionError | None:
    st = hist.get("status") or {}
    for item in st.get("messages") or []:
        if isinstance(item, (list, tuple)) and len(item) == 2 and item[0] == "execution_error":
            d = item[1] if isinstance(item[1], dict) else {}
            return ExecutionError(_s(d.get("node_id", "?")), _s(d.get("node_type", "?")),
                                  _s(d.get("exception_type", "?")), _s(d.get("exception_message", ""), 4000), pid)
        if isinstance(item, (list, tuple)) and len(item) == 2 and item[0] == "execution_interrupted":
            d = item[1] if isinstance(item[1], dict) else {}
            return ExecutionError(_s(d.get("node_id", "?")), _s(d.get("node_type", "?")), "Interrupted",
                                  "the prompt was interrupted", pid)
    if st.get("status_str") == "error":
        return ExecutionError("?", "?", "error", "ComfyUI reported an error without details", pid)
    return None


def _s(v, n: int = 200) -> str:
    return (v if isinstance(v, str) else str(v))[:n]


def describe_rejection(body: dict) -> str:
    """ComfyUI's 400 answer to ``POST /prompt`` in one line; any field of any type (an ``error`` that is a
    string, ``node_errors`` that are not objects) is described, never a crash."""
    body = body if isinstance(body, dict) else {}
    err = body.get("error")
    if isinstance(err, dict):
        msg = _s(err.get("message") or "prompt rejected")
        details = err.get("details")
    else:
        msg, details = (_s(err) if err else "prompt rejected"), None
    parts = []
    ne = body.get("node_errors")
    for nid, e in (ne.items() if isinstance(ne, dict) else ()):
        if not isinstance(e, dict):
            parts.append(f"node {_s(nid, 40)}: {_s(e)}")
            continue
        errs = e.get("errors") if isinstance(e.get("errors"), list) else []
        for x in errs[:20]:
            det = (x.get("details") or x.get("message") or "") if isinstance(x, dict) else x
            parts.append(f"node {_s(nid, 40)} ({_s(e.get('class_type', '?'), 80)}): {_s(det)}")
    if not parts and details:
        parts.append(_s(details))
    return f"ComfyUI rejected the workflow: {msg}" + (f" - {'; '.join(parts)[:400]}" if parts else "")


def _short(e: Exception) -> str:
    s = str(e)
    m = re.search(r"\[Errno -?\d+\][^')\"]*", s)
    if m:
        return m.group(0).strip()
    return s[:160]
