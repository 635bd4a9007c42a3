"""Structure-aware fuzzers, one per input kind (issue 20): a valid document of the kind with hostile values in
its schema's fields (tests/quant/inputs/hostile.py), given to the product's own reader of that kind. The
promise, whatever the case: the reader returns a well-typed result, or ends with one exit-2 line naming the
file (or URL) -- never another exception, a traceback, a hang, or more than one line.
``QUANTGATE_FUZZ_EXAMPLES`` sets the cases per kind (CI 150); ``QUANTGATE_FUZZ_TALLY=FILE`` adds the counts
(tried / accepted / refused per kind) to a JSON file."""
from __future__ import annotations

import atexit
import math
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.quant.inputs.hostile import FUZZ, check, dump_tally, mutated, to_json, to_toml, write_case

pytestmark = pytest.mark.fuzz
_TMP = Path(tempfile.mkdtemp(prefix="qg-fuzz-loaders-"))
atexit.register(shutil.rmtree, _TMP, True)       # the cases of one run, removed at exit
_trunc = st.one_of(st.none(), st.none(), st.none(), st.integers(0, 1 << 20))


@pytest.fixture(scope="module", autouse=True)
def _tally():
    yield
    dump_tally()


_name = st.sampled_from(["blocks.0.self_attn.q", "blocks.1.ffn.0", "head.head", "x"])
_pos = st.floats(1e-3, 1e3)


@st.composite
def calibration_docs(draw):
    layers = {}
    for n in draw(st.lists(_name, min_size=1, max_size=3, unique=True)):
        amax = draw(_pos)
        layers[n] = {"in_features": draw(st.integers(1, 4096)), "calls": 3, "count": 100, "amax": amax,
                     "p99.9": amax / 2, "p99": amax / 3, "mean": 0.1, "std": 0.5, "zero_fraction": 0.0,
                     "channels": {"amax_median": 1.0, "amax_max_over_median": 2.0, "top": [[1, 2.0]]},
                     "bins": [{"bin": 0, "t": [1.0, 0.5], "calls": 1, "count": 50, "amax": amax, "p99.9": amax / 2,
                               "mean": 0.0, "std": 1.0, "zero_fraction": 0.0}]}
    return {"schema": "quantgate.calibration/1",
            "provenance": {"model": {"name": "m.safetensors", "sha256": "ab" * 32}, "seeds": [1, 2],
                           "sizes": [[64, 64]], "comfyui": {"version": "0.3.75", "embedded": True}},
            "percentiles": [99.0, 99.9], "bins": {"n": 1, "t_edges": [1.0, 0.0], "t": "x"},
            "runs": 2, "model_calls": 12, "layers": layers}


def _use_calibration(p):
    from quant import inputs
    from quant.activations import statistics
    cal = statistics.load(p)
    names = list(cal.layers)
    for pc in (None, 99.9):
        try:
            amax = cal.activation_amax(names, pc, 1.0)
        except Exception as e:           # a percentile not recorded is a usage error, still one line
            from quant.errors import QuantgateError
            if not isinstance(e, QuantgateError):
                raise
            continue
        assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in amax.values())
    assert inputs.calibration_json(p)["schema"] == "quantgate.calibration/1"


@FUZZ
@given(case=mutated(calibration_docs()), trunc=_trunc)
def test_fuzz_calibration_json(case, trunc):
    doc, _ = case
    p = write_case(_TMP, "calib.json", to_json(doc), trunc)
    check("calibration JSON", p, lambda: _use_calibration(p))


@FUZZ
@given(case=mutated(st.dictionaries(_name, _pos, min_size=1, max_size=3).map(lambda d: {"layers": d})), trunc=_trunc)
def test_fuzz_input_scales_json(case, trunc):
    from quant.convert import load_input_scales
    doc, _ = case
    p = write_case(_TMP, "scales.json", to_json(doc), trunc)

    def use():
        out = load_input_scales(p)
        assert all(isinstance(v, float) and 0 < v < math.inf for v in out.values())
    check("input scales JSON", p, use)


# -- preset TOML --------------------------------------------------------------------------------------------
@st.composite
def preset_docs(draw):
    rules = [{"match": ["*.bias", "*norm*"], "action": "keep", "reason": "r"},
             {"match": ["blocks.*.w.weight"], "action": "quant", "nvfp4": draw(st.sampled_from(["fp8", "keep"])),
              "ndim": 2, "min_numel": draw(st.integers(0, 64)), "gguf": "Q4_0"},
             {"match": "*", "action": "keep"}]
    return {"name": "p", "description": "d", "family": "wan", "archs": ["a"], "rule": rules,
            "provenance": {"gguf_file": "x.gguf", "tensors": 3}}


