"""Architecture templates: the exact tensor names and shapes of the real models (layouts.md),
parametrised by width/depth so the same code yields full-size manifests and thin test models.

A template is an ordered list of ``(name, shape)``. Shapes are PyTorch order [out, in, ...].
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    name: str           # e.g. "wan22-ti2v-5b"
    family: str         # "wan" | "qwen_image" | "flux" | "flux2"
    params: dict
    description: str

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        return BUILDERS[self.family](**self.params)

    def thin(self, **override) -> "Arch":
        p = dict(self.params)
        p.update(override)
        return Arch(self.name + "-thin", self.family, p, self.description + " (thin)")


def wan(dim: int, ffn_dim: int, num_layers: int, in_dim: int, out_dim: int, text_dim: int = 4096,
        freq_dim: int = 256) -> list:
    D, F = dim, ffn_dim
    t = [
        ("patch_embedding.weight", (D, in_dim, 1, 2, 2)), ("patch_embedding.bias", (D,)),
        ("text_embedding.0.weight", (D, text_dim)), ("text_embedding.0.bias", (D,)),
        ("text_embedding.2.weight", (D, D)), ("text_embedding.2.bias", (D,)),
        ("time_embedding.0.weight", (D, freq_dim)), ("time_embedding.0.bias", (D,)),
        ("time_embedding.2.weight", (D, D)), ("time_embedding.2.bias", (D,)),
        ("time_projection.1.weight", (6 * D, D)), ("time_projection.1.bias", (6 * D,)),
        ("head.head.weight", (4 * out_dim, D)), ("head.head.bias", (4 * out_dim,)),
        ("head.modulation", (1, 2, D)),
    ]
    for i in range(num_layers):
        p = f"blocks.{i}."
        for a in ("self_attn", "cross_attn"):
            for x in "qkvo":
                t += [(f"{p}{a}.{x}.weight", (D, D)), (f"{p}{a}.{x}.bias", (D,))]
            t += [(f"{p}{a}.norm_q.weight", (D,)), (f"{p}{a}.norm_k.weight", (D,))]
        t += [(f"{p}norm3.weight", (D,)), (f"{p}norm3.bias", (D,)),
              (f"{p}ffn.0.weight", (F, D)), (f"{p}ffn.0.bias", (F,)),
              (f"{p}ffn.2.weight", (D, F)), (f"{p}ffn.2.bias", (D,)),
              (f"{p}modulation", (1, 6, D))]
    return t


def qwen_image(num_layers: int = 60, inner: int = 3072, joint: int = 3584, in_ch: int = 64,
               head_dim: int = 128) -> list:
    I, J = inner, joint
    t = [
        ("time_text_embed.timestep_embedder.linear_1.weight", (I, 256)),
        ("time_text_embed.timestep_embedder.linear_1.bias", (I,)),
        ("time_text_embed.timestep_embedder.linear_2.weight", (I, I)),
        ("time_text_embed.timestep_embedder.linear_2.bias", (I,)),
        ("txt_norm.weight", (J,)),
        ("img_in.weight", (I, in_ch)), ("img_in.bias", (I,)),
        ("txt_in.weight", (I, J)), ("txt_in.bias", (I,)),
        ("norm_out.linear.weight", (2 * I, I)), ("norm_out.linear.bias", (2 * I,)),
        ("proj_out.weight", (in_ch, I)), ("proj_out.bias", (in_ch,)),
    ]
    for i in range(num_layers):
        p = f"transformer_blocks.{i}."
        t += [(f"{p}img_mod.1.weight", (6 * I, I)), (f"{p}img_mod.1.bias", (6 * I,)),
              (f"{p}txt_mod.1.weight", (6 * I, I)), (f"{p}txt_mod.1.bias", (6 * I,))]
        for x in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"):
            t += [(f"{p}attn.{x}.weight", (I, I)), (f"{p}attn.{x}.bias", (I,))]
        for x in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            t += [(f"{p}attn.{x}.weight", (head_dim,))]
        for s in ("img", "txt"):
            t += [(f"{p}{s}_mlp.net.0.proj.weight", (4 * I, I)), (f"{p}{s}_mlp.net.0.proj.bias", (4 * I,)),
                  (f"{p}{s}_mlp.net.2.weight", (I, 4 * I)), (f"{p}{s}_mlp.net.2.bias", (I,))]
    return t


def flux2(hidden: int, double: int, single: int, ctx: int, guidance: bool, in_ch: int = 128) -> list:
    H, M = hidden, 3 * hidden
    t = [("img_in.weight", (H, in_ch)), ("txt_in.weight", (H, ctx)),
         ("time_in.in_layer.weight", (H, 256)), ("time_in.out_layer.weight", (H, H))]
    if guidance:
        t += [("guidance_in.in_layer.weight", (H, 256)), ("guidance_in.out_layer.weight", (H, H))]
    t += [("double_stream_modulation_img.lin.weight", (6 * H, H)),
          ("double_stream_modulation_txt.lin.weight", (6 * H, H)),
          ("single_stream_modulation.lin.weight", (3 * H, H)),
          ("final_layer.adaLN_modulation.1.weight", (2 * H, H)),
          ("final_layer.linear.weight", (in_ch, H))]
    for i in range(double):
        p = f"double_blocks.{i}."
        for s in ("img", "txt"):
            t += [(f"{p}{s}_attn.qkv.weight", (3 * H, H)),
                  (f"{p}{s}_attn.norm.query_norm.scale", (128,)), (f"{p}{s}_attn.norm.key_norm.scale", (128,)),
                  (f"{p}{s}_attn.proj.weight", (H, H)),
                  (f"{p}{s}_mlp.0.weight", (2 * M, H)), (f"{p}{s}_mlp.2.weight", (H, M))]
    for i in range(single):
        p = f"single_blocks.{i}."
        t += [(f"{p}linear1.weight", (3 * H + 2 * M, H)), (f"{p}linear2.weight", (H, H + M)),
              (f"{p}norm.query_norm.scale", (128,)), (f"{p}norm.key_norm.scale", (128,))]
    return t


def flux1(hidden: int = 3072, double: int = 19, single: int = 38, ctx: int = 4096, vec: int = 768,
          guidance: bool = True) -> list:
    H = hidden
    lin = lambda n, o, i: [(f"{n}.weight", (o, i)), (f"{n}.bias", (o,))]  # noqa: E731
    t = lin("img_in", H, 64) + lin("time_in.in_layer", H, 256) + lin("time_in.out_layer", H, H)
    t += lin("vector_in.in_layer", H, vec) + lin("vector_in.out_layer", H, H)
    if guidance:
        t += lin("guidance_in.in_layer", H, 256) + lin("guidance_in.out_layer", H, H)
    t += lin("txt_in", H, ctx) + lin("final_layer.linear", 64, H) + lin("final_layer.adaLN_modulation.1", 2 * H, H)
    for i in range(double):
        p = f"double_blocks.{i}."
        for s in ("img", "txt"):
            t += lin(f"{p}{s}_mod.lin", 6 * H, H) + lin(f"{p}{s}_attn.qkv", 3 * H, H)
            t += [(f"{p}{s}_attn.norm.query_norm.scale", (128,)), (f"{p}{s}_attn.norm.key_norm.scale", (128,))]
            t += lin(f"{p}{s}_attn.proj", H, H) + lin(f"{p}{s}_mlp.0", 4 * H, H) + lin(f"{p}{s}_mlp.2", H, 4 * H)
    for i in range(single):
        p = f"single_blocks.{i}."
        t += lin(f"{p}linear1", 7 * H, H) + lin(f"{p}linear2", H, 5 * H)
        t += [(f"{p}norm.query_norm.scale", (128,)), (f"{p}norm.key_norm.scale", (128,))]
        t += lin(f"{p}modulation.lin", 3 * H, H)
    return t


BUILDERS = {"wan": wan, "qwen_image": qwen_image, "flux2": flux2, "flux": flux1}

ARCHS: dict[str, Arch] = {a.name: a for a in [
    Arch("wan22-ti2v-5b", "wan", dict(dim=3072, ffn_dim=14336, num_layers=30, in_dim=48, out_dim=48),
         "Wan 2.2 TI2V 5B"),
    Arch("wan22-t2v-a14b", "wan", dict(dim=5120, ffn_dim=13824, num_layers=40, in_dim=16, out_dim=16),
         "Wan 2.2 T2V A14B (high or low noise expert)"),
    Arch("wan22-i2v-a14b", "wan", dict(dim=5120, ffn_dim=13824, num_layers=40, in_dim=36, out_dim=16),
         "Wan 2.2 I2V A14B (high or low noise expert)"),
    Arch("wan21-t2v-14b", "wan", dict(dim=5120, ffn_dim=13824, num_layers=40, in_dim=16, out_dim=16),
         "Wan 2.1 T2V 14B"),
    Arch("qwen-image", "qwen_image", dict(num_layers=60), "Qwen-Image (incl. 2512; Edit 2509/2511 same tensors)"),
    Arch("flux2-dev", "flux2", dict(hidden=6144, double=8, single=48, ctx=15360, guidance=True), "FLUX.2 dev"),
    Arch("flux2-klein-9b", "flux2", dict(hidden=4096, double=8, single=24, ctx=12288, guidance=False),
         "FLUX.2 klein 9B"),
    Arch("flux2-klein-4b", "flux2", dict(hidden=3072, double=5, single=20, ctx=7680, guidance=False),
         "FLUX.2 klein 4B"),
    Arch("flux1-dev", "flux", dict(), "FLUX.1 dev"),
]}

# Thin variants used by tests and the demo (real names; widths shrunk where ComfyUI allows).
THIN: dict[str, Arch] = {
    # thin WAN 2.2 5B: in/out 48, head_dim 128 (dim % 128 == 0), text_dim 4096
    "wan22-ti2v-5b-thin": ARCHS["wan22-ti2v-5b"].thin(dim=256, ffn_dim=512, num_layers=2),
    # thin WAN 2.1 T2V: what ComfyUI 0.3.75 detects and renders on a CPU (comfy_in_ci.md)
    "wan21-t2v-thin": ARCHS["wan21-t2v-14b"].thin(dim=256, ffn_dim=512, num_layers=1),
    # the trained tiny reference model (harness/train): 1 head of 128, 6 blocks, so depth statistics exist
    "wan21-t2v-tiny": ARCHS["wan21-t2v-14b"].thin(dim=128, ffn_dim=512, num_layers=6),
    "wan22-t2v-a14b-thin": ARCHS["wan22-t2v-a14b"].thin(dim=256, ffn_dim=512, num_layers=2),
    # thin Qwen-Image block structure (converter tests only: ComfyUI needs the real 3072 width)
    "qwen-image-thin": ARCHS["qwen-image"].thin(num_layers=2, inner=256, joint=512),
    "flux2-klein-4b-thin": ARCHS["flux2-klein-4b"].thin(hidden=256, double=1, single=1, ctx=512),
    # the nightly's largest layouts that fit the GPU box's 64 GB disk (real width, fewer blocks)
    "qwen-image-nightly": ARCHS["qwen-image"].thin(num_layers=16),
    "qwen-image-1block": ARCHS["qwen-image"].thin(num_layers=1),       # the Qwen nightly's CPU dry run
    "wan22-t2v-a14b-nightly": ARCHS["wan22-t2v-a14b"].thin(num_layers=10),
}

ALL = {**ARCHS, **THIN}


def get(name: str) -> Arch:
    try:
        return ALL[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(ALL))}") from None


def detect(names) -> str | None:
    """Family of a state dict from its key names (the keys ComfyUI / convert.py look at)."""
    s = set(names)
    if "head.modulation" in s and any(n.startswith("blocks.0.") for n in s):
        return "wan"
    if "txt_norm.weight" in s and any(n.startswith("transformer_blocks.0.") for n in s):
        return "qwen_image"
    if "double_stream_modulation_img.lin.weight" in s:
        return "flux2"
    if any(n.startswith("double_blocks.0.") for n in s):
        return "flux"
    return None


def model_type(shapes: dict[str, tuple]) -> str | None:
    """Short model name for header metadata (KJ files carry e.g. ``model_type: TI2V-5B``)."""
    fam = detect(shapes)
    if fam == "wan":
        in_dim = shapes.get("patch_embedding.weight", (0, 0))[1]
        dim = shapes.get("head.modulation", (0, 0, 0))[-1]
        if in_dim == 48:
            return "TI2V-5B" if dim == 3072 else "TI2V"
        kind = {16: "T2V", 36: "I2V"}.get(in_dim, "WAN")
        return f"{kind}-A14B" if dim == 5120 else kind
    return {"qwen_image": "Qwen-Image", "flux": "FLUX.1", "flux2": "FLUX.2"}.get(fam or "")
