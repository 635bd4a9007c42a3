"""`quantgate doctor`: is this ComfyUI install ready for the FP8 / NVFP4 files its workflows use?

Checks (each a row: area, item, status, detail):

* **comfyui**: the version (``/system_stats`` of ``--comfy-url``, or ``comfyui_version.py`` of
  ``--comfy-root``) and, per quantgate output format, whether that version loads it (the format's
  ``min_comfy`` from the format registry, compared with :func:`quant.formats.version_lt`; the
  comfy_quant layer formats it reads from ``quant.formats.QUANT_ALGOS_SINCE``).
* **gpu**: device, VRAM, PyTorch build, and whether fp8 / nvfp4 run natively or emulated there
  (SM from the device name; fp8 native from SM 8.9, nvfp4 from SM 10 with a cu13 PyTorch and
  ComfyUI >= the nvfp4 format's minimum; comfy_format.md section 3.6).
* **custom nodes**: packages the server loaded (``/object_info`` ``python_module``) and the
  ``custom_nodes`` directory (``*.disabled`` entries and ``custom_nodes/.disabled/`` are disabled);
  ComfyUI-GGUF enabled / disabled / absent is called out.
* **models**: every model file the workflows (``--workflows DIR``, UI or API format) name: found in
  ``--models DIR``, a readable checkpoint (header only, never a pickle), and what its name claims
  (``*fp8*`` must hold fp8 weights, ``*nvfp4*`` nvfp4, ``*bf16*`` bf16, ``*Q8_0*.gguf`` Q8_0, ...).
* **disk**: free space where the models live (at least the largest referenced model, for a converted copy).

Statuses: ok, info, warn, fail. Exit: 0 no fail rows, 1 some fail rows, 2 bad input / unreachable server.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from quant.errors import InputError, UsageError

OK, INFO, WARN, FAIL = "ok", "info", "warn", "fail"

# loader node -> ((widget index in UI widgets_values, input name in API inputs), model folders)
_UNET = ("diffusion_models", "unet")
_CLIP = ("text_encoders", "clip")
LOADERS: dict[str, tuple[tuple[tuple[int, str], ...], tuple[str, ...]]] = {
    "UNETLoader": (((0, "unet_name"),), _UNET),
    "UnetLoaderGGUF": (((0, "unet_name"),), _UNET),
    "UnetLoaderGGUFAdvanced": (((0, "unet_name"),), _UNET),
    "CLIPLoader": (((0, "clip_name"),), _CLIP),
    "CLIPLoaderGGUF": (((0, "clip_name"),), _CLIP),
    "DualCLIPLoader": (((0, "clip_name1"), (1, "clip_name2")), _CLIP),
    "DualCLIPLoaderGGUF": (((0, "clip_name1"), (1, "clip_name2")), _CLIP),
    "TripleCLIPLoader": (((0, "clip_name1"), (1, "clip_name2"), (2, "clip_name3")), _CLIP),
    "TripleCLIPLoaderGGUF": (((0, "clip_name1"), (1, "clip_name2"), (2, "clip_name3")), _CLIP),
    "QuadrupleCLIPLoader": (((0, "clip_name1"), (1, "clip_name2"), (2, "clip_name3"), (3, "clip_name4")), _CLIP),
    "QuadrupleCLIPLoaderGGUF": (((0, "clip_name1"), (1, "clip_name2"), (2, "clip_name3"), (3, "clip_name4")), _CLIP),
    "VAELoader": (((0, "vae_name"),), ("vae", "vae_approx")),
    "CheckpointLoaderSimple": (((0, "ckpt_name"),), ("checkpoints",)),
    "LoraLoader": (((0, "lora_name"),), ("loras",)),
    "LoraLoaderModelOnly": (((0, "lora_name"),), ("loras",)),
}
GGUF_NODES = ("UnetLoaderGGUF", "CLIPLoaderGGUF", "DualCLIPLoaderGGUF")
RULES_GGUF = ("UnetLoaderGGUF", "UnetLoaderGGUFAdvanced", "CLIPLoaderGGUF", "DualCLIPLoaderGGUF", "TripleCLIPLoaderGGUF",
              "QuadrupleCLIPLoaderGGUF")

# GPU name -> SM (compute capability); /system_stats has no capability field
_SM = [
    (r"\bB300\b|\bGB300\b", 10.3), (r"\bB200\b|\bGB200\b|\bB100\b", 10.0), (r"GB10\b", 12.1),
    (r"RTX 50\d0|RTX PRO \d+ Blackwell|Blackwell", 12.0),
    (r"\bH100\b|\bH200\b|\bH800\b|\bH20\b|\bGH200\b", 9.0),
    (r"\bL4\b|\bL40S?\b|RTX 40\d0|RTX \d+ Ada|Ada Generation", 8.9),
    (r"RTX 30\d0|\bA10G?\b|\bA40\b|\bA16\b|\bA2\b|RTX A\d+", 8.6), (r"\bA100\b|\bA800\b|\bA30\b", 8.0),
    (r"\bT4\b|RTX 20\d0|Quadro RTX", 7.5), (r"\bV100\b", 7.0),
]


@dataclass
class Row:
    area: str
    item: str
    status: str
    detail: str


def formats():
    """quantgate's output formats (name -> Format with ``min_comfy``), from the format registry."""
    from quant import formats as F
    return {n: f for n, f in F.FORMATS.items() if f.target}      # not the dialects quantgate only reads


