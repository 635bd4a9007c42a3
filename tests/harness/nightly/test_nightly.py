"""`quantgate nightly compare|trend` on the committed pytest-benchmark records, with planted regressions."""
import copy
import json
from pathlib import Path

import pytest

from harness.nightly import records as nightly

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ROOT / "benchmarks" / "results"


def _records():
    out = []
    for f in sorted(RESULTS.glob("*.json")):
        try:
            out.append((f, nightly.load(f)))
        except Exception:
            pass
    return out


@pytest.fixture
def record():
    recs = _records()
    assert recs, "benchmarks/results/ holds no pytest-benchmark record"
    return copy.deepcopy(recs[0][1])


def _write(tmp_path, name, rec):
    p = tmp_path / name
    p.write_text(json.dumps(rec))
    return p


def test_a_record_against_itself_has_no_regression(cli, record, tmp_path):
    a = _write(tmp_path, "a.json", record)
    r = cli("nightly", "compare", a, a)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 regression(s)" in r.stdout


@pytest.mark.parametrize("plant,expect", [
    ("slower", "slower by > 10 %"),
    ("throughput", "throughput lower by > 10 %"),
    ("ssim", "SSIM lower by > 0.01"),
    ("vram", "VRAM higher by > 5 %"),
])
def test_planted_regressions_exit_1_and_are_named(cli, record, tmp_path, plant, expect):
    new = copy.deepcopy(record)
    b = new["benchmarks"][0]
    name = b["name"]
    if plant == "slower":
        b["stats"]["median"] *= 1.2
    elif plant == "throughput":
        b["extra_info"]["x_mb_per_s"] = 100.0
        record["benchmarks"][0]["extra_info"]["x_mb_per_s"] = 150.0
    elif plant == "ssim":
        record["benchmarks"][0]["extra_info"]["ssim_min"] = 0.98
        b["extra_info"]["ssim_min"] = 0.965
    else:
        record["benchmarks"][0]["extra_info"]["peak_vram_mib"] = 8000
        b["extra_info"]["peak_vram_mib"] = 8500
    r = cli("nightly", "compare", _write(tmp_path, "old.json", record), _write(tmp_path, "new.json", new), "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    regs = json.loads(r.stdout)["regressions"]
    assert [(x["benchmark"], x["rule"]) for x in regs] == [(name, expect)]


def test_within_tolerance_is_not_a_regression(record):
    new = copy.deepcopy(record)
    new["benchmarks"][0]["stats"]["median"] *= 1.05            # 5 % slower: noise
    record["benchmarks"][0]["extra_info"]["ssim_min"] = 0.98
    new["benchmarks"][0]["extra_info"]["ssim_min"] = 0.975     # -0.005
    changes, _, _ = nightly.compare(record, new)
    assert changes and not [c for c in changes if c.regression]


def test_bad_records_one_line_exit_2(cli, record, tmp_path):
    good = _write(tmp_path, "good.json", record)
    (tmp_path / "text.json").write_text("not json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    for bad in (tmp_path / "text.json", tmp_path / "other.json", tmp_path / "missing.json"):
        r = cli("nightly", "compare", good, bad)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and bad.name in r.stderr


def test_trend_page_plots_every_record(cli, record, tmp_path):
    later = copy.deepcopy(record)
    later["datetime"] = "2099-01-01T00:00:00"
    d = tmp_path / "recs"
    d.mkdir()
    _write(d, "r1.json", record)
    _write(d, "r2.json", later)
    (d / "notes.json").write_text("[]")                       # not a record: skipped with a note
    r = cli("nightly", "trend", d, "-o", tmp_path / "out" / "trend.html")
    assert r.returncode == 0, r.stderr
    assert "skipped" in r.stderr and "notes.json" in r.stderr
    page = (tmp_path / "out" / "trend.html").read_text()
    pngs = list((tmp_path / "out" / "trend_plots").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert page.count("<img") == len(pngs) and "2 records" in page


@pytest.mark.parametrize("figure,kind", [
    ("s_per_step", "slower by > 10 %"), ("load_decode_s", "slower by > 10 %"), ("median_s", "slower by > 10 %"),
    ("mb_per_s_median", "throughput lower by > 10 %"), ("verify_mb_s", "throughput lower by > 10 %"),
    ("kernel_gb_s", "throughput lower by > 10 %"), ("ssim_min", "SSIM lower by > 0.01"),
    ("peak_vram_mib", "VRAM higher by > 5 %"), ("bytes", None), ("threads", None), ("source_generate_s", None),
])
def test_each_figure_is_judged_in_its_own_direction(figure, kind):
    """Seconds per step going DOWN is faster, MB/s going down is slower (a real GPU record had
    s_per_step read as a throughput once)."""
    r = nightly.rule_for(figure)
    assert (r[0] if r else None) == kind
