"""Regenerate non_transformer_layouts.json: tensor names and shapes of ComfyUI's own WAN 2.1 VAE, WAN 2.2
VAE and UMT5-XXL classes (full size as ComfyUI builds them from real files, and thin variants with the
same names), instantiated on the meta device (no weights). Run with the environment's Python:

    python tests/data/make_non_transformer_layouts.py ~/.cache/quantgate/comfyui-0.3.75
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, sys.argv[1])
from comfy.cli_args import args  # noqa: E402
args.cpu = True
import torch  # noqa: E402
import comfy.ops  # noqa: E402
import comfy.ldm.wan.vae as vae21  # noqa: E402
import comfy.ldm.wan.vae2_2 as vae22  # noqa: E402
import comfy.text_encoders.t5 as t5  # noqa: E402

COMMON = {"dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [], "temperal_downsample": [False, True, True],
          "dropout": 0.0}


def shapes(m):
    return [[k, list(v.shape)] for k, v in m.state_dict().items()]


out = {}
with torch.device("meta"):
    # comfy/sd.py: Wan 2.1 VAE dim = decoder.head.0.gamma.shape[0] (96 in Wan2.1_VAE), z 16; Wan 2.2: dim 160, z 48
    out["wan21_vae"] = {"full": shapes(vae21.WanVAE(dim=96, z_dim=16, **COMMON)),
                        "thin": shapes(vae21.WanVAE(dim=8, z_dim=16, **COMMON))}
    out["wan22_vae"] = {"full": shapes(vae22.WanVAE(dim=160, z_dim=48, **COMMON)),
                        "thin": shapes(vae22.WanVAE(dim=16, dec_dim=16, z_dim=48, **COMMON))}
    cfg = json.loads((Path(t5.__file__).parent / "umt5_config_xxl.json").read_text())
    full = t5.T5(cfg, torch.bfloat16, "meta", comfy.ops.manual_cast)
    thin_cfg = dict(cfg, d_model=64, d_ff=96, num_heads=4, d_kv=16, num_layers=3, vocab_size=512)
    thin = t5.T5(thin_cfg, torch.bfloat16, "meta", comfy.ops.manual_cast)
    out["umt5_xxl"] = {"full": shapes(full), "thin": shapes(thin), "config": cfg}
dst = Path(__file__).with_name("non_transformer_layouts.json")
dst.write_text(json.dumps(out, indent=0) + "\n")
print({k: (len(v["full"]), len(v["thin"])) for k, v in out.items()})