def gpu_sm(name: str) -> float | None:
    for pat, sm in _SM:
        if re.search(pat, name or "", re.I):
            return sm
    return None


def _cuda_major(torch_version: str) -> int | None:
    m = re.search(r"\+cu(\d+)", torch_version or "")
    return int(m.group(1)[:-1]) if m else None


# ---- model files ----------------------------------------------------------------------------------
_CLAIMS = [   # (claim, regex on the lower-case file name); quantization claims before precision ones
    ("nvfp4", r"nvfp4|(?<![a-z0-9])fp4(?![0-9])"),
    ("fp8", r"(?<![a-z0-9])(fp8|float8|e4m3fn|e4m3|e5m2)"),
    ("bf16", r"(?<![a-z0-9])bf16(?![0-9])"),
    ("fp16", r"(?<![a-z0-9])(fp16|f16)(?![0-9])"),
    ("fp32", r"(?<![a-z0-9])(fp32|f32)(?![0-9])"),
]
_GGUF_CLAIM = re.compile(r"(?<![a-z0-9])(q\d_k|q\d_\d|q\d_k_[sml]|iq\d_[a-z]+|f16|bf16|f32)(?![a-z0-9])", re.I)


def name_claim(name: str) -> str | None:
    low = Path(name).name.lower()
    if low.endswith(".gguf"):
        m = _GGUF_CLAIM.search(low)
        return ("gguf " + re.sub(r"_[sml]$", "", m.group(1).upper())) if m else None
    for claim, pat in _CLAIMS:
        if re.search(pat, low):
            return claim
    return None


def detect_format(path) -> dict:
    """What a model file is, from its header (GGUF: tensor types). Raises InputError if unreadable."""
    from collections import Counter

    from quant.sources import open_source
    with open_source(path) as src:
        names = src.keys()
        by_bytes = Counter()
        if src.kind == "gguf":
            for n in names:
                i = src.info(n)
                by_bytes[i.stored or i.dtype] += i.nbytes
            main = by_bytes.most_common(1)[0][0] if by_bytes else None
            return {"container": "gguf", "format": f"gguf {main}", "types": sorted(by_bytes),
                    "tensors": len(names), "bytes": src.total_bytes}
        from quant.checkpoint import build
        for n in names:
            by_bytes[src.info(n).dtype] += src.info(n).nbytes
        st = build(src)
        cast = None
        fmts = Counter(la.spec.name if la.spec else str(la.comfy_format) for la in st.declared)
        floats = {k: v for k, v in by_bytes.items() if k in ("BF16", "F16", "F32")}
        dominant = max(floats, key=floats.get) if floats else None
        if fmts:
            fmt = "+".join(sorted(fmts, key=lambda k: -fmts[k]))
        elif by_bytes.get("F8_E4M3") or by_bytes.get("F8_E5M2"):
            fmt = "fp8 cast (no scales)"
            cast = _cast_family()
        else:
            fmt = {"BF16": "bf16", "F16": "fp16", "F32": "fp32"}.get(dominant, "unknown")
        return {"container": "safetensors", "format": fmt, "quantized_layers": dict(fmts), "cast_family": cast,
                "dtypes_bytes": dict(by_bytes), "tensors": len(names), "bytes": src.total_bytes,
                "family": st.family}


def _cast_family() -> str:
    """The kernel family of a file of fp8 weights without scales: the first format storing F8_E4M3 weights."""
    from quant.formats import FORMATS
    return next(f.kernel for f in FORMATS.values() if "F8_E4M3" in f.companion("weight").dtypes)


