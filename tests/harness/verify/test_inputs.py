"""verify/--source accept a file, an index.json or a shard directory; the pytest-facing report is sane."""
from __future__ import annotations

import json

from harness.fixtures import synth
from harness.verify import verify
from quant.convert import convert
from quant.safetensors_io import SafetensorsFile, save_file


def test_sharded_source_and_checkpoint(tmp_path):
    shards = synth.make_sharded("flux2-klein-4b-thin", tmp_path / "src", n_shards=3, seed=2)
    out = tmp_path / "q.safetensors"
    convert(shards, out, "nvfp4")
    idx = next(shards.glob("*.index.json"))
    for src in (shards, idx):
        rep = verify(out, src)
        assert rep.passed and rep.mode == "numeric", rep.lines()
    # the checkpoint itself sharded: split the quantized file in two
    with SafetensorsFile(out) as f:
        t = {k: f.get(k) for k in f.keys()}
        meta = dict(f.metadata)
    keys = sorted(t)
    d = tmp_path / "qshards"
    d.mkdir()
    save_file({k: t[k] for k in keys[: len(keys) // 2]}, d / "a-00001-of-00002.safetensors", meta)
    save_file({k: t[k] for k in keys[len(keys) // 2:]}, d / "a-00002-of-00002.safetensors", meta)
    rep = verify(d, shards)
    assert rep.passed, rep.lines()


def test_json_report_fields(tmp_path):
    src = synth.make_model("qwen-image-thin", tmp_path / "s.safetensors", seed=4)
    out = tmp_path / "q.safetensors"
    convert(src, out, "fp8")
    d = verify(out, src).as_dict()
    json.dumps(d)
    assert d["passed"] and d["exit_code"] == 0 and d["mode"] == "numeric"
    assert d["min_comfy"] == "0.4.0" and d["quantized_layers"]["fp8"] > 0
    assert all({"severity", "rule", "group", "message", "layers"} <= set(f) for f in d["findings"])
