"""A lying ComfyUI: a real TCP server (raw sockets, one thread per connection) whose answers are chosen by
the test -- trickled headers, a body that never ends, a 2^62-byte websocket frame, JSON of the wrong type,
a PNG decompression bomb. It runs BESIDE the real embedded ComfyUI (which the normal-path tests use)."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import socket
import struct
import threading
import time
import zlib


def png_bomb(w: int = 40000, h: int = 40000) -> bytes:
    """A valid 1-bit greyscale PNG of w x h pixels that compresses to a few KB."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    row = b"\0" + b"\0" * ((w + 7) // 8)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def small_png() -> bytes:
    from PIL import Image
    b = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(b, format="PNG")
    return b.getvalue()


def http_answer(body: bytes | str, status: int = 200, ctype: str = "application/json", extra: str = "") -> bytes:
    if isinstance(body, str):
        body = body.encode()
    return (f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}"
            f"Connection: close\r\n\r\n").encode() + body


class Liar:
    """``routes``: {(method, path-without-query): handler(conn, request_head)} or a plain bytes answer.
    Unknown routes answer 404. ``with Liar(routes) as url: ...``"""

    def __init__(self, routes: dict):
        self.routes = routes
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        self.hits: list[tuple[str, str]] = []
        self.th = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __enter__(self):
        self.th.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
        self.th.join(2)

    def _serve(self):
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(c)
            threading.Thread(target=self._handle, args=(c,), daemon=True).start()

    def _handle(self, c: socket.socket):
        try:
            c.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                b = c.recv(4096)
                if not b:
                    return
                head += b
            head, _, rest = head.partition(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, target = line.split(" ")[:2]
            path = target.split("?", 1)[0]
            n = 0
            for ln in head.decode("latin-1").split("\r\n")[1:]:
                if ln.lower().startswith("content-length:"):
                    n = int(ln.split(":", 1)[1])
            while len(rest) < n:
                b = c.recv(65536)
                if not b:
                    break
                rest += b
            self.hits.append((method, path))
            h = self.routes.get((method, path))
            if h is None:
                c.sendall(http_answer("not found", 404, "text/plain"))
            elif isinstance(h, bytes):
                c.sendall(h)
            else:
                h(c, head.decode("latin-1"), self.stop)
        except OSError:
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass


def trickle(data: bytes, every: float):
    """A handler sending ``data`` one byte per ``every`` seconds (forever if data repeats)."""
    def h(c, head, stop):
        for i in range(len(data)):
            if stop.is_set():
                return
            c.sendall(data[i:i + 1])
            time.sleep(every)
    return h


def endless_body(ctype: str = "application/json", announce: int | None = 1 << 30):
    """Answer headers (announcing ``announce`` bytes, or chunked) then an endless fast body."""
    def h(c, head, stop):
        if announce is None:
            c.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            blob = b"1" * 65536
            piece = f"{len(blob):x}\r\n".encode() + blob + b"\r\n"
        else:
            c.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {announce}\r\n\r\n".encode())
            piece = b" " * 65536
        sent = 0
        while not stop.is_set() and sent < (2 << 30):
            c.sendall(piece)
            sent += len(piece)
    return h


def ws_giant_frame(length: int = 1 << 62, every: float = 0.1):
    """Accept the websocket handshake, then a binary frame announcing ``length`` bytes, one byte per ``every`` s."""
    def h(c, head, stop):
        key = next(ln.split(":", 1)[1].strip() for ln in head.split("\r\n") if ln.lower().startswith("sec-websocket-key"))
        acc = base64.b64encode(hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()).decode()
        c.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Accept: {acc}\r\n\r\n").encode())
        c.sendall(bytes([0x82, 127]) + struct.pack(">Q", length))
        while not stop.is_set():
            c.sendall(b"x")
            time.sleep(every)
    return h


def json_answer(obj, status: int = 200) -> bytes:
    return http_answer(json.dumps(obj), status)


def render_routes(view=None, ws=None, history_done: bool = True) -> dict:
    """Just enough of ComfyUI for ``ComfyClient.run``: a prompt id, a history (finished with one image or
    never finished), ``/view`` and ``/ws`` as given."""
    hist = {"p1": {"status": {"status_str": "success", "completed": True, "messages": []},
                   "outputs": {"9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}}}}
    routes = {("POST", "/prompt"): json_answer({"prompt_id": "p1", "number": 1, "node_errors": {}}),
              ("GET", "/history/p1"): json_answer(hist if history_done else {}),
              ("POST", "/interrupt"): http_answer(b"", 200, "text/plain"),
              ("GET", "/internal/logs/raw"): json_answer({"entries": []}),
              ("GET", "/view"): view if view is not None else http_answer(small_png(), 200, "image/png")}
    if ws is not None:
        routes[("GET", "/ws")] = ws
    return routes