def claim_holds(claim: str, det: dict) -> bool:
    """A quantization claim of the name (a kernel family) against the formats the header declares, asked of the
    format objects: a four-bit family holds where any of its layers is; another where it is the dominant family
    and no four-bit layer is (a file named fp8 holds no nvfp4 layers). Precision claims: the dominant dtype."""
    from quant.formats import FORMATS
    fmt = det["format"]
    if claim.startswith("gguf "):
        want = claim[5:]
        return det["container"] == "gguf" and (fmt == claim or any(t.startswith(want) for t in det.get("types", [])))
    if claim not in {f.kernel for f in FORMATS.values()}:
        return fmt == claim
    four_bit = {f.kernel for f in FORMATS.values() if f.four_bit}
    fams = [FORMATS[n].kernel for n in fmt.split("+") if n in FORMATS]      # dominant first
    if not fams and det.get("cast_family"):
        fams = [det["cast_family"]]
    if claim in four_bit:
        return claim in fams
    return bool(fams) and fams[0] == claim and not four_bit & set(fams)


# frontend-only node types (never in /object_info)
FRONTEND_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def workflow_classes(wf_dir) -> dict[str, set[str]]:
    """workflow file -> node types its active nodes use (subgraph instances and frontend-only nodes left out)."""
    from harness.gguf.workflow_convert import BACKUP_SUFFIX, _ui_nodes, read_workflow
    out = {}
    for f in sorted(Path(wf_dir).rglob("*.json")):
        if f.name.endswith(BACKUP_SUFFIX):
            continue
        _, obj, kind = read_workflow(f)
        if kind == "ui":
            subs = {str(sg.get("id")) for sg in ((obj.get("definitions") or {}).get("subgraphs") or [])
                    if isinstance(sg, dict)}
            out[str(f)] = {n["type"] for n in _ui_nodes(obj, f) if n.get("mode") not in (2, 4)} - subs - FRONTEND_NODES
        else:
            out[str(f)] = {v["class_type"] for v in obj.values()}
    return out


def workflow_refs(wf_dir) -> list[dict]:
    """Every model file named by a loader node in the workflows under ``wf_dir`` (UI or API format)."""
    from harness.gguf.workflow_convert import BACKUP_SUFFIX, _ui_nodes, read_workflow
    d = Path(wf_dir)
    if not d.is_dir():
        raise InputError("--workflows: not a directory", d)
    refs = []
    for f in sorted(d.rglob("*.json")):
        if f.name.endswith(BACKUP_SUFFIX):
            continue
        _, obj, kind = read_workflow(f)
        nodes = _ui_nodes(obj, f) if kind == "ui" else [
            {"id": k, "type": v["class_type"], "inputs": v.get("inputs", {})} for k, v in obj.items()]
        for n in nodes:
            spec = LOADERS.get(n.get("type"))
            if spec is None or n.get("mode") in (2, 4):      # muted / bypassed nodes load nothing
                continue
            widgets, folders = spec
            for idx, inp in widgets:
                if kind == "ui":
                    wv = n.get("widgets_values")
                    v = wv[idx] if isinstance(wv, list) and len(wv) > idx else None
                else:
                    v = n["inputs"].get(inp)
                if isinstance(v, str) and v:
                    refs.append({"workflow": str(f), "node": str(n["id"]), "class": n["type"], "name": v,
                                 "folders": folders})
    return refs


def find_model(models_dir: Path | None, name: str, folders) -> Path | None:
    if models_dir is None:
        return None
    for fo in folders:
        p = models_dir / fo / name
        if p.exists():
            return p
    base = Path(name.replace("\\", "/")).name
    hits = sorted(models_dir.rglob(base)) if base else []
    return hits[0] if hits else None


# ---- the checks -------------------------------------------------------------------------------------
def run(comfy_url=None, comfy_root=None, models=None, workflows=None) -> dict:
    """Every check of ``quantgate doctor``: ComfyUI version, formats it loads, GPU, custom nodes, the
    workflows' node types and models, disk. Returns the facts with ``checks`` and ``exit_code``."""
    rows: list[Row] = []
    facts: dict = {"comfyui": {}, "gpu": {}, "formats": {}, "custom_nodes": {}, "models": [], "disk": {}}
    root, models_dir = _paths(comfy_root, models)
    refs = workflow_refs(workflows) if workflows else []
    stats, info, version = _comfyui(comfy_url, root, rows, facts)
    _formats(version, rows, facts)
    _gpu(stats, version, rows, facts)
    gguf_state = _custom_nodes(info, root, rows, facts)
    if info is not None and workflows:
        _workflow_nodes(workflows, info, gguf_state, rows)
    if workflows and models_dir is None and not comfy_root:
        rows.append(Row("models", "location", WARN, "workflows given but no --models DIR: files not checked"))
    largest = _models(refs, models_dir, version, gguf_state, rows, facts)
    _disk(models_dir or root, largest, rows, facts)
    facts["checks"] = [asdict(r) for r in rows]
    facts["exit_code"] = 1 if any(r.status == FAIL for r in rows) else 0
    return facts


