#!/usr/bin/env bash
# The structure-aware input fuzzers (tests/quant/inputs/test_fuzz_loaders.py), 10,000 cases per input kind,
# run once by hand (CI runs 150 each). Writes the tally (tried / accepted / refused per kind), the pytest
# outcome and the wall time to benchmarks/results/fuzz-inputs-10k-<date>.json.
#   benchmarks/fuzz_inputs.sh [pytest -k EXPR]
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$here/benchmarks/results/fuzz-inputs-10k-$(date -u +%F).json"
tally="$(mktemp)"; rm -f "$tally"
t0=$(date +%s)
QUANTGATE_FUZZ_PROFILE=quantgate-fuzz-10k QUANTGATE_FUZZ_TALLY="$tally" \
  "$here/qg" test "$here/tests/quant/inputs/test_fuzz_loaders.py" -q -p no:randomly -p no:cacheprovider \
  ${1:+-k "$1"} > "$tally.log" 2>&1
rc=$?
t1=$(date +%s)
python3 - "$tally" "$tally.log" "$rc" "$((t1 - t0))" "$out" <<'PYEOF'
import json, os, platform, sys
tally, log, rc, secs, out = sys.argv[1:]
counts = json.load(open(tally)) if os.path.exists(tally) else {}
tail = open(log, errors="replace").read().strip().splitlines()[-15:]
old = json.load(open(out)) if os.path.exists(out) else {"runs": []}
old["runs"].append({"profile": "quantgate-fuzz-10k", "examples_per_kind": 10000, "pytest_exit": int(rc),
                    "wall_s": int(secs), "machine": f"{platform.node()} ({os.cpu_count()} cores, shared)",
                    "per_kind": counts, "pytest_tail": tail})
json.dump(old, open(out, "w"), indent=1)
print(out, "exit", rc, "wall", secs, "s")
PYEOF
