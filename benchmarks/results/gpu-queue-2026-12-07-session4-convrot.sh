#!/usr/bin/env bash
# convrot (issue 24 item 6, int8-convrot): bytes vs kitchen eager on the card + timings, ~60-85 s. Runs from the repo
# root after the lead's set-up (export PYTHONPATH=/tmp/site:.). Writes $OUT/convrot/{results.json,log.txt}.
# Session 4, NEVER RUN (no GPU machine could be started). Run: bash benchmarks/results/gpu-queue-2026-12-07-session4-convrot.sh
set -u
mkdir -p $OUT/convrot
git log --oneline -1 > $OUT/convrot/commit.txt 2>/dev/null 
PYTHONUNBUFFERED=1 timeout 88 python3 benchmarks/convrot_gpu_bench.py $OUT/convrot 80 > $OUT/convrot/log.txt 2>&1
echo "convrot rc=$?" | tee -a $OUT/convrot/log.txt
grep -E "^bytes|GB/s|ERROR|elapsed" $OUT/convrot/log.txt | cut -c1-260 | tail -60
true