def _paths(comfy_root, models):
    """(ComfyUI checkout or None, models folder or None), checked."""
    root = None
    if comfy_root:
        root = Path(comfy_root).expanduser()
        if not (root / "main.py").is_file() or not (root / "comfy").is_dir():
            raise InputError("--comfy-root: not a ComfyUI checkout (no main.py / comfy/)", root)
    models_dir = Path(models).expanduser() if models else None
    if models_dir is not None and not models_dir.is_dir():
        raise InputError("--models: not a directory", models_dir)
    if models_dir is None and root is not None and (root / "models").is_dir():
        models_dir = root / "models"
    return root, models_dir


def _comfyui(comfy_url, root, rows, facts):
    """ComfyUI version + server facts: (system_stats or None, object_info or None, version)."""
    stats, info = None, None
    if comfy_url:
        from harness.comfy.client import ComfyClient
        client = ComfyClient(comfy_url)
        stats = client.system_stats()
        info = client.object_info()
        version = str((stats.get("system") or {}).get("comfyui_version", "unknown"))
        facts["comfyui"] = {"url": client.url, "version": version, "source": "/system_stats",
                            "python": (stats.get("system") or {}).get("python_version"),
                            "pytorch": (stats.get("system") or {}).get("pytorch_version")}
    elif root is not None:
        from harness.comfy.server import comfy_version
        version = comfy_version(root)
        facts["comfyui"] = {"root": str(root), "version": version, "source": "comfyui_version.py"}
    else:
        raise UsageError("give --comfy-url URL (a running server) or --comfy-root PATH (a ComfyUI checkout)")
    rows.append(Row("comfyui", "version", OK if version != "unknown" else WARN,
                    f"ComfyUI {version} ({facts['comfyui']['source']})"))
    return stats, info, version


def _formats(version, rows, facts):
    """Formats this version loads (one source of truth: the format registry + quant.comfy.versions)."""
    from quant.formats import QUANT_ALGOS_SINCE, version_lt
    for name, f in formats().items():
        lt = version_lt(version, f.min_comfy)
        loads = None if lt is None else not lt
        facts["formats"][name] = {"min_comfy": f.min_comfy, "loads": loads}
        rows.append(Row("formats", name, {True: OK, False: WARN, None: WARN}[loads],
                        (f"loads (needs >= {f.min_comfy})" if loads else
                         f"NOT loadable: needs ComfyUI >= {f.min_comfy}" if loads is False else
                         f"unknown (needs >= {f.min_comfy})")))
    known = [a for a, since in QUANT_ALGOS_SINCE.items() if version_lt(version, since) is False]
    facts["comfyui"]["quant_algos"] = known
    rows.append(Row("formats", "comfy_quant", INFO, "layer formats this ComfyUI reads: " + (", ".join(known) or "none")))


def _workflow_nodes(workflows, info, gguf_state, rows):
    """Node types the workflows use that the server does not have (e.g. GGUF loaders, GGUF disabled)."""
    for wf, classes in workflow_classes(workflows).items():
        missing = sorted(classes - set(info))
        if missing:
            gg = [m for m in missing if m in RULES_GGUF]
            rows.append(Row("workflows", Path(wf).name, FAIL, f"uses node types this server lacks: {', '.join(missing)}"
                            + (f" (ComfyUI-GGUF {gguf_state}; or 'quantgate workflow convert' them to core loaders)"
                               if gg else "")))
        else:
            rows.append(Row("workflows", Path(wf).name, OK, f"all {len(classes)} node types available"))


def _models(refs, models_dir, version, gguf_state, rows, facts) -> int:
    """The models the workflows reference: found, readable, what their header says vs their name, and
    whether this ComfyUI loads them. Returns the largest model's size."""
    largest = 0
    seen: dict[str, dict] = {}
    for ref in refs:
        key = ref["name"]
        if key in seen:
            seen[key]["used_by"].append(f"{Path(ref['workflow']).name}#{ref['node']}")
            continue
        m = {"name": key, "class": ref["class"], "used_by": [f"{Path(ref['workflow']).name}#{ref['node']}"]}
        seen[key] = m
        facts["models"].append(m)
        if models_dir is not None:
            largest = max(largest, _model(m, ref, models_dir, version, gguf_state, rows, facts))
    return largest


