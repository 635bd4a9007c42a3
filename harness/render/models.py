"""Models for smoke renders.

The **reference** pair the demo, the render gate and the render tests use (``reference_model`` /
``reference_vae``) is chosen by ``QUANTGATE_REFERENCE`` (``trained``, the default, or ``random``):

* ``trained``: the tiny WAN 2.1 t2v model trained on procedural images (``harness/train``, weights
  committed in bf16 and upcast to an fp32 copy in the cache) with its analytic TAEHV decoder
  (``harness.train.latent``: latents map to RGB by a known linear map + upsampling);
* ``random``: the seeded random models below (generated deterministically on demand, never committed):

* the thin WAN 2.1 t2v diffusion model (``quant.arch.THIN["wan21-t2v-thin"]``: dim 256, 1 block),
  which ComfyUI 0.3.75 detects as WAN21; made by :mod:`harness.fixtures.synth` (seeded, real layout);
* a random TAEHV ``lighttaew2_1`` VAE whose keys and shapes come from ComfyUI's own
  ``comfy.taesd.taehv.TAEHV(latent_channels=16)``, built in a subprocess of the ComfyUI checkout
  (``args.cpu = True`` before importing comfy). Stored fp32: an fp16 file is read as HunyuanVideo's.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from quant.safetensors_io import save_file

from ..comfy.errors import ComfyError
from ..comfy.server import cache_root, comfy_version

THIN_ARCH = "wan21-t2v-thin"
TRAINED_ARCH = "wan21-t2v-tiny"
REFERENCES = ("trained", "random")
ENV = "QUANTGATE_REFERENCE"
VAE_NAME = "lighttaew2_1.safetensors"

_SHAPES_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from comfy.cli_args import args
args.cpu = True
from comfy.taesd.taehv import TAEHV
sd = TAEHV(latent_channels=int(sys.argv[2])).state_dict()
print("QG-SHAPES " + json.dumps([[k, list(v.shape), str(v.dtype)] for k, v in sd.items()]))
"""


