#!/usr/bin/env bash
# issue 24 item 6 (W4A8 Triton kernel): GPU bytes tests + the W4A8 bench row (ours vs comfy-kitchen CUDA, same run).
# Queued in session 4 (2026-12-07), NOT run: no GPU machine could be started. Run from the repo root after the lead's set-up (wheels in /tmp/site). Writes $OUT/w4a8/. <= ~105 s (caps 45+15+45).
set -u
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
O="$OUT/w4a8"; mkdir -p "$O"
git log --oneline -1 > "$O/commit.txt" 2>&1
nvidia-smi -L > "$O/device.txt" 2>&1
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())" >> "$O/device.txt" 2>&1
# 1. correctness on the card: probes, edges, fitted codebooks, the format's bytes, pipelined convert + verify
T=tests/test_gpu_new_formats.py
timeout 45 python3 -m pytest -c pyproject.toml -m gpu -q -p no:randomly -p no:cacheprovider -rfE -k "w4a8" \
  $T::test_w4a8_triton_kernel_serves_cuda_and_knows_torchs_sum_order_there \
  $T::test_w4a8_triton_rotated_part_edges_are_kitchens_eager_bytes_on_the_device \
  $T::test_w4a8_whole_quantize_fitted_codebooks_are_kitchens_eager_bytes_on_the_device \
  $T::test_w4a8_non_finite_weight_is_refused_and_an_overflowing_rotation_is_kitchens_bytes \
  $T::test_cuda_bytes_are_kitchens_eager_bytes_on_the_device $T::test_convert_device_cuda_pipelined_passes_verify \
  > "$O/gpu-tests.log" 2>&1
echo "gpu-tests rc=$?" | tee -a "$O/gpu-tests.log"; tail -3 "$O/gpu-tests.log"
# 2. where the time goes (torch.profiler, ours vs kitchen CUDA, 14336x5120 bf16)
timeout 15 python3 benchmarks/w4a8_profile.py > "$O/profile.log" 2>&1; echo "profile rc=$?"; tail -2 "$O/profile.log"
# 3. bench: HBM copy, w4a8 quantgate vs kitchen CUDA (14336x5120 and 5120x5120 bf16), kernel tilings, summary
QG_NEW_SHAPES=all QG_BENCH_OUT="$O/bench-summary.json" timeout 45 python3 -m pytest -c pyproject.toml \
  -m "bench and gpu" -q -p no:randomly -p no:cacheprovider -s benchmarks/test_bench_new_formats_gpu.py \
  -k "hbm or (w4a8 and (quantgate or kitchen-cuda)) or w4a8_tiling or summary" \
  --benchmark-json "$O/bench-pytest.json" > "$O/bench.log" 2>&1
echo "bench rc=$?" | tee -a "$O/bench.log"; tail -3 "$O/bench.log"
true
# Expects: one CUDA GPU (sm_90, H100/H200), torch 2.x + triton, comfy-kitchen 0.2.40 + pytest + pytest-benchmark
# importable (e.g. wheels in /tmp/site), ~80-105 s. The GPU tests enable the opt-in Triton path themselves
# (w4a8_int8.TRITON); the bench's test_bench_w4a8_tiling does too; its "quantgate" rows are the default (torch ops).
# Decide from the output: bit-exact on the card (gpu-tests.log all passed, bench rows bit_exact true) and faster than
# kitchen CUDA (bench-summary.json, w4a8 tiling rows vs "w4a8-int8 kitchen-cuda") -> make the Triton path the default
# (quant/formats/w4a8_int8.py TRITON = True) and the fastest bit-exact variant its CFG default.