def _model(m, ref, models_dir, version, gguf_state, rows, facts) -> int:
    """One referenced model's row; returns its size (0 when not found or unreadable)."""
    key = m["name"]
    p = find_model(models_dir, key, ref["folders"])
    if p is None:
        m["status"] = FAIL
        rows.append(Row("models", key, FAIL, f"missing: not under {models_dir} ({'/'.join(ref['folders'])}); "
                                              f"used by {m['used_by'][0]}"))
        return 0
    m["path"] = str(p)
    if not os.access(p, os.R_OK):
        m["status"] = FAIL
        rows.append(Row("models", key, FAIL, f"not readable: {p}"))
        return 0
    try:
        det = detect_format(p)
    except InputError as e:
        m["status"] = FAIL
        rows.append(Row("models", key, FAIL, f"not a readable checkpoint: {e.problem}"))
        return 0
    m.update(det)
    claim = name_claim(key)
    m["claims"] = claim
    size = _size(det["bytes"])
    if claim and not claim_holds(claim, det):
        m["status"] = FAIL
        rows.append(Row("models", key, FAIL, f"named {claim} but the header says {det['format']} ({size})"))
        return det["bytes"]
    m["status"] = OK
    parts = det["format"].split("+")
    if any(facts["formats"].get(fp, {}).get("loads") is False for fp in parts):
        m["status"] = FAIL
        rows.append(Row("models", key, FAIL, f"{det['format']} ({size}); ComfyUI {version} cannot load it"))
    elif det["container"] == "gguf" and gguf_state != "enabled":
        m["status"] = WARN
        rows.append(Row("models", key, WARN, f"{det['format']} ({size}) needs ComfyUI-GGUF, which is "
                                             f"{gguf_state}"))
    else:
        rows.append(Row("models", key, OK, f"{det['format']} ({size})" + (f", as named" if claim else "")))
    return det["bytes"]


def _disk(where, largest, rows, facts):
    if where is None:
        return
    du = shutil.disk_usage(where)
    facts["disk"] = {"path": str(where), "free": du.free, "total": du.total, "largest_model": largest}
    need = max(largest, 1 << 30)
    st = OK if du.free >= need else (WARN if du.free >= (1 << 30) else FAIL)
    rows.append(Row("disk", "free space", st, f"{du.free / 1e9:,.1f} GB free of {du.total / 1e9:,.1f} GB at {where}"
                    + (f"; a converted copy of the largest model needs ~{_size(largest)}" if largest else "")))


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _gpu(stats, version, rows, facts):
    from quant.formats import version_lt
    dev = None
    torch_v = None
    if stats is not None:
        devs = stats.get("devices") or []
        dev = devs[0] if devs else None
        torch_v = (stats.get("system") or {}).get("pytorch_version")
    if dev is None:
        rows.append(Row("gpu", "device", INFO, "no server: GPU facts need --comfy-url"))
        return
    name = str(dev.get("name", "?"))
    is_cuda = str(dev.get("type", "")) == "cuda"
    sm = gpu_sm(name) if is_cuda else None
    vram = dev.get("vram_total") or 0
    facts["gpu"] = {"name": name, "type": dev.get("type"), "vram_total": vram, "vram_free": dev.get("vram_free"),
                    "sm": sm, "pytorch": torch_v}
    rows.append(Row("gpu", "device", OK if is_cuda else WARN,
                    f"{name}" + (f", {vram / 2**30:.1f} GiB VRAM" if is_cuda else " (no CUDA GPU: everything emulated, slow)")
                    + (f", SM {sm}" if sm else "")))
    fmts = formats()
    nv_min = getattr(fmts.get("nvfp4"), "min_comfy", "0.8.0")
    cu = _cuda_major(torch_v or "")
    fp8_native = bool(is_cuda and sm is not None and sm >= 8.9)
    nv_native = bool(is_cuda and sm is not None and sm >= 10 and (cu or 0) >= 13 and version_lt(version, nv_min) is False)
    facts["gpu"]["fp8"] = "native" if fp8_native else ("unknown" if is_cuda and sm is None else "emulated")
    facts["gpu"]["nvfp4"] = "native" if nv_native else ("unknown" if is_cuda and sm is None else "emulated")
    rows.append(Row("gpu", "fp8", OK if fp8_native else INFO,
                    "native fp8 matmul (SM >= 8.9)" if fp8_native else
                    "emulated: weights stay fp8 in memory, dequantized to bf16 per forward (needs SM >= 8.9)"))
    why = []
    if not (is_cuda and sm is not None and sm >= 10):
        why.append("needs SM >= 10 (Blackwell)")
    if (cu or 0) < 13:
        why.append(f"needs a cu130 PyTorch (server: {torch_v or '?'})")
    if version_lt(version, nv_min) is not False:
        why.append(f"needs ComfyUI >= {nv_min}")
    rows.append(Row("gpu", "nvfp4", OK if nv_native else INFO,
                    "native nvfp4 GEMM" if nv_native else "emulated (dequantized per forward): " + "; ".join(why)))
    for f in fmts.values():             # the other comfy formats: native from the format's own SM fact
        if not f.target or f.legacy or f.name in facts["gpu"] or f.native_sm is None:   # fp8/nvfp4: rows above
            continue
        sm_min = f.native_sm[0] + f.native_sm[1] / 10
        native = bool(is_cuda and sm is not None and sm >= sm_min and version_lt(version, f.min_comfy) is False)
        facts["gpu"][f.name] = "native" if native else ("unknown" if is_cuda and sm is None else "emulated")
        need = [f"SM >= {sm_min:g}"] + ([f"ComfyUI >= {f.min_comfy}"] if version_lt(version, f.min_comfy) is not False
                                         else [])
        rows.append(Row("gpu", f.name, OK if native else INFO,
                        f"native {f.name} (kitchen kernels)" if native else
                        "dequantized per forward: needs " + ", ".join(need)))


