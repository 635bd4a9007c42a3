"""(GPU box, not CI) Where the time of one w4a8-int8 quantize goes on the card (torch.profiler, CUDA time per kernel), ours and
comfy-kitchen's CUDA backend, 14336x5120 bf16. Writes $OUT/w4a8/profile.txt."""
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, ".")
os.environ["QUANTGATE_W4A8_TRITON"] = "1"       # the opt-in Triton path (the default is the torch ops)
from quant import formats  # noqa: E402

out = os.path.join(os.environ.get("OUT", "/tmp"), "w4a8", "profile.txt")
x = (torch.randn(14336, 5120, device="cuda") * 0.02).to(torch.bfloat16)
f = formats.get("w4a8-int8")
conf = f.layer_config(False, None, tuple(x.shape))


def kitchen():
    import comfy_kitchen as ck
    from comfy_kitchen.tensor import quantize_w4a8_int8_weight
    with ck.use_backend("cuda"):
        return quantize_w4a8_int8_weight(x, 16, conf["convrot_groupsize"])


lines = []
for name, fn in (("quantgate", lambda: f.quantize(x)), ("kitchen-cuda", kitchen)):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    lines.append(f"==== {name}\n" + prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
    ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(10):
        torch.cuda.synchronize()
        ev0.record()
        fn()
        ev1.record()
        torch.cuda.synchronize()
        ts.append(ev0.elapsed_time(ev1))
    lines.append(f"{name}: wall (events, synchronised before each call) median {sorted(ts)[5]:.3f} ms of 10")
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(l for l in lines if "median" in l))
