"""quantgate's ComfyUI nodes (copied into the server's custom_nodes by the render gate).

* ``QGRandomConditioning``: seeded random text conditioning of a given token count and width, so
  renders need no text encoder (the encoders cannot be made small). Same seed -> same tensor on
  every machine (CPU generator).

Room for later nodes (calibration issue): activation capture for input-scale calibration, and
activation emulation (quantize activations with a given ``input_scale`` to see its effect on CPU).
Add them below and to ``NODE_CLASS_MAPPINGS``; the harness installs every ``*.py`` of this folder.
"""
import torch


class QGRandomConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFF}),
            "tokens": ("INT", {"default": 16, "min": 1, "max": 4096}),
            "dim": ("INT", {"default": 4096, "min": 1, "max": 65536}),
            "scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "quantgate"
    DESCRIPTION = "Seeded random conditioning (replaces a text encoder in quantgate's smoke renders)."

    def make(self, seed, tokens, dim, scale):
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        cond = torch.randn((1, int(tokens), int(dim)), generator=gen, dtype=torch.float32) * float(scale)
        return ([[cond, {}]],)


NODE_CLASS_MAPPINGS = {"QGRandomConditioning": QGRandomConditioning}
NODE_DISPLAY_NAME_MAPPINGS = {"QGRandomConditioning": "quantgate: random conditioning (seeded)"}