def make_thin_model(path, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """The seeded thin WAN 2.1 model (the render gate's embedded source checkpoint)."""
    from harness.fixtures import synth
    return synth.make_model(THIN_ARCH, path, seed=seed, dtype=dtype)


def vae_name(latent_channels: int = 16) -> str:
    """VAELoader lists a vae_approx file only under these names; 48 latent channels = WAN 2.2 (TI2V 5B)."""
    return VAE_NAME if latent_channels == 16 else "lighttaew2_2.safetensors"


def taehv_shapes(comfy_root, python: str | None = None, latent_channels: int = 16) -> list[tuple[str, tuple[int, ...], str]]:
    try:
        r = subprocess.run([python or sys.executable, "-c", _SHAPES_SCRIPT, str(comfy_root), str(latent_channels)],
                           cwd=str(comfy_root),
                           capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ComfyError("building ComfyUI's TAEHV to read its shapes took over 180 s") from None
    for line in r.stdout.splitlines():
        if line.startswith("QG-SHAPES "):
            return [(k, tuple(s), d) for k, s, d in json.loads(line[len("QG-SHAPES "):])]
    tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
    raise ComfyError(f"could not build ComfyUI's TAEHV (exit {r.returncode}): {tail[0][:300]}")


def _fill(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if len(shape) >= 2:
        return torch.randn(shape, generator=gen) / math.sqrt(max(1, math.prod(shape[1:])))
    if name.endswith(".bias"):
        return 0.02 * torch.randn(shape, generator=gen)
    return torch.ones(shape)


def make_vae(path, comfy_root, seed: int = 0, python: str | None = None, latent_channels: int = 16) -> Path:
    path = Path(path)
    tensors = {}
    for i, (name, shape, dt) in enumerate(taehv_shapes(comfy_root, python, latent_channels)):
        if not dt.startswith("torch.float"):
            raise ComfyError(f"unexpected TAEHV tensor {name} of dtype {dt}")
        gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
        tensors[name] = _fill(name, shape, gen).to(torch.float32).contiguous()
    save_file(tensors, path)
    return path


def _code_key(*modules) -> str:
    """Short hash of the generator code, so a changed generator never reuses a stale cached file."""
    import hashlib
    h = hashlib.sha256()
    for m in modules:
        h.update(Path(m.__file__).read_bytes())
    return h.hexdigest()[:10]


def cached_vae(comfy_root, seed: int = 0, log=None, python: str | None = None, latent_channels: int = 16) -> Path:
    """The random TAEHV for ``comfy_root``'s version (16 latent channels: WAN 2.1 / A14B; 48: WAN 2.2 TI2V
    5B), made once into the cache."""
    d = cache_root() / "render-models"
    stem = vae_name(latent_channels).removesuffix(".safetensors")
    p = d / f"{stem}-comfy{comfy_version(comfy_root)}-seed{seed}-{_code_key(sys.modules[__name__])}.safetensors"
    if not p.is_file():
        if log:
            log(f"making the random TAEHV ({stem}) VAE")
        d.mkdir(parents=True, exist_ok=True)
        make_vae(p, comfy_root, seed, python, latent_channels)
    return p


def cached_thin_model(seed: int = 0, log=None) -> Path:
    from harness.fixtures import synth
    from quant import arch
    d = cache_root() / "render-models"
    p = d / f"{THIN_ARCH}-seed{seed}-fp32-{_code_key(synth, arch)}.safetensors"
    if not p.is_file():
        if log:
            log(f"making the thin WAN 2.1 model ({THIN_ARCH}, seed {seed})")
        d.mkdir(parents=True, exist_ok=True)
        make_thin_model(p, seed)
    return p


def reference_kind(kind: str | None = None) -> str:
    """``kind``, else ``$QUANTGATE_REFERENCE``, else ``trained``."""
    k = kind or os.environ.get(ENV) or "trained"
    if k not in REFERENCES:
        from quant.errors import UsageError
        raise UsageError(f"{ENV}={k!r}: choose one of {', '.join(REFERENCES)}")
    return k


def reference_arch(kind: str | None = None) -> str:
    return TRAINED_ARCH if reference_kind(kind) == "trained" else THIN_ARCH


def cached_trained_model(log=None) -> Path:
    """fp32 copy of the committed trained weights (bf16 values, exactly upcast), keyed by their sha256."""
    from harness.train import registry, tiny_model
    if not tiny_model.WEIGHTS.is_file():
        raise ComfyError(f"the trained reference weights are missing ({tiny_model.WEIGHTS}); run quantgate train-tiny "
                         "or use QUANTGATE_REFERENCE=random")
    return registry.sources("wan21-t2v-tiny", log=log)["model"]


def make_trained_vae(path, comfy_root, python: str | None = None) -> Path:
    """The analytic TAEHV of the trained models' latent space: the decoder of harness.train.latent and
    the encoder of harness.train.encoder (the edit workflow encodes its reference image)."""
    from harness.train import encoder, latent
    path = Path(path)
    save_file(encoder.taehv_encoder(latent.taehv_decoder(taehv_shapes(comfy_root, python))), path)
    return path


def cached_trained_vae(comfy_root, log=None, python: str | None = None) -> Path:
    from harness.train import encoder, latent
    d = cache_root() / "render-models"
    p = d / (f"lighttaew2_1-analytic-comfy{comfy_version(comfy_root)}-"
             f"{_code_key(sys.modules[__name__], latent, encoder)}.safetensors")
    if not p.is_file():
        if log:
            log("making the analytic TAEHV (lighttaew2_1) decoder of the trained model")
        d.mkdir(parents=True, exist_ok=True)
        make_trained_vae(p, comfy_root, python)
    return p


def reference_model(log=None, kind: str | None = None) -> Path:
    """The source checkpoint of the demo / render tests (fp32)."""
    return cached_trained_model(log) if reference_kind(kind) == "trained" else cached_thin_model(log=log)


def reference_vae(comfy_root, log=None, python: str | None = None, kind: str | None = None,
                  latent_channels: int = 16) -> Path:
    """The VAE that decodes :func:`reference_model`'s latents (16 channels; the 48-channel WAN 2.2
    TAEHV is always the random one: the trained model is WAN 2.1)."""
    if reference_kind(kind) == "trained" and latent_channels == 16:
        return cached_trained_vae(comfy_root, log=log, python=python)
    return cached_vae(comfy_root, log=log, python=python, latent_channels=latent_channels)
