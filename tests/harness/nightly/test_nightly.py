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
    if plant == "slower":               # every repeat twice as slow: beyond the run's own spread
        b["stats"]["median"] *= 2
        b["stats"]["data"] = [x * 2 for x in b["stats"]["data"]]
    elif plant == "throughput":
        b["extra_info"]["x_mb_per_s_runs"] = [100.0, 101.0, 99.0, 100.5, 100.2]
        b["extra_info"]["x_mb_per_s"] = 100.0
        record["benchmarks"][0]["extra_info"]["x_mb_per_s"] = 150.0
        record["benchmarks"][0]["extra_info"]["x_mb_per_s_runs"] = [150.0, 149.0, 151.0, 150.5, 148.9]
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
    new["benchmarks"][0]["stats"]["data"] = [x * 1.05 for x in new["benchmarks"][0]["stats"]["data"]]
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


def _h200(run: int):
    return nightly.load(RESULTS / f"h200-nightly-2026-11-30-run{run}.json")


def test_committed_records_of_unchanged_code_compare_clean(cli):
    """Issue 21: run2 -> run3 (same machine type, one lease apart, 1 and 2 repeats at 256x256 x 1 frame) read
    fp8-legacy median +41 % and seconds per step +84 %, fp8 median +32 %: the runs' own noise, not the code.
    Judged by the spread: the medians lie within it, single-repeat figures are not judged."""
    r = cli("nightly", "compare", RESULTS / "h200-nightly-2026-11-30-run2.json",
            RESULTS / "h200-nightly-2026-11-30-run3.json", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["regressions"] == []
    ch = {(c["benchmark"], c["figure"]): c for c in out["changes"]}
    med = ch[("test_nightly_render[fp8-legacy]", "median_s")]
    assert med["new"] / med["old"] > 1.3                        # the change that was cried wolf ...
    assert med["new_spread"]["n"] == 2 and med["new_spread"]["rel"] > 0.3   # ... lies within run3's own spread
    sps = ch[("test_nightly_render[fp8-legacy]", "s_per_step")]
    assert sps["decided"].startswith("not judged") and not sps["regression"]
    text = cli("nightly", "compare", RESULTS / "h200-nightly-2026-11-30-run2.json",
               RESULTS / "h200-nightly-2026-11-30-run3.json", "--all").stdout
    assert "n=2 1.601..2.273" in text and "REGRESSION" not in text      # the spread is shown beside the figure


def _with_runs(rec, fig: str, runs_by_bench: dict):
    rec = copy.deepcopy(rec)
    for b in rec["benchmarks"]:
        if b["name"] in runs_by_bench:
            b["extra_info"][fig] = min(runs_by_bench[b["name"]])
            b["extra_info"][f"{fig}_runs"] = runs_by_bench[b["name"]]
    return rec


def test_repeats_decide_by_rank_test_both_ways():
    """With repeats on both sides the rank test decides: five repeats of the same distribution compare clean
    even when one run's best is 15 % off; a shift beyond the spread in every repeat is a regression."""
    base = _h200(3)
    name = "test_nightly_render[fp8]"
    same_a = _with_runs(base, "s_per_step", {name: [0.050, 0.061, 0.055, 0.072, 0.058]})
    same_b = _with_runs(base, "s_per_step", {name: [0.058, 0.052, 0.069, 0.057, 0.063]})
    changes, _, _ = nightly.compare(same_a, same_b)
    c = next(x for x in changes if x.benchmark == name and x.figure == "s_per_step")
    assert not c.regression and c.decided.startswith("rank test")
    slow = _with_runs(base, "s_per_step", {name: [0.081, 0.079, 0.085, 0.080, 0.083]})
    changes, _, _ = nightly.compare(same_a, slow)
    c = next(x for x in changes if x.benchmark == name and x.figure == "s_per_step")
    assert c.regression and c.decided.startswith("rank test") and c.new_spread["n"] == 5


def test_three_repeats_each_are_judged_by_the_spread_not_by_a_rank_test_that_cannot_fire():
    """3 vs 3 repeats: the exact one-sided rank test's smallest p is 1/20 = 0.05, never < 0.05, so it would pass
    any slowdown; the spread rule decides instead (a 50 % slower run in every repeat is a regression, the same
    distribution is not)."""
    base = _h200(3)
    name = "test_nightly_render[fp8]"
    a = _with_runs(base, "s_per_step", {name: [0.050, 0.052, 0.051]})
    slow = _with_runs(base, "s_per_step", {name: [0.076, 0.078, 0.077]})
    changes, _, _ = nightly.compare(a, slow)
    c = next(x for x in changes if x.benchmark == name and x.figure == "s_per_step")
    assert c.regression and not c.decided.startswith("rank test"), c.decided
    same = _with_runs(base, "s_per_step", {name: [0.051, 0.050, 0.053]})
    changes, _, _ = nightly.compare(a, same)
    c = next(x for x in changes if x.benchmark == name and x.figure == "s_per_step")
    assert not c.regression, c.decided
    four = _with_runs(base, "s_per_step", {name: [0.076, 0.078, 0.077, 0.079]})
    changes, _, _ = nightly.compare(a, four)
    c = next(x for x in changes if x.benchmark == name and x.figure == "s_per_step")
    assert c.regression and c.decided.startswith("rank test"), c.decided       # 3 vs 4: p can reach 1/35
