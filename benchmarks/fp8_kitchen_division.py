"""Why comfy-kitchen 0.2.40's GPU FP8 kernels differ from quantgate's FP8 bytes in a few codes (issue 25, item 5):
one GPU run that isolates the arithmetic.

    python3 benchmarks/fp8_kitchen_division.py --out fp8-division.json

Both kitchen GPU kernels compute ``x.float() / scale``, clamp to +-448 and convert with round-to-nearest-even:
the Triton kernel with Triton's default fp32 ``/`` (lowered to PTX ``div.full.f32``: an approximate division,
up to 2 ulp off) and the CUDA kernel with C++ ``/`` compiled under ``--use_fast_math`` (``-prec-div=false``:
approximate too). quantgate divides with IEEE fp32 division (torch on CPU and CUDA, and comfy-quants, which
runs torch). This script takes the inputs of tests/test_gpu.py::test_fp8_bytes_against_comfy_kitchen_gpu_kernels
and compares, code by code, kitchen's CUDA and Triton bytes with these reproductions of the same formula:

* ``ieee``: quantgate's CPU bytes (fp32 division, RNE, saturate);
* ``ieee_cuda``: torch on the GPU, ``(x.float() / s).clamp(-448, 448).to(e4m3)``;
* ``triton_div``: a Triton kernel that stores ``x.to(f32) / s`` as fp32 (Triton's default division), then
  clamp + RNE in torch;  ``triton_div_rn``: the same with ``tl.math.div_rn`` (correctly rounded);
* ``mul_rcp``: ``x.float() * fp32(1 / s)`` (a correctly rounded reciprocal, then a multiply);
* ``mul_rcp_gpu``: ``x.float() * r`` with ``r`` = Triton's ``1.0 / s`` on the card.

For every differing element it records whether the codes are one e4m3 step apart and how far (in fp32 ulps
of the quotient) the exact quotient x/s (float64) lies from the nearest e4m3 rounding midpoint.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quant.kernels import fp8  # noqa: E402

SHAPES = [(3072, 3072), (14336, 3072), (33, 50)]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def _inputs(shape, dtype):
    gen = torch.Generator(device="cuda").manual_seed(sum(shape))   # as tests/test_gpu.py
    x = torch.randn(shape, device="cuda", generator=gen) * 0.05
    x[:, :7] *= 30
    return x.to(dtype)


def _triton_quotients(x, s):
    import triton
    import triton.language as tl

    @triton.jit
    def div_kernel(x_ptr, s_ptr, out_ptr, out_rn_ptr, rcp_ptr, n, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        scale = tl.load(s_ptr)
        v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, v / scale, mask=mask)
        tl.store(out_rn_ptr + offs, tl.math.div_rn(v, scale), mask=mask)
        tl.store(rcp_ptr + offs, v * 0.0 + 1.0 / scale, mask=mask)

    xf = x.contiguous().view(-1)
    out = torch.empty(xf.shape, dtype=torch.float32, device=x.device)
    out_rn = torch.empty_like(out)
    rcp = torch.empty_like(out)
    div_kernel[(triton.cdiv(xf.numel(), 1024),)](xf, s, out, out_rn, rcp, xf.numel(), BLOCK=1024)
    return out.view(x.shape), out_rn.view(x.shape), rcp[:1].clone()


def _to_e4m3(q):
    return q.clamp(-fp8.FP8_MAX, fp8.FP8_MAX).to(torch.float8_e4m3fn).view(torch.uint8)


def _midpoint_ulps(x, s, idx):
    """fp32 ulps (of the quotient) between the exact x/s and the nearest e4m3 rounding midpoint, per element."""
    q = (x.reshape(-1)[idx].double() / s.double()).abs().clamp(max=fp8.FP8_MAX)
    qf = q.float()
    m = qf.to(torch.float8_e4m3fn).view(torch.uint8).to(torch.int16)          # the nearest code's magnitude
    val = lambda c: c.clamp(0, 0x7E).to(torch.uint8).view(torch.float8_e4m3fn).double()   # noqa: E731
    g = val(m)
    dn = torch.where(m > 0, (q - (g + val(m - 1)) / 2).abs(), torch.full_like(q, float("inf")))
    up = torch.where(m < 0x7E, (q - (g + val(m + 1)) / 2).abs(), torch.full_like(q, float("inf")))
    d = torch.minimum(up, dn)
    ulp = torch.nextafter(qf, torch.full_like(qf, float("inf"))).double() - qf.double()
    return d / ulp


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    import comfy_kitchen as ck
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "kitchen": getattr(ck, "__version__", "0.2.40"),
           "backends": {k: v.get("available") for k, v in ck.list_backends().items()}, "cases": []}
    try:
        import triton
        res["triton"] = triton.__version__
    except ImportError:
        res["triton"] = None
    for shape in SHAPES:
        for dtype in DTYPES:
            x = _inputs(shape, dtype)
            q, s = fp8.quantize(x)
            ours_cpu = fp8.quantize(x.cpu())[0].view(torch.uint8)
            case = {"shape": list(shape), "dtype": str(dtype).split(".")[-1], "numel": x.numel(),
                    "scale": float(s), "ours_cpu_eq_ours_cuda": bool(torch.equal(q.view(torch.uint8).cpu(), ours_cpu))}
            kit = {}
            for b in ("cuda", "triton"):
                if ck.list_backends().get(b, {}).get("available"):
                    with ck.use_backend(b):
                        kit[b] = ck.quantize_per_tensor_fp8(x, s).view(torch.uint8)
            xf = x.float()
            rep = {"ieee": ours_cpu.to(x.device),
                   "ieee_cuda": _to_e4m3(xf / s),
                   "mul_rcp": _to_e4m3(xf * (1.0 / s.double()).float()),
                   }
            if res["triton"]:
                tq, tq_rn, r = _triton_quotients(x, s)
                rep["triton_div"] = _to_e4m3(tq)
                rep["triton_div_rn"] = _to_e4m3(tq_rn)
                rep["mul_rcp_gpu"] = _to_e4m3(xf * r)
                case["triton_rcp_eq_ieee_rcp"] = bool(float(r) == float((1.0 / s.double()).float()))
                case["triton_div_eq_ieee_div_values"] = int((tq != xf / s).sum())
                case["triton_div_eq_mul_rcp_gpu_values"] = int((tq != xf * r).sum())
            for b, kq in kit.items():
                row = {}
                for name, rq in rep.items():
                    d = (kq != rq).reshape(-1)
                    n = int(d.sum())
                    row[name] = n
                    if name == "ieee" and n:
                        idx = d.nonzero().squeeze(1)
                        step = (kq.reshape(-1)[idx].to(torch.int16) - rq.reshape(-1)[idx].to(torch.int16)).abs()
                        mu = _midpoint_ulps(x, s, idx)
                        row["ieee_diff_one_step"] = bool((step == 1).all())
                        row["ieee_diff_max_ulps_from_midpoint"] = float(mu.max())
                        row["ieee_diff_exact_ties"] = int((mu == 0).sum())
                case[f"kitchen_{b}_differs_from"] = row
            # how many elements lie within 2 ulps of a midpoint at all (the coin flips available)
            qd = (xf.double() / s.double()).reshape(-1)
            sample = torch.arange(0, qd.numel(), max(1, qd.numel() // 2_000_000), device=qd.device)
            mu = _midpoint_ulps(x, s, sample)
            case["share_within_2_ulps_of_midpoint"] = float((mu <= 2).double().mean())
            case["share_exact_ties"] = float((mu == 0).double().mean())
            res["cases"].append(case)
            print(json.dumps(case), flush=True)
            Path(a.out).write_text(json.dumps(res, indent=1))
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