def _custom_nodes(info, root, rows, facts):
    packages: dict[str, dict] = {}
    if info is not None:
        for cls, d in info.items():
            mod = str((d or {}).get("python_module", ""))
            if mod.startswith("custom_nodes."):
                pkg = mod.split(".", 1)[1]
                packages.setdefault(pkg, {"state": "loaded", "nodes": 0})["nodes"] += 1
        gguf_loaded = any(n in info for n in GGUF_NODES)
    else:
        gguf_loaded = None
    if root is not None and (root / "custom_nodes").is_dir():
        cn = root / "custom_nodes"
        entries = [(e, False) for e in cn.iterdir()] + (
            [(e, True) for e in (cn / ".disabled").iterdir()] if (cn / ".disabled").is_dir() else [])
        for e, in_disabled_dir in entries:
            if e.name.startswith((".", "__")) or e.name.endswith((".example", ".pyc")):
                continue
            disabled = in_disabled_dir or e.name.endswith(".disabled")
            pkg = e.name[: -len(".disabled")] if e.name.endswith(".disabled") else e.name
            pkg = pkg[:-3] if pkg.endswith(".py") else pkg
            cur = packages.setdefault(pkg, {"state": "present", "nodes": 0})
            if disabled and cur["state"] != "loaded":
                cur["state"] = "disabled"
    facts["custom_nodes"] = packages
    gguf_pkgs = {k: v for k, v in packages.items() if "gguf" in k.lower()}
    if gguf_loaded or any(v["state"] == "loaded" for v in gguf_pkgs.values()):
        state = "enabled"
        rows.append(Row("custom nodes", "ComfyUI-GGUF", OK, "enabled (UnetLoaderGGUF is available): GGUF workflows "
                        "run; convert them with 'quantgate workflow convert'"))
    elif any(v["state"] == "disabled" for v in gguf_pkgs.values()):
        state = "disabled"
        rows.append(Row("custom nodes", "ComfyUI-GGUF", WARN, "installed but disabled: workflows with GGUF loader "
                        "nodes fail to validate; convert them with 'quantgate workflow convert'"))
    elif gguf_pkgs:
        state = "present (not checked on a server)"
        rows.append(Row("custom nodes", "ComfyUI-GGUF", INFO, "present in custom_nodes (not checked on a server)"))
    else:
        state = "not installed"
        rows.append(Row("custom nodes", "ComfyUI-GGUF", INFO, "not installed"))
    others = sorted(k for k in packages if k not in gguf_pkgs)
    if others:
        rows.append(Row("custom nodes", "others", INFO, ", ".join(f"{k} ({packages[k]['state']})" for k in others)[:300]))
    facts["custom_nodes_gguf"] = state
    return state