TENSORS = [("blocks.0.w.weight", "BF16", (64, 64)), ("blocks.0.w.bias", "BF16", (64,)),
           ("blocks.0.norm.weight", "F32", (64,)), ("head.weight", "BF16", (8, 64))]


def _use_preset(p):
    from quant import presets
    pr = presets.load(str(p))
    for target in ("fp8", "nvfp4"):
        plan = presets.plan(pr, target, TENSORS, source="src")
        assert len(plan.decisions) == len(TENSORS)
        assert all(d.action in ("keep", "fp8", "nvfp4") for d in plan.decisions)


@FUZZ
@given(case=mutated(preset_docs(), toml=True, extra_keys=("x", "ndim", "match", "rule")), trunc=_trunc)
def test_fuzz_preset_toml(case, trunc):
    doc, _ = case
    p = write_case(_TMP, "preset.toml", to_toml(doc), trunc)
    check("preset TOML", [p, "src"], lambda: _use_preset(p))


# -- policy TOML --------------------------------------------------------------------------------------------
def policy_docs():
    return st.just({"plan": {"seeds": [1, 2], "sizes": [[64, 64], [96, 64]], "steps": 4, "cfg": 1.0,
                             "sampler": "euler", "scheduler": "simple", "control_seed_offset": 1000,
                             "render_timeout_s": 120},
                    "thresholds": {"fp8": 0.97, "default": 0.95},
                    "control": {"max_ssim": 0.9, "min_margin": 0.05}, "repeat": {"min_ssim": 1.0},
                    "load": {"fail_on_missing": True}}).map(lambda d: __import__("copy").deepcopy(d))


def _use_policy(p):
    from harness.render import gate
    pol = gate.load_policy(p)
    seeds, sizes, settings, timeout = gate._plan(pol)
    assert seeds and all(type(s) is int for s in seeds) and all(w > 0 and h > 0 for w, h in sizes)
    assert math.isfinite(timeout) and timeout > 0
    assert all(isinstance(v, float) or type(v) is int for v in pol["thresholds"].values())


@FUZZ
@given(case=mutated(policy_docs(), toml=True, extra_keys=("x", "plan", "seeds")), trunc=_trunc)
def test_fuzz_policy_toml(case, trunc):
    doc, _ = case
    p = write_case(_TMP, "policy.toml", to_toml(doc), trunc)
    check("policy TOML", p, lambda: _use_policy(p))


