"""Time WAN 2.1 VAE decode (real-size random-weight decoder, harness/fixtures/wan_vae.py) in bf16 vs fp8-cast on a
CUDA GPU, without pytest (for a one-shot run on the GPU box; the pytest-benchmark form is
benchmarks/test_bench_vae_decode.py). Usage: python benchmarks/vae_decode_timing.py OUT.json [BUDGET_S]

Interleaves the two variants (bf16, fp8, bf16, fp8, ...) after one warm-up each; stops starting new
measurements when BUDGET_S (default 90) is spent. Latents are [1, 16, T, 60, 104] (480x832 output,
1 + 4(T-1) frames)."""
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from harness.fixtures import wan_vae  # noqa: E402


def main():
    out = Path(sys.argv[1])
    budget = float(sys.argv[2]) if len(sys.argv) > 2 else 90.0
    t0 = time.monotonic()
    dev = "cuda"
    rec = {"device": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
           "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
           "what": "WAN 2.1 VAE decoder (dim 96, z 16; harness/fixtures/wan_vae.py), random weights, whole clip per pass; "
                   "fp8 = conv weights stored float8_e4m3fn, cast to bf16 in every forward (ComfyUI manual_cast)",
           "cases": []}
    models = {"bf16": wan_vae.build(device=dev, fp8=False), "fp8-cast": wan_vae.build(device=dev, fp8=True)}
    rec["weight_bytes"] = {k: wan_vae.weight_bytes(m) for k, m in models.items()}
    print(f"models ready in {time.monotonic() - t0:.1f} s: {rec['weight_bytes']}", flush=True)

    def decode(m, z):
        torch.cuda.synchronize()
        t = time.perf_counter()
        y = m(z)
        torch.cuda.synchronize()
        return time.perf_counter() - t, y

    for t_lat, reps in ((5, 5), (21, 3)):
        if time.monotonic() - t0 > budget * 0.5:
            print(f"skipping T={t_lat}: budget", flush=True)
            break
        g = torch.Generator(device=dev).manual_seed(1)
        z = torch.randn(1, 16, t_lat, 60, 104, device=dev, generator=g, dtype=torch.bfloat16)
        case = {"latent": list(z.shape), "frames": 1 + 4 * (t_lat - 1), "size": [832, 480], "times_s": {}, "peak_gib": {}}
        outs = {}
        for k, m in models.items():                       # warm-up (cuDNN algorithm choice, allocator)
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            with torch.inference_mode():
                w, outs[k] = decode(m, z)
            case["peak_gib"][k] = round((torch.cuda.max_memory_allocated() - base) / 2**30, 2)
            case.setdefault("warmup_s", {})[k] = round(w, 3)
            case["times_s"][k] = []
        a, b = outs["bf16"].float(), outs["fp8-cast"].float()
        case["output_shape"] = list(a.shape)
        case["fp8_vs_bf16_rel_rms"] = round(((a - b).pow(2).mean().sqrt() / a.pow(2).mean().sqrt()).item(), 5)
        del outs, a, b
        for i in range(reps):
            if time.monotonic() - t0 > budget:
                break
            for k, m in models.items():
                with torch.inference_mode():
                    dt, y = decode(m, z)
                del y
                case["times_s"][k].append(round(dt, 4))
        med = {k: statistics.median(v) for k, v in case["times_s"].items() if v}
        case["median_s"] = med
        if len(med) == 2:
            case["fp8_over_bf16"] = round(med["fp8-cast"] / med["bf16"], 3)
        rec["cases"].append(case)
        print(json.dumps(case), flush=True)
        torch.cuda.empty_cache()
    rec["wall_s"] = round(time.monotonic() - t0, 1)
    out.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"wrote {out} after {rec['wall_s']} s", flush=True)


if __name__ == "__main__":
    main()
