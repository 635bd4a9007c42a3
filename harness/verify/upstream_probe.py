"""Load a checkpoint with an upstream ComfyUI tree's OWN loader and report what it built (run by that tree's
python, not quantgate's: ``python upstream_probe.py COMFY_ROOT SOURCE CHECKPOINT...``; prints one JSON object per
checkpoint, keyed by path).

It reports: ComfyUI's version, whether it chose mixed-precision ops and which ops it calls native / emulated (its
own log lines), the ``unet missing`` / ``unet unexpected`` keys, and for every Linear whose weight ComfyUI built as
a QuantizedTensor: its layout, the format, and the relative Frobenius error of the weight ComfyUI computes with
(``weight.dequantize()``, kitchen inside ComfyUI) against the source tensor. Uses only the upstream tree, torch,
safetensors and its own kitchen: nothing of quantgate is imported here.
"""
from __future__ import annotations

import json
import logging
import os
import sys


def main(root: str, source: str, *ckpts: str) -> dict:
    sys.argv = [sys.argv[0], "--cpu", "--disable-all-custom-nodes"]
    sys.path.insert(0, root)
    os.chdir(root)
    logs: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record):
            logs.append(record.getMessage())

    logging.getLogger().addHandler(Grab())
    logging.getLogger().setLevel(logging.INFO)
    import torch
    from safetensors import safe_open

    import comfy.options
    comfy.options.enable_args_parsing()
    import comfy.sd  # noqa: E402
    import comfyui_version
    from comfy.quant_ops import QuantizedTensor
    src = safe_open(source, "pt")
    out = {}
    for ckpt in ckpts:
        logs.clear()
        patcher = comfy.sd.load_diffusion_model(ckpt)
        model = patcher.model.diffusion_model
        layers = {}
        for name, mod in model.named_modules():
            w = getattr(mod, "weight", None)
            if isinstance(w, QuantizedTensor):
                eff = w.dequantize().to(torch.float32)
                ref = src.get_tensor(name + ".weight").to(torch.float32)
                rel = float((eff - ref).norm() / ref.norm().clamp(min=1e-30)) if eff.shape == ref.shape else None
                layers[name] = {"layout": w._layout_cls, "format": getattr(mod, "quant_format", None),
                                "shape": list(eff.shape), "rel_error": rel}
        out[ckpt] = {
            "comfy_version": comfyui_version.__version__,
            "mixed_precision": any("Using mixed precision operations" in m for m in logs),
            "ops_line": next((m for m in logs if m.startswith("Native ops")), None),
            "missing": [m for m in logs if m.startswith("unet missing")],
            "unexpected": [m for m in logs if m.startswith("unet unexpected")],
            "layers": layers,
        }
        del patcher, model
    return out

if __name__ == "__main__":
    out = main(*sys.argv[1:])
    sys.stdout.write("\nQUANTGATE-PROBE " + json.dumps(out) + "\n")