# -- workflow JSON --------------------------------------------------------------------------------------------
@st.composite
def workflow_docs(draw):
    if draw(st.booleans()):
        return {"3": {"class_type": "KSampler", "inputs": {"seed": 1, "model": ["4", 0], "steps": 4},
                      "_meta": {"title": "K"}},
                "4": {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": "m-Q8_0.gguf"}}}
    return {"last_node_id": 2, "last_link_id": 1,
            "nodes": [{"id": 1, "type": "UnetLoaderGGUF", "mode": 0, "title": "loader",
                       "widgets_values": ["m-Q8_0.gguf"], "outputs": [{"name": "MODEL", "links": [1]}]},
                      {"id": 2, "type": "KSampler", "mode": 0, "widgets_values": [1, "fixed", 4],
                       "inputs": [{"name": "model", "link": 1}]}],
            "links": [[1, 1, 0, 2, 0, "MODEL"]], "version": 0.4}


def _use_workflow(p):
    from harness.gguf import workflow_convert as wc
    r = wc.convert_file(p, {"m-Q8_0.gguf": "m_fp8.safetensors"})
    if r.new_text is not None:
        r.new_text.encode("utf-8")
    from harness.comfy import doctor
    doctor.workflow_refs(p.parent)


@FUZZ
@given(case=mutated(workflow_docs(), extra_keys=("x", "nodes", "class_type", "widgets_values")), trunc=_trunc)
def test_fuzz_workflow_json(case, trunc):
    doc, _ = case
    d = _TMP / "wf"
    d.mkdir(exist_ok=True)
    p = write_case(d, "w.json", to_json(doc), trunc)
    check("workflow JSON", p, lambda: _use_workflow(p))


# -- nightly records --------------------------------------------------------------------------------------------
@st.composite
def nightly_docs(draw):
    def bench(name, med):
        return {"name": name, "fullname": f"t::{name}", "group": None,
                "stats": {"min": med / 2, "max": med * 2, "mean": med, "median": med, "stddev": 0.1, "rounds": 3,
                          "iterations": 1},
                "extra_info": {"ssim": 0.99, "vram_mib": 100, "fp8": {"ssim": 0.98, "s_per_step": 0.5}}}
    return {"machine_info": {"node": "h", "quantgate": {"gpu": "H200"}}, "commit_info": {"id": "abc", "dirty": False},
            "benchmarks": [bench("a", draw(_pos)), bench("b", 1.0)], "datetime": "2026-11-30T01:02:03.123456+00:00",
            "version": "4.0.0"}


def _use_nightly(p, q):
    from harness.nightly import records
    a, b = records.load(p), records.load(q)
    changes, _, _ = records.compare(a, b)
    for c in changes:
        assert math.isfinite(c.old) and math.isfinite(c.new)
        c.as_dict()
    records.describe(a)


@FUZZ
@given(case=mutated(nightly_docs(), extra_keys=("x", "datetime", "stats", "median")), trunc=_trunc,
       other=nightly_docs())
def test_fuzz_nightly_record(case, trunc, other):
    doc, _ = case
    p = write_case(_TMP, "new.json", to_json(doc), trunc)
    q = write_case(_TMP, "old.json", to_json(other))
    check("nightly record", p, lambda: _use_nightly(q, p))


# -- activation files (safetensors) -----------------------------------------------------------------------------
_DT = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "I8": 1, "U8": 1, "F64": 8, "I64": 8, "BOOL": 1}


@st.composite
def activation_files(draw):
    import json as _j
    n = draw(st.integers(1, 3))
    hdr, off, blobs = {}, 0, []
    for i in range(n):
        name = draw(st.sampled_from([f"blocks.{i}.w.input", "x.input", "blocks.0.w.input", f"w{i}"]))
        dt = draw(st.sampled_from(["F32"] * 4 + ["BF16", "F16"] + list(_DT)))
        shape = draw(st.one_of(st.just([4, 8]), st.lists(st.sampled_from([0, 1, 2, 8, 3]), max_size=3)))
        nb = _DT[dt]
        for s in shape:
            nb *= s
        data = draw(st.one_of(st.just(b"\0" * nb), st.binary(min_size=nb, max_size=nb),
                              st.just(struct.pack("<f", math.inf) * (nb // 4) + b"\0" * (nb % 4))))
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + nb]}
        off += nb
        blobs.append(data)
    raw = _j.dumps(hdr).encode()
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


def _use_activations(p):
    from quant.activations.samples import ActivationSamples
    c = ActivationSamples(p, 16, 0)
    try:
        for layer in sorted(c.layers):
            info = c._f.info(layer + ".input")
            x = c.rows(layer, info.shape[-1] if info.shape else 1)
            assert x.dtype.is_floating_point and x.shape[0] >= 1 and bool(x.isfinite().all())
    finally:
        c.close()


@FUZZ
@given(data=activation_files(), trunc=_trunc)
def test_fuzz_activation_file(data, trunc):
    p = write_case(_TMP, "acts.safetensors", data, trunc)
    check("activation file", p, lambda: _use_activations(p))


# -- server answers -----------------------------------------------------------------------------------------------
ENDPOINTS = {
    "/system_stats": {"system": {"comfyui_version": "0.3.75", "python_version": "3.11", "pytorch_version": "2"},
                      "devices": [{"name": "cpu", "type": "cpu", "index": None, "vram_total": 1, "vram_free": 1}]},
    "/object_info": {"KSampler": {"input": {"required": {"seed": ["INT", {}]}, "optional": {}}, "output": ["LATENT"]},
                     "UNETLoader": {"input": {"required": {"unet_name": [["a.safetensors"]]}}}},
    "/history/p1": {"p1": {"status": {"status_str": "success", "completed": True,
                                      "messages": [["execution_start", {}]]},
                           "outputs": {"9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}}}},
    "/prompt": {"prompt_id": "p1", "number": 1, "node_errors": {}},
    "/queue": {"queue_running": [], "queue_pending": []},
}


@st.composite
def server_answers(draw):
    import copy
    route = draw(st.sampled_from(sorted(ENDPOINTS)))
    doc, _ = draw(mutated(st.just(copy.deepcopy(ENDPOINTS[route])), extra_keys=("x", "error", "status", "input")))
    status = draw(st.sampled_from([200, 200, 200, 400, 500]))
    ctype = draw(st.sampled_from(["application/json"] * 4 + ["text/html", "application/json; charset=utf-8", ""]))
    return route, to_json(doc).encode("utf-8", "surrogatepass"), status, ctype


@FUZZ
@given(ans=server_answers(), trunc=_trunc)
def test_fuzz_server_answers(ans, trunc):
    from harness.comfy.client import ComfyClient, _execution_error, describe_rejection
    from harness.comfy.errors import PromptRejected
    route, body, status, ctype = ans
    if trunc is not None:
        body = body[: trunc % (len(body) + 1)]
    c = ComfyClient("http://127.0.0.1:9")
    c._http = lambda method, path, **kw: (status, ctype, body)
    url = "http://127.0.0.1:9"

    def use():
        if route == "/system_stats":
            c.version()
            c.system_stats()
        elif route == "/object_info":
            assert isinstance(c.object_info(), dict)
        elif route == "/history/p1":
            h = c.history("p1")
            _execution_error(h, "p1")
            for out in (h.get("outputs") or {}).values():
                for im in out.get("images") or []:
                    assert isinstance(im["filename"], str)
        elif route == "/queue":
            c.queue()
        else:
            try:
                assert isinstance(c.queue_prompt({"1": {"class_type": "X", "inputs": {}}}, "c"), str)
            except PromptRejected as e:
                assert "\n" not in str(e)
                describe_rejection(e.details)
    check("server answers", url, use)


# -- layout manifests (golden/**/*.json, `manifest show PATH`, `diff` against a manifest) ------------------------
@st.composite
def manifest_docs(draw):
    tensors, off = {}, 0
    for n in draw(st.lists(st.sampled_from(["blocks.0.w.weight", "blocks.0.w.weight_scale", "head.bias", "x"]),
                           min_size=1, max_size=3, unique=True)):
        dt = draw(st.sampled_from(["F32", "BF16", "F8_E4M3", "U8"]))
        shape = draw(st.lists(st.integers(1, 64), max_size=2))
        nb = math.prod(shape) * {"F32": 4, "BF16": 2}.get(dt, 1)
        tensors[n] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + nb]}
        off += nb
    return {"name": "m", "description": "d", "generated_by": "harness/verify/manifests.py", "arch": "a",
            "format": "fp8", "file_bytes": off + 64, "header_bytes": 56, "tensor_count": len(tensors),
            "dtypes": {"F32": 1}, "metadata": {"format": "pt"}, "tensors": tensors}


def _use_manifest(p):
    from harness.verify import manifests
    from harness.verify.layout_diff import ManifestSource
    m = manifests.load(str(p))
    src = ManifestSource(m)
    for n in src.keys():
        assert all(type(s) is int and s >= 0 for s in src.info(n).shape)
    manifests.summary(m)


@FUZZ
@given(case=mutated(manifest_docs(), extra_keys=("x", "tensors", "shape", "dtype", "data_offsets")), trunc=_trunc)
def test_fuzz_manifest_json(case, trunc):
    doc, _ = case
    p = write_case(_TMP, "manifest.json", to_json(doc), trunc)
    check("layout manifest", p, lambda: _use_manifest(p))


def test_manifest_named_null_is_one_line(tmp_path):
    """Found by the 10,000-case manifest run: "name": null passed the schema and ManifestSource failed with
    TypeError (Path(None))."""
    import json

    from harness.verify import manifests
    from quant.errors import InputError
    p = tmp_path / "m.json"
    p.write_text(json.dumps({"name": None, "tensors": {"w": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}}))
    with pytest.raises(InputError, match="name"):
        manifests.load(str(p))


# -- the quantgate.calibration record in a candidate file's metadata ------------------------------------------
_record = st.fixed_dictionaries({"statistic": st.just("amax"), "margin": st.floats(0.5, 2.0),
                                 "model_sha256": st.just("AB" * 32), "seeds": st.lists(st.integers(0, 99), max_size=4)})


@FUZZ
@given(case=mutated(_record, extra_keys=("x", "seeds", "model_sha256")), trunc=_trunc)
def test_fuzz_file_calibration_record(case, trunc):
    """The candidate's metadata is anyone's: the record is either valid (typed seeds, a lower-case sha256) or
    None -- never an exception, whatever the text (truncated, hostile values, extra keys)."""
    from quant.inputs import file_calibration_record
    doc, _ = case
    text = to_json(doc)
    if trunc is not None:
        text = text[:trunc]
    rec = file_calibration_record({"quantgate.calibration": text}, "the file")
    if rec is not None:
        sha = rec.get("model_sha256")
        assert sha is None or (len(sha) == 64 and sha == sha.lower())
        seeds = rec.get("seeds")
        assert seeds is None or all(type(s) is int and s >= 0 for s in seeds)


def test_file_calibration_record_reads_what_convert_writes():
    from quant.inputs import file_calibration_record
    text = '{"statistic": "p99.9", "margin": 1.0, "model_sha256": "' + "AB" * 32 + '", "seeds": [11, 12]}'
    rec = file_calibration_record({"quantgate.calibration": text}, "f")
    assert rec["model_sha256"] == "ab" * 32 and rec["seeds"] == [11, 12]
    assert file_calibration_record({}, "f") is None
    assert file_calibration_record({"quantgate.calibration": '{"seeds": [true]}'}, "f") is None
