"""Record a learned-rounding calibration file from a WAN model sampling like the render workflow.

Every quantized ``nn.Linear``'s input rows are captured with forward pre-hooks while the model samples
(``harness.train.tiny_model.sample``: euler, simple schedule, cfg 1) for the given classes and seeds;
at most ``rows`` rows per layer are kept (a seeded sample), and written with
``quant.activations.samples.save_samples`` (``<layer>.input`` tensors). No ComfyUI server: the model is
ComfyUI's own WanModel class with the checkpoint's weights.
"""
from __future__ import annotations


def record(model, layers, *, classes=(1, 2, 3), seeds=(11, 12, 13), sizes=((8, 8), (8, 12)), steps: int = 6,
           rows: int = 4096, seed: int = 0) -> dict:
    import torch

    from harness.train.stats import sample_with_hooks
    want = set(layers)
    got: dict[str, list] = {}

    def hook(name):
        def fn(mod, inp):
            got.setdefault(name, []).append(inp[0].detach().float().reshape(-1, inp[0].shape[-1]).clone())
        return fn

    hs = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules()
          if isinstance(m, torch.nn.Linear) and n in want]
    sample_with_hooks(model, hs, classes, seeds, sizes, steps)
    out = {}
    g = torch.Generator().manual_seed(seed)
    for name in sorted(got):
        x = torch.cat(got[name])
        if x.shape[0] > rows:
            x = x[torch.randperm(x.shape[0], generator=g)[:rows].sort().values]
        out[name] = x
    return out


def record_file(checkpoint, layers, out, **kw):
    """Load ``checkpoint`` into the tiny WAN class, record, write ``out``; returns the per-layer row counts."""
    from harness.train.tiny_model import load_model
    from quant.activations.samples import save_samples
    acts = record(load_model(checkpoint), layers, **kw)
    save_samples(acts, out)
    return {k: int(v.shape[0]) for k, v in acts.items()}
