"""Launch-configuration sweep of the Triton quantize kernels on the GPU box (one call; not a test).

Every configuration must give the same bits as the eager reference on the benchmark weight
(14336x5120 bf16) and on an odd shape; the fastest (device-event median, L2 flushed) wins.
Prints the table to stderr and the winning QUANTGATE_TRITON_CFG string to stdout:

    export QUANTGATE_TRITON_CFG=$(python3 benchmarks/gpu_sweep.py 2> sweep.log)
"""
import itertools
import math
import sys

import torch
import triton.testing

from quant.kernels import fp8, nvfp4
from quant.kernels import triton_quant as tq


def med_ms(fn):
    return float(triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median"))


def main():
    g = torch.Generator(device="cuda").manual_seed(1)
    big = ((torch.randn(14336, 5120, device="cuda", generator=g) * 0.02)).to(torch.bfloat16)
    odd = ((torch.randn(1003, 777, device="cuda", generator=g) * 3)).to(torch.bfloat16)
    ref = {}
    for name, x in (("big", big), ("odd", odd)):
        q, s = fp8.quantize(x, check_finite=False)
        p, bs, s2 = nvfp4.quantize(x, check_finite=False)
        ref[name] = (q.view(torch.uint8), s, p, bs.view(torch.uint8), s2)
    n = big.numel()
    bytes_fp8, bytes_nv = n * 3, n * 2 + n // 2 + n // 16
    base = dict(tq.CFG)
    rows = []

    def check(kind):
        for name, x in (("big", big), ("odd", odd)):
            r = ref[name]
            if kind == "fp8":
                q, s, _ = tq.quantize_fp8_async(x)
                ok = torch.equal(q.view(torch.uint8), r[0]) and torch.equal(s, r[1])
            else:
                p, bs, s2, _ = tq.quantize_nvfp4_async(x)
                ok = torch.equal(p, r[2]) and torch.equal(bs.view(torch.uint8), r[3]) and torch.equal(s2, r[4])
            if not ok:
                return False
        return True

    fp8_space = [dict(fp8_block=b, fp8_warps=8, fp8_per_sm=ps, fp8_l2=l2)
                 for b, ps, l2 in itertools.product((4096, 8192), (4, 8), (0, 1))]
    nv_space = [dict(nv_bm=bm, nv_bk=bk, nv_warps=w, nv_per_sm=ps, nv_enc=1, nv_l2=l2, nv_fastdiv=fd)
                for (bm, bk, w, ps), l2, fd in itertools.product(
                    ((16, 256, 4, 16), (32, 128, 4, 16), (16, 512, 4, 16)), (0, 1), (0, 1))]
    best = {}
    for kind, space, nbytes in (("fp8", fp8_space, bytes_fp8), ("nvfp4", nv_space, bytes_nv)):
        for cfg in space:
            tq.CFG.clear()
            tq.CFG.update(base)
            tq.CFG.update(best.get("fp8", {}))
            tq.CFG.update(cfg)
            try:
                ok = check(kind)
                fn = (lambda: tq.quantize_fp8_async(big)) if kind == "fp8" else (lambda: tq.quantize_nvfp4_async(big))
                ms = med_ms(fn)
            except Exception as e:      # a config that does not compile is skipped, and said so
                print(f"{kind} {cfg}: FAILED {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
                continue
            gbs = nbytes / 1e9 / (ms / 1e3)
            rows.append((kind, cfg, ms, gbs, ok))
            print(f"{kind:6s} {cfg} {ms * 1e3:8.1f} us {gbs:8.0f} GB/s {'bit-exact' if ok else 'MISMATCH'}",
                  file=sys.stderr)
            if ok and (kind not in best or ms < best[kind + "_ms"]):
                best[kind], best[kind + "_ms"] = cfg, ms
    a = torch.empty(4 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    hbm = 2 * a.numel() / 1e9 / (med_ms(lambda: b.copy_(a)) / 1e3)
    print(f"hbm copy {hbm:,.0f} GB/s; best fp8 {best.get('fp8')} {bytes_fp8 / 1e6 / best.get('fp8_ms', math.inf):,.0f} "
          f"GB/s; best nvfp4 {best.get('nvfp4')} {bytes_nv / 1e6 / best.get('nvfp4_ms', math.inf):,.0f} GB/s",
          file=sys.stderr)
    final = dict(base)
    final.update(best.get("fp8", {}))
    final.update(best.get("nvfp4", {}))
    print(",".join(f"{k}={v}" for k, v in final.items()))


if __name__ == "__main__":
    main()
