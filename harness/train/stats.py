"""Activation statistics of a WAN model while it samples like the render workflow (no server).

Every ``nn.Linear``'s input is recorded over the render plan's sampling (euler, ``simple``, 6 steps,
cfg 1; conditioning seeds 1-3; sampler seeds 1-3; 8x8 and 8x12 latents): ``amax``, ``p99.9`` of
``|x|``, and the per-input-channel amax, from which **outlier channels** are counted: channels whose
amax exceeds ``OUTLIER_X`` times the median channel amax of that layer. WAN's Linears mostly see
normalised inputs, so the residual stream (each block's output) is recorded too (``resid.N``):
that is where magnitudes grow with depth.
"""
from __future__ import annotations

OUTLIER_X = 6.0


def sample_with_hooks(model, hooks, classes, seeds, sizes, steps: int = 6) -> None:
    """Sample every class x seed x size like the workflow with forward hooks installed (removed afterwards,
    also on error); ``hooks`` are the handles returned by ``register_forward_(pre_)hook``."""
    from .tiny_model import sample
    try:
        for c in classes:
            for s in seeds:
                for h, w in sizes:
                    sample(model, c, s, h, w, steps)
    finally:
        for h in hooks:
            h.remove()


def measure(model, classes=(1, 2, 3), seeds=(1, 2, 3), sizes=((8, 8), (8, 12)), steps: int = 6) -> dict:
    import torch
    rec: dict[str, dict] = {}

    def hook(name):
        def fn(mod, inp):
            x = inp[0].detach().float().reshape(-1, inp[0].shape[-1]).abs()
            r = rec.setdefault(name, {"chan": torch.zeros(x.shape[-1]), "vals": []})
            r["chan"] = torch.maximum(r["chan"], x.amax(0))
            r["vals"].append(x.reshape(-1))
        return fn

    hs = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for i, blk in enumerate(model.blocks):
        pre = hook(f"resid.{i}")
        hs.append(blk.register_forward_hook(lambda mod, inp, out, pre=pre: pre(mod, (out,))))
    sample_with_hooks(model, hs, classes, seeds, sizes, steps)
    out = {}
    for name, r in rec.items():
        v = torch.cat(r["vals"])
        chan = r["chan"]
        med = float(chan.median())
        ratio = chan / max(med, 1e-12)
        out[name] = {"amax": float(v.max()), "p99.9": float(torch.quantile(v[:2_000_000], 0.999)),
                     "p50": float(v[:2_000_000].median()), "channels": int(chan.numel()),
                     "outlier_channels": int((ratio > OUTLIER_X).sum()), "max_channel_ratio": float(ratio.max()),
                     "top_channels": [int(i) for i in torch.argsort(chan, descending=True)[:3]]}
    return out


def format_table(stats: dict) -> str:
    rows = [f"{'layer (input of)':<28} {'amax':>9} {'p99.9':>8} {'p50':>7} {'amax/p99.9':>10} "
            f"{'outl.ch':>7} {'max ch/med':>10}"]
    for n, s in stats.items():
        rows.append(f"{n:<28} {s['amax']:>9.2f} {s['p99.9']:>8.2f} {s['p50']:>7.3f} "
                    f"{s['amax'] / max(s['p99.9'], 1e-12):>10.1f} {s['outlier_channels']:>7} {s['max_channel_ratio']:>10.1f}")
    return "\n".join(rows)
