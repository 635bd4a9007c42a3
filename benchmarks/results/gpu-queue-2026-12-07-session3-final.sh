#!/usr/bin/env bash
# lead's one GPU call (session 3): GPU tests on main, gate nightly x2 + compare (21), qwen-image nightly (23),
# then whole-CLI rows (24) with whatever time is left. Every step has its own deadline inside LIMIT.
set -u
T0=$(date +%s); LIMIT=${LIMIT:-300}
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
cap() { local l; l=$(left); [ "$l" -lt "$1" ] && echo "$l" || echo "$1"; }
t() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/lead/whl/*.whl .gpu/models/*.whl
tar -xJf .gpu/lead/kitchen-site.tar.xz -C /tmp/site   # comfy_kitchen 0.2.40 wheel, unpacked here and xz'd to fit the 64 MiB tree
cp -r .gpu/models/av /tmp/site/
export PYTHONPATH=/tmp/site:.
mkdir -p /tmp/comfy $OUT/tests $OUT/gate $OUT/models $OUT/formats && tar -xJf .gpu/models/comfyui-0.3.75.tar.xz -C /tmp/comfy
git log --oneline -1 > $OUT/commit.txt 2>/dev/null; cat .gpu/lead/commit.txt >> $OUT/commit.txt 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
python3 -c "import torch,triton;print(torch.__version__,triton.__version__)" | tee -a $OUT/card.txt
t "gpu tests"
timeout $(cap 120) python3 -m pytest -m gpu -q -p no:randomly -p no:cacheprovider -rfE --tb=short \
  tests/test_gpu.py tests/test_gpu_new_formats.py tests/quant/kernels/test_gpu_kernels.py \
  --junitxml=$OUT/tests/gpu.xml > $OUT/tests/gpu.txt 2>&1; echo "rc=$?" >> $OUT/tests/gpu.txt; tail -15 $OUT/tests/gpu.txt
t "fidelity convert schedule"
mkdir -p $OUT/fidelity; timeout $(cap 60) python3 benchmarks/fidelity_gpu.py --out $OUT/fidelity/convert-schedule.json --convert-schedule 5 > $OUT/fidelity/log.txt 2>&1; echo "fidelity rc=$?"; tail -n 2 $OUT/fidelity/log.txt
t "gate nightly"
python3 .gpu/gate/probe.py > $OUT/gate/probe.txt 2>&1; tail -2 $OUT/gate/probe.txt
if tail -1 $OUT/gate/probe.txt | grep -q "^ALL OK"; then
  ( export QUANTGATE_NIGHTLY_COMFY_ROOT=/tmp/comfy QUANTGATE_NIGHTLY_DIR=/tmp/qg-nightly QUANTGATE_NIGHTLY_ARCH=wan22-ti2v-5b QUANTGATE_NIGHTLY_CASES=bf16 QUANTGATE_NIGHTLY_SEEDS=1 QUANTGATE_NIGHTLY_SIZE=512 QUANTGATE_NIGHTLY_REPEATS=4
    for i in 1 2; do c=$([ $i = 1 ] && echo 125 || echo 75); timeout $(cap $c) python3 -m pytest -m gpu -q -p no:randomly -p no:cacheprovider tests/harness/nightly/test_nightly_gpu.py --benchmark-json=$OUT/gate/nightly-run$i.json > $OUT/gate/run$i.log 2>&1; echo "run$i rc=$?"; tail -3 $OUT/gate/run$i.log; done
    python3 -m harness nightly compare --all $OUT/gate/nightly-run1.json $OUT/gate/nightly-run2.json > $OUT/gate/compare.txt 2>&1; echo "compare rc=$?"; cat $OUT/gate/compare.txt )
fi
t "models nightly"
QUANTGATE_NIGHTLY_COMFY_ROOT=/tmp/comfy QUANTGATE_NIGHTLY_ARCH=qwen-image QUANTGATE_NIGHTLY_CASES=bf16,fp8 QUANTGATE_NIGHTLY_SEEDS=1 QUANTGATE_NIGHTLY_SIZE=256 QUANTGATE_NIGHTLY_REPEATS=1 QUANTGATE_NIGHTLY_DIR=/tmp/nightly PYTHONUNBUFFERED=1 timeout $(cap 150) python3 -m pytest -c pyproject.toml -m gpu tests/harness/nightly/test_nightly_gpu.py -x -q -p no:cacheprovider --benchmark-json $OUT/models/nightly-qwen-image-16blocks.json > $OUT/models/log.txt 2>&1; echo "rc=$?" >> $OUT/models/log.txt; cp /tmp/nightly/comfy/comfyui.log $OUT/models/comfyui.log 2>/dev/null; tail -3 $OUT/models/log.txt
t "formats e2e (time left: $(left) s)"
if [ "$(left)" -gt 90 ]; then
  QG_BENCH_OUT=$OUT/formats/bench.json QG_E2E_FORMATS=${E2E:-fp8@serial,fp8,int8,nvfp4} timeout $(cap 200) python3 -m pytest -q -s -p no:randomly -p no:cacheprovider -m "bench and gpu" benchmarks/test_bench_new_formats_gpu.py -rfE --tb=short --benchmark-json $OUT/formats/bench-pytest.json -k "e2e" > $OUT/formats/bench.txt 2>&1
  echo "rc=$?" >> $OUT/formats/bench.txt; grep -E "floor|GB/s|x |rc=|passed|failed|Error" $OUT/formats/bench.txt | cut -c1-300 | tail -20
fi
t done
true
