"""The one client against a lying ComfyUI (tests/harness/comfy/liar.py, beside the real embedded server of
test_server.py / test_faults.py): every lie ends within its deadline as one ComfyError line (exit 2), with
bounded memory -- never a hang, never a traceback. Issue 20: before the client was rebuilt, the trickling
server hung `doctor`, the 1 GiB body took it to 2.1 GB RSS, the 2^62-byte websocket frame hung `gate`,
JSON of the wrong type and a 400 whose `error` is a string gave tracebacks, a PNG bomb was decoded."""
from __future__ import annotations

import json
import resource
import time

import pytest

from harness.comfy.client import BadAnswer, ComfyClient
from harness.comfy.errors import ComfyError, PromptRejected, RenderTimeout, ServerDied
from tests.harness.comfy.liar import (Liar, endless_body, http_answer, json_answer, png_bomb, render_routes, trickle,
                                      ws_giant_frame)

STATS = {"system": {"comfyui_version": "0.3.75", "python_version": "3.11"}, "devices": []}


def test_trickling_headers_end_at_the_request_deadline():
    ans = http_answer(json.dumps(STATS))
    with Liar({("GET", "/system_stats"): trickle(ans, 0.3)}) as liar:
        c = ComfyClient(liar.url, read_timeout=5, request_deadline=2)
        t = time.monotonic()
        with pytest.raises(ServerDied, match="did not finish answering GET /system_stats within 2 s"):
            c.system_stats()
        assert time.monotonic() - t < 4


@pytest.mark.parametrize("announce", [1 << 30, None], ids=["content-length-1GiB", "chunked-endless"])
def test_endless_body_is_capped_without_reading_it(announce):
    with Liar({("GET", "/object_info"): endless_body(announce=announce)}) as liar:
        c = ComfyClient(liar.url, request_deadline=30)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.monotonic()
        with pytest.raises(BadAnswer, match="bytes"):
            c.object_info()
        assert time.monotonic() - t < 20
        grew_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert grew_mib < 200, grew_mib      # the 64 MiB cap, not 1 GiB


@pytest.mark.parametrize("route,body,field", [
    ("/system_stats", [], "must be an object"),
    ("/system_stats", {"system": "x"}, "system"),
    ("/system_stats", {"system": {"comfyui_version": 5}}, "comfyui_version"),
    ("/system_stats", {"devices": {"a": 1}}, "devices"),
    ("/object_info", [1, 2], "nodes"),
    ("/object_info", {"KSampler": {"input": []}}, "input"),
])
def test_json_of_the_wrong_type_is_one_line_naming_the_url_and_field(route, body, field):
    with Liar({("GET", route): json_answer(body)}) as liar:
        c = ComfyClient(liar.url)
        with pytest.raises(BadAnswer) as e:
            c.system_stats() if route == "/system_stats" else c.object_info()
        msg = str(e.value)
        assert liar.url in msg and field in msg and "\n" not in msg, msg


def test_html_instead_of_json_is_refused():
    with Liar({("GET", "/system_stats"): http_answer("<html>hi</html>", 200, "text/html")}) as liar:
        with pytest.raises(BadAnswer, match="text/html, not application/json"):
            ComfyClient(liar.url).system_stats()


def test_history_of_the_wrong_type():
    with Liar({("GET", "/history/p1"): json_answer({"p1": {"status": 5}})}) as liar:
        with pytest.raises(BadAnswer, match="status"):
            ComfyClient(liar.url).history("p1")


@pytest.mark.parametrize("body", [{"error": "a string"}, {"error": {"message": 5}, "node_errors": {"1": 7}},
                                  {"error": None, "node_errors": []}, []])
def test_prompt_400_of_any_shape_is_a_rejection(body):
    with Liar({("POST", "/prompt"): json_answer(body, 400)}) as liar:
        with pytest.raises(PromptRejected, match="ComfyUI rejected the workflow"):
            ComfyClient(liar.url).queue_prompt({"1": {"class_type": "X", "inputs": {}}}, "cid")


def test_websocket_frame_of_2_pow_62_bytes_does_not_hang_the_render():
    routes = render_routes(ws=ws_giant_frame(1 << 62, 0.1), history_done=False)
    with Liar(routes) as liar:
        c = ComfyClient(liar.url)
        t = time.monotonic()
        with pytest.raises(BadAnswer, match="frame announces"):
            c.run({"1": {"class_type": "X", "inputs": {}}}, timeout=5)
        assert time.monotonic() - t < 8


def test_render_deadline_holds_when_history_never_finishes():
    routes = render_routes(history_done=False)
    with Liar(routes) as liar:
        c = ComfyClient(liar.url)
        t = time.monotonic()
        with pytest.raises(RenderTimeout, match="within 2 s"):
            c.run({"1": {"class_type": "X", "inputs": {}}}, timeout=2)
        assert time.monotonic() - t < 5
        assert ("POST", "/interrupt") in liar.hits


def test_png_decompression_bomb_is_bad_answer():
    with Liar(render_routes(view=http_answer(png_bomb(), 200, "image/png"))) as liar:
        with pytest.raises(BadAnswer, match="decompression bomb"):
            ComfyClient(liar.url).run({"1": {"class_type": "X", "inputs": {}}}, timeout=20)


def test_view_of_the_wrong_content_type_is_refused():
    with Liar(render_routes(view=http_answer(b"<script>", 200, "text/html"))) as liar:
        with pytest.raises(BadAnswer, match="not image/"):
            ComfyClient(liar.url).run({"1": {"class_type": "X", "inputs": {}}}, timeout=20)


def test_honest_render_through_the_liar_harness_works():
    """The fake's normal path decodes (so the failures above are the lies, not the fake)."""
    with Liar(render_routes()) as liar:
        res = ComfyClient(liar.url).run({"1": {"class_type": "X", "inputs": {}}}, timeout=20)
        assert res.images[0][1].shape == (8, 8, 3) and res.images[0][1][0, 0].tolist() == [200, 10, 10]


def test_errors_are_comfy_errors_exit_2():
    assert issubclass(BadAnswer, ComfyError) and BadAnswer("x").exit_code == 2


@pytest.mark.parametrize("lie", ["trickle", "endless-body", "body-1GiB", "wrong-type"])
def test_doctor_against_a_lying_server_is_one_line_exit_2(lie, monkeypatch):
    """Before: the trickling server hung `doctor`, the 1 GiB body took it to 2.1 GB RSS and then "OK", the
    wrong JSON type gave a traceback."""
    from tests._inproc import one_error_line, run_main
    monkeypatch.setenv("QUANTGATE_REQUEST_DEADLINE", "3")
    routes = {("GET", "/system_stats"): json_answer(STATS),
              ("GET", "/object_info"): json_answer({"KSampler": {"input": {"required": {}}}})}
    if lie == "trickle":
        routes[("GET", "/system_stats")] = trickle(http_answer(json.dumps(STATS)), 0.5)
    elif lie == "endless-body":
        routes[("GET", "/object_info")] = endless_body(announce=None)
    elif lie == "body-1GiB":                    # before: read whole (2.1 GB RSS), then "OK", exit 0
        routes[("GET", "/object_info")] = endless_body(announce=1 << 30)
    else:
        routes[("GET", "/system_stats")] = json_answer({"system": {"comfyui_version": ["0", 3]}})
    with Liar(routes) as liar:
        t = time.monotonic()
        line = one_error_line(*run_main("doctor", "--comfy-url", liar.url)[::2])
        assert liar.url in line and time.monotonic() - t < 30, line
