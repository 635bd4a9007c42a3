"""Non-transformer checkpoints: recognise VAEs and text encoders from their tensor names and shapes,
and say which of their modules ComfyUI's quantized ops can consume.

Facts (ComfyUI source, ../shared/comfyui/ComfyUI = 0.33.0, and the embedded 0.3.75):

* **WAN VAE** (``comfy/sd.py``: ``decoder.middle.0.residual.0.gamma`` present; WAN 2.2 when
  ``decoder.upsamples.0.upsamples.0.residual.2.weight`` is, else 2.1 with ``dim`` =
  ``decoder.head.0.gamma.shape[0]``). ``comfy/ldm/wan/vae.py`` / ``vae2_2.py`` build it with
  ``comfy.ops.disable_weight_init``: CausalConv3d (5-D weights), Conv2d (4-D: resample convs, and the
  attention's ``to_qkv``/``proj``, which are 1x1 convs, not Linears), RMS_norm ``gamma``. There is
  **no** Linear and no quantized op in it: an fp8 weight is value-cast to the VAE dtype on load (no
  scale applied, precision lost, no memory kept, no speed-up).
* **T5 / UMT5 encoder** (``comfy/text_encoders/t5.py``; ``encoder.block.N.layer.0.SelfAttention.q``,
  UMT5 has a ``relative_attention_bias`` in every block, T5 only in block 0). Loaded through
  ``sd1_clip`` with ``mixed_precision_ops`` when the file declares quantization: the Linears
  (``SelfAttention.{q,k,v,o}``, ``DenseReluDense.{wi,wi_0,wi_1,wo}``) take fp8/nvfp4 (weight-only:
  ``full_precision_mm`` is forced); the Embeddings (``shared``, ``relative_attention_bias``) only from a
  ComfyUI whose mixed-precision ops have an Embedding (0.33: fp8 / int8_tensorwise; 0.3.75: none);
  ``layer_norm`` / ``final_layer_norm`` (T5LayerNorm) never.

Header only: works on any object with ``.dtype`` and ``.shape`` per name.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

FP8 = ("F8_E4M3", "F8_E5M2")
QUANT_STORAGE = FP8 + ("U8", "I8")
T5_Q = "encoder.block.0.layer.0.SelfAttention.q.weight"
T5_LINEAR = re.compile(r"\.(SelfAttention\.[qkvo]|DenseReluDense\.(wi|wi_0|wi_1|wo))$")
T5_EMBED = re.compile(r"(^|\.)(shared|relative_attention_bias)$")
T5_NORM = re.compile(r"(layer_norm|final_layer_norm)$")

# module kind -> whether ComfyUI's quantized (mixed precision) ops can consume it
CONSUMABLE = {"linear": "yes", "embedding": "ComfyUI >= the mixed-precision Embedding (0.33 tree: fp8/int8)",
              "conv3d": "no", "conv2d": "no", "conv1d": "no", "norm": "no", "other": "no"}


@dataclass
class Module:
    name: str
    kind: str                 # linear | embedding | conv3d | conv2d | conv1d | norm | other
    shape: tuple
    dtype: str

    @property
    def consumable(self) -> bool:
        return self.kind == "linear"


@dataclass
class ModelKind:
    name: str                 # wan21-vae | wan22-vae | umt5 | t5
    role: str                 # vae | text-encoder
    title: str                # human text, e.g. "WAN 2.1 VAE (z 16, dim 96)"
    prefix: str
    facts: dict = field(default_factory=dict)
    modules: list[Module] = field(default_factory=list)
    ops: str = ""             # which ComfyUI ops build it

    def counts(self) -> dict[str, int]:
        return dict(Counter(m.kind for m in self.modules))

    def quantized(self) -> list[Module]:
        return [m for m in self.modules if m.dtype in QUANT_STORAGE]

    def summary(self) -> str:
        c = self.counts()
        yes = c.get("linear", 0)
        emb = c.get("embedding", 0)
        no = ", ".join(f"{v} {k}" for k, v in sorted(c.items()) if k not in ("linear", "embedding"))
        s = f"{self.title}: {yes} Linear module(s) ComfyUI's quantized ops can consume"
        if emb:
            s += f"; {emb} Embedding(s) only where ComfyUI's mixed-precision ops have an Embedding (0.33: fp8/int8)"
        if no:
            s += f"; not quantizable in ComfyUI: {no}"
        return s

    def as_dict(self) -> dict:
        return {"kind": self.name, "role": self.role, "title": self.title, "prefix": self.prefix, "facts": self.facts,
                "ops": self.ops, "modules": self.counts(),
                "consumable_by_quantized_ops": sorted(m.name for m in self.modules if m.consumable),
                "quantized": sorted(m.name for m in self.quantized())}


def _module_kind_vae(name: str, shape: tuple) -> str:
    if name.endswith(".gamma"):
        return "norm"
    return {5: "conv3d", 4: "conv2d", 3: "conv1d"}.get(len(shape), "other")


def _vae(infos: dict, prefix: str) -> ModelKind:
    k22 = prefix + "decoder.upsamples.0.upsamples.0.residual.2.weight"
    z = infos[prefix + "conv2.weight"].shape[0] if prefix + "conv2.weight" in infos else None
    if k22 in infos:
        name, dim = "wan22-vae", infos[prefix + "encoder.conv1.weight"].shape[0] if prefix + "encoder.conv1.weight" in infos else None
        title = f"WAN 2.2 VAE (z {z}, dim {dim})"
    else:
        name = "wan21-vae"
        g = infos.get(prefix + "decoder.head.0.gamma")
        dim = g.shape[0] if g is not None else None
        title = f"WAN 2.1 VAE (z {z}, dim {dim})"
    mk = ModelKind(name, "vae", title, prefix, {"z_dim": z, "dim": dim},
                   ops="comfy.ops.disable_weight_init (no quantized ops: fp8 weights are value-cast on load)")
    for k, i in infos.items():
        if not k.startswith(prefix):
            continue
        if k.endswith(".weight") or k.endswith(".gamma"):
            base = k[: -len(".weight")] if k.endswith(".weight") else k
            mk.modules.append(Module(base, _module_kind_vae(k, tuple(i.shape)), tuple(i.shape), i.dtype))
    return mk


def _t5(infos: dict, prefix: str) -> ModelKind:
    q = infos[prefix + T5_Q]
    d_model = q.shape[1]
    blocks = {int(m.group(1)) for k in infos if (m := re.match(re.escape(prefix) + r"encoder\.block\.(\d+)\.", k))}
    umt5 = prefix + "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in infos
    vocab = infos[prefix + "shared.weight"].shape[0] if prefix + "shared.weight" in infos else None
    ff = next((infos[k].shape[0] for k in (prefix + "encoder.block.0.layer.1.DenseReluDense.wi_0.weight",
                                           prefix + "encoder.block.0.layer.1.DenseReluDense.wi.weight") if k in infos), None)
    name = "umt5" if umt5 else "t5"
    size = "-xxl" if d_model == 4096 and len(blocks) == 24 else ""
    title = f"{'UMT5' if umt5 else 'T5'}{size.upper()} text encoder ({len(blocks)} blocks, d_model {d_model}, d_ff {ff}, vocab {vocab})"
    mk = ModelKind(name + size, "text-encoder", title, prefix,
                   {"blocks": len(blocks), "d_model": d_model, "d_ff": ff, "vocab": vocab, "umt5": umt5},
                   ops="sd1_clip + comfy.ops.mixed_precision_ops when the file declares quantization (weight-only)")
    for k, i in infos.items():
        if not k.startswith(prefix) or not k.endswith(".weight"):
            continue
        base = k[: -len(".weight")]
        if T5_LINEAR.search(base) and len(i.shape) == 2:
            kind = "linear"
        elif T5_EMBED.search(base):
            kind = "embedding"
        elif T5_NORM.search(base):
            kind = "norm"
        else:
            kind = "other"
        mk.modules.append(Module(base, kind, tuple(i.shape), i.dtype))
    return mk


def detect(infos: dict) -> ModelKind | None:
    """The non-transformer model a header describes, or None (a diffusion transformer or unknown)."""
    for k in infos:
        if k.endswith("decoder.middle.0.residual.0.gamma"):
            return _vae(infos, k[: -len("decoder.middle.0.residual.0.gamma")])
    for k in infos:
        if k.endswith(T5_Q):
            return _t5(infos, k[: -len(T5_Q)])
    return None
