#!/usr/bin/env bash
# The GPU queue of session 4 (2026-12-07), never run: 15 starts of the GPU box failed (16:57-18:28 UTC) and spent the
# device time. For the next GPU session, from the repo root on the box, one step set per call (each <= ~560 s):
#   STEPS="tests nightly" LIMIT=560 bash benchmarks/results/gpu-queue-2026-12-07-session4.sh
#   STEPS="models op e2e"  LIMIT=560 bash benchmarks/results/gpu-queue-2026-12-07-session4.sh
# Needs (untracked, under .gpu/, see gpu-queue-2026-12-07-session3.md): .gpu/lead/whl/*.whl (pytest, pytest-benchmark,
# pydantic(+core), gguf, ...), .gpu/lead/kitchen-site.tar.xz (comfy-kitchen 0.2.40 unpacked), .gpu/models/ (ComfyUI
# 0.3.75 tree as tar.xz, torchsde + trampoline wheels, an `av` placeholder), .gpu/gate/probe.py. Outputs under $OUT.
#   tests : pytest -m gpu of the kernel, new-format and fp8/nvfp4 GPU tests (issue 24: the deferred op default, the
#           W4A8 kernel and the int8-convrot chunks of session 4 were never run on a card)
#   nightly: issue 21 item 7 -- two nightly runs of unchanged code (TI2V 5B real size, 512x512, 4 repeats) + compare
#   models: issue 23 -- the Qwen-Image (16 of 60 blocks) and A14B (2 x 10 of 40 blocks) nightly at 256x256
#   op    : issue 24 -- fp8 backend op (default deferred check / sync) vs the raw kernel, every target Linear shape
#   e2e   : issue 24 -- whole CLI vs the I/O floor, each format with the preload (libraries + module files)
set -u
T0=$(date +%s); LIMIT=${LIMIT:-560}; STEPS=${STEPS:-"tests nightly"}
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
cap() { local l; l=$(left); [ "$l" -lt "$1" ] && echo "$l" || echo "$1"; }
t() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
has() { case " $STEPS " in *" $1 "*) return 0;; esac; return 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/lead/whl/*.whl .gpu/models/*.whl
tar -xJf .gpu/lead/kitchen-site.tar.xz -C /tmp/site
cp -r .gpu/models/av /tmp/site/
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
mkdir -p /tmp/comfy $OUT/tests $OUT/gate $OUT/models $OUT/formats && tar -xJf .gpu/models/comfyui-0.3.75.tar.xz -C /tmp/comfy
git log --oneline -1 > $OUT/commit.txt 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/card.txt
python3 -c "import torch,triton;print(torch.__version__,triton.__version__)" | tee -a $OUT/card.txt
python3 .gpu/gate/probe.py > $OUT/gate/probe.txt 2>&1; tail -1 $OUT/gate/probe.txt
nightly() {   # ARCH CASES SIZE REPEATS CAP JSON LOG
  QUANTGATE_NIGHTLY_COMFY_ROOT=/tmp/comfy QUANTGATE_NIGHTLY_DIR=/tmp/qg-nightly QUANTGATE_NIGHTLY_ARCH=$1 \
  QUANTGATE_NIGHTLY_CASES=$2 QUANTGATE_NIGHTLY_SEEDS=1 QUANTGATE_NIGHTLY_SIZE=$3 QUANTGATE_NIGHTLY_REPEATS=$4 \
  timeout $(cap $5) python3 -m pytest -c pyproject.toml -m gpu -q -p no:randomly -p no:cacheprovider \
    tests/harness/nightly/test_nightly_gpu.py --benchmark-json=$6 > $7 2>&1; echo "rc=$?" >> $7; tail -3 $7
}
if has tests; then t "gpu tests"
  timeout $(cap 200) python3 -m pytest -m gpu -q -p no:randomly -p no:cacheprovider -rfE --tb=short \
    tests/quant/kernels/test_gpu_kernels.py tests/test_gpu_new_formats.py tests/test_gpu.py \
    --junitxml=$OUT/tests/gpu.xml > $OUT/tests/gpu.txt 2>&1; echo "rc=$?" >> $OUT/tests/gpu.txt; tail -12 $OUT/tests/gpu.txt
fi
if has nightly; then t "gate nightly x2"
  nightly wan22-ti2v-5b bf16 512 4 120 $OUT/gate/nightly-run1.json $OUT/gate/run1.log
  nightly wan22-ti2v-5b bf16 512 4 75 $OUT/gate/nightly-run2.json $OUT/gate/run2.log
  cp /tmp/qg-nightly/comfy/comfyui.log $OUT/gate/comfyui.log 2>/dev/null
  python3 -m harness nightly compare --all $OUT/gate/nightly-run1.json $OUT/gate/nightly-run2.json > $OUT/gate/compare.txt 2>&1
  echo "compare rc=$?"; head -30 $OUT/gate/compare.txt; rm -rf /tmp/qg-nightly
fi
if has models; then t "models nightly"
  nightly qwen-image bf16,fp8 256 1 150 $OUT/models/nightly-qwen-image-16blocks.json $OUT/models/log-qwen.txt; rm -rf /tmp/qg-nightly
  nightly wan22-t2v-a14b bf16,fp8 256 1 150 $OUT/models/nightly-a14b-2x10blocks.json $OUT/models/log-a14b.txt; rm -rf /tmp/qg-nightly
fi
if has op; then t "fp8 op overhead"
  QG_BENCH_OUT=$OUT/formats/op.json timeout $(cap 60) python3 -m pytest -q -s -p no:randomly -p no:cacheprovider \
    -m "bench and gpu" benchmarks/test_bench_new_formats_gpu.py -k fp8_backend_op > $OUT/formats/op.txt 2>&1
  echo "rc=$?" >> $OUT/formats/op.txt; grep -E "fp8 op|rc=|passed|failed" $OUT/formats/op.txt
fi
if has e2e && [ "$(left)" -gt 100 ]; then t "whole-CLI e2e"
  QG_BENCH_OUT=$OUT/formats/bench.json \
  QG_E2E_FORMATS=${E2E:-fp8,fp8@preload,nvfp4@preload,int8@preload,mxfp8@preload,w4a4-convrot@preload,int8-convrot@preload,w4a8-int8@preload} \
    timeout $(cap 400) python3 -m pytest -q -s -p no:randomly -p no:cacheprovider -m "bench and gpu" -k e2e \
    benchmarks/test_bench_new_formats_gpu.py -rfE --tb=short > $OUT/formats/bench.txt 2>&1
  echo "rc=$?" >> $OUT/formats/bench.txt; grep -E "^[a-z0-9-]+(@[a-z]+)?: |rc=|passed|failed" $OUT/formats/bench.txt | cut -c1-400
fi
t done
true
