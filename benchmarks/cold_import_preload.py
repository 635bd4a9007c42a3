"""Cold-start experiment for quant.startup's opt-in preload (QUANTGATE_PRELOAD_LIBS=1), on any Linux box, as root
(it drops the page cache before each trial):

    python benchmarks/cold_import_preload.py BIG_FILE [--reps 3] [--out benchmarks/results/X.json]

A subprocess imports torch, numpy and safetensors and writes quant.startup's record (libraries' resident ranges +
the imported modules' files) into a temporary cache. Each trial then drops the page cache, optionally reads the
recorded ranges first (nothing / libraries only / libraries + module files), and starts a cold
``import torch, numpy, safetensors`` while ``dd`` reads BIG_FILE sequentially (the shard prefetcher's part).
Reported: seconds from the trial's start (preload included) until the import finished, per kind, median.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
IMPORTS = "import torch, numpy, safetensors"


def _drop():
    subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)


def _preload(ranges, kind):
    from quant import startup
    n = 0
    for path, b, e in ranges:
        if kind == "libs" and not startup._is_lib(path):
            continue
        with open(path, "rb") as f:
            f.seek(b)
            while b < e:
                d = f.read(min(8 << 20, e - b))
                if not d:
                    break
                b += len(d)
                n += len(d)
    return n


def _trial(kind, ranges, big):
    _drop()
    t0 = time.perf_counter()
    pre = _preload(ranges, kind) if kind in ("libs", "libs+modules") else 0
    tp = time.perf_counter() - t0
    rd = subprocess.Popen(["dd", f"if={big}", "of=/dev/null", "bs=16M", "status=none"]) if kind != "alone" else None
    subprocess.run([sys.executable, "-c", IMPORTS], check=True)
    ti = time.perf_counter() - t0
    if rd:
        rd.wait()
    return {"kind": kind, "preload_s": round(tp, 2), "preload_bytes": pre, "torch_imported_s": round(ti, 2),
            "reader_done_s": round(time.perf_counter() - t0, 2) if rd else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("big", help="a large file (several GB) the concurrent reader streams")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cold-import-preload.json"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, XDG_CACHE_HOME=cache, PYTHONPATH=str(ROOT))
        subprocess.run([sys.executable, "-c", f"{IMPORTS}\nfrom quant import startup\nprint(startup.record_libs())"],
                       env=env, check=True)
        os.environ["XDG_CACHE_HOME"] = cache
        from quant import startup
        ranges = startup.recorded_lib_ranges()
        rows = [dict(_trial(k, ranges, a.big), rep=r) for r in range(a.reps) for k in ("alone", "none", "libs", "libs+modules")]
    summ = {k: {"torch_imported_s_median": statistics.median(r["torch_imported_s"] for r in rows if r["kind"] == k),
                "n": sum(r["kind"] == k for r in rows)} for k in ("alone", "none", "libs", "libs+modules")}
    from quant.outputs import write_text
    write_text(a.out, json.dumps({"summary": summ, "trials": rows}, indent=1) + "\n", what="benchmark record")
    print(json.dumps(summ, indent=1))


if __name__ == "__main__":
    main()
