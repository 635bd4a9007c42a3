"""The tiny WAN 2.2 T2V A14B reference pair (``wan22-a14b-tiny``): two experts of WAN 2.1's shape, the
**high-noise** expert trained only on sigmas >= ``BOUNDARY`` and the **low-noise** expert only below
it, as WAN 2.2 A14B's experts are (the T2V boundary is 0.875: ``boundary`` in Wan2.2's t2v-A14B
config). ComfyUI renders them as its A14B templates do: two ``UNETLoader``s, ``ModelSamplingSD3``
(shift 8) on each, and two ``KSamplerAdvanced``: the high-noise expert from step 0 to the switch step
(adding the noise, returning the leftover noise), the low-noise expert from the switch to the end
(no new noise). :func:`switch_step` is the first step whose sigma is below the boundary.

Each expert is ComfyUI's own ``comfy.ldm.wan.model.WanModel`` (real WAN tensor names; ComfyUI
detects WAN21_T2V from the shapes) with 1 head of 128 and ``NUM_LAYERS`` blocks, trained from its own
seeded init on :mod:`harness.train.data` in the latent space of :mod:`harness.train.latent`, exactly
as :mod:`harness.train.tiny_model` trains ``wan21-t2v-tiny`` except for the sigma range. An expert
used outside its range draws wrongly, so a file whose experts are swapped renders wrongly.
Deterministic from the seed with one thread; committed in bf16 (one file per expert).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAME = "wan22-a14b-tiny"
EXPERTS = ("high", "low")
BOUNDARY = 0.875                 # Wan2.2 t2v-A14B: switch to the low-noise expert below this sigma
SHIFT = 8.0
MULTIPLIER = 1000.0
NUM_LAYERS = 4
DIM, FFN = 128, 512
THREADS = 1
STEPS = {"high": 600, "low": 1000}   # the high-noise expert only sets colours and layout


def weights_path(expert: str) -> Path:
    return HERE / f"{NAME}-{expert}.safetensors"


@dataclass
class Config:
    name: str = NAME
    expert: str = "high"
    seed: int = 0
    steps: int = 0                # 0: the expert's default (STEPS)
    batch: int = 32
    lr: float = 3e-3
    warmup: int = 50
    ema: float = 0.998
    sizes: tuple = ((8, 8), (8, 12))
    classes: tuple = (1, 2, 3)
    boundary: float = BOUNDARY
    extra: dict = field(default_factory=dict)


def arch():
    from quant import arch as qa
    return qa.ARCHS["wan22-t2v-a14b"].thin(dim=DIM, ffn_dim=FFN, num_layers=NUM_LAYERS)


def build_model():
    from .tiny_model import _comfy
    wan, ops = _comfy()
    return wan.WanModel(model_type="t2v", patch_size=(1, 2, 2), dim=DIM, ffn_dim=FFN, freq_dim=256,
                        text_dim=4096, in_dim=16, out_dim=16, num_heads=DIM // 128, num_layers=NUM_LAYERS,
                        window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6,
                        operations=ops.disable_weight_init)


def expert_seed(cfg: Config) -> int:
    return cfg.seed * 2 + EXPERTS.index(cfg.expert)


def sigmas(cfg: Config, gen, n: int):
    """Training sigmas of the expert: logit-normal mapped into its range."""
    import torch
    u = torch.sigmoid(torch.randn(n, generator=gen, dtype=torch.float32))
    if cfg.expert == "high":
        return cfg.boundary + (1.0 - cfg.boundary) * u
    return cfg.boundary * u


def _batch(cfg: Config, step: int):
    import torch
    from . import data, latent
    from .tiny_model import _cond
    gen = torch.Generator().manual_seed(expert_seed(cfg) * 7_919 + step)
    h, w = cfg.sizes[step % len(cfg.sizes)]
    ids = [cfg.classes[int(i)] for i in torch.randint(0, len(cfg.classes), (cfg.batch,), generator=gen)]
    rgb, _ = data.batch(gen, cfg.batch, h * latent.FACTOR, w * latent.FACTOR, ids)
    z0 = latent.encode(rgb)[:, :, None]
    noise = torch.randn(z0.shape, generator=gen)
    return z0, noise, sigmas(cfg, gen, cfg.batch), torch.cat([_cond(c) for c in ids])


def train(cfg: Config, log=None, progress: bool = True):
    """Train one expert; returns (EMA state dict in fp32, info dict)."""
    import torch
    from tqdm.auto import tqdm
    from .tiny_model import flow_loss, init_weights
    torch.set_num_threads(THREADS)
    cfg.steps = cfg.steps or STEPS[cfg.expert]
    torch.manual_seed(expert_seed(cfg))
    model = build_model()
    init_weights(model, expert_seed(cfg))
    model.train()
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0)
    t0 = time.monotonic()
    losses = []
    bar = tqdm(range(cfg.steps), desc=f"train {NAME} {cfg.expert}", unit="step", disable=not progress,
               file=sys.stderr)
    for step in bar:
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        loss = flow_loss(model, *_batch(cfg, step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        d = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in model.state_dict().items():
                ema[k].mul_(d).add_(v.detach(), alpha=1 - d)
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    bar.close()
    info = {"train_s": round(time.monotonic() - t0, 1), "loss_first50": sum(losses[:50]) / max(1, len(losses[:50])),
            "loss_last50": sum(losses[-50:]) / max(1, len(losses[-50:])), "threads": THREADS,
            "torch": torch.__version__}
    return ema, info


def script_hash() -> str:
    import ast
    import hashlib
    from . import data, latent, tiny_model
    h = hashlib.sha256()
    for m in (sys.modules[__name__], tiny_model, data, latent):
        tree = ast.parse(Path(m.__file__).read_text())
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
        h.update(ast.dump(tree).encode())
    return h.hexdigest()


def save(state: dict, path, cfg: Config, info: dict) -> Path:
    import torch
    from quant.safetensors_io import AtomicWriter, dtype_name
    names = [n for n, _ in arch().tensors()]
    if set(names) != set(state):
        raise RuntimeError(f"trained state dict and the WAN template differ: {sorted(set(names) ^ set(state))[:5]}")
    c = asdict(cfg)
    c["sizes"] = [list(s) for s in cfg.sizes]
    c["classes"] = list(cfg.classes)
    meta = {"quantgate_model": NAME, "quantgate_expert": cfg.expert,
            "quantgate_train": json.dumps({"config": c, **info}, sort_keys=True),
            "quantgate_script_sha256": script_hash(), "modelspec.architecture": "wan2.2-t2v-a14b",
            "quantgate_boundary": str(cfg.boundary)}
    entries = [(n, dtype_name(torch.bfloat16), tuple(state[n].shape)) for n in names]
    with AtomicWriter(Path(path), entries, meta) as w:
        for n in names:
            w.write(n, state[n].detach().to(torch.bfloat16).contiguous())
    return Path(path)


def load_model(path, dtype=None):
    import torch
    from quant.safetensors_io import SafetensorsFile
    model = build_model()
    with SafetensorsFile(path) as f:
        sd = {n: f.get(n).to(dtype or torch.float32) for n in f.keys()}
    model.load_state_dict(sd, strict=True)
    return model.eval()


def switch_step(steps: int, boundary: float = BOUNDARY, shift: float = SHIFT) -> int:
    """The first step of the ``simple`` schedule whose sigma is below ``boundary`` (the low-noise
    expert's first step), as Wan2.2's sampler switches experts."""
    from .tiny_model import simple_sigmas
    sig = simple_sigmas(steps, shift)
    return next(i for i in range(steps) if sig[i] < boundary)


def sample(high, low, class_id: int, seed: int, h: int = 8, w: int = 8, steps: int = 6):
    """Euler + simple like the A14B workflow (cfg 1): high expert before the switch, low after."""
    import torch
    from .tiny_model import _cond, simple_sigmas
    gen = torch.manual_seed(seed)
    x = torch.randn((1, 16, 1, h, w), generator=gen, dtype=torch.float32, device="cpu")
    sig = simple_sigmas(steps)
    k = switch_step(steps)
    ctx = _cond(class_id)
    with torch.no_grad():
        for i in range(steps):
            s = torch.tensor([sig[i]], dtype=torch.float32)
            v = (high if i < k else low)(x, s * MULTIPLIER, ctx)
            den = x - s.view(-1, 1, 1, 1, 1) * v
            x = den if sig[i + 1] == 0 else x + (sig[i + 1] - sig[i]) * (x - den) / sig[i]
    return x


def activation_amax(high, low, classes=(1, 2, 3), seeds=(1, 2, 3), sizes=((8, 8), (8, 12)), steps: int = 6) -> dict:
    """{"high": {linear: amax of |input|}, "low": {...}}: every Linear's input over the A14B workflow's
    sampling (each expert only sees its own steps), for ``convert(input_scales=...)``."""
    import torch
    rec: dict = {"high": {}, "low": {}}
    hooks = []
    for expert, model in (("high", high), ("low", low)):
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear):
                def fn(m, inp, expert=expert, name=name):
                    a = float(inp[0].detach().abs().max())
                    rec[expert][name] = max(a, rec[expert].get(name, 0.0))
                hooks.append(mod.register_forward_pre_hook(fn))
    try:
        for c in classes:
            for s in seeds:
                for h, w in sizes:
                    sample(high, low, c, s, h, w, steps)
    finally:
        for h in hooks:
            h.remove()
    return rec
