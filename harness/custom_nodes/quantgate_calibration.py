"""quantgate's activation nodes (copied into the server's custom_nodes by the harness, like
``quantgate_nodes.py``; self-contained: only torch, ComfyUI's public API and comfy-kitchen).

* ``QGCalibrate`` (MODEL -> MODEL, QG_CALIB): a ModelPatcher clone whose unet function wrapper (the
  public ``set_model_unet_function_wrapper`` API) puts forward pre-hooks on every Linear of the
  diffusion model for the duration of each model call, removed again afterwards. Each Linear records
  its input statistics per sigma bin: calls, element count, zeros, sum, sum of squares, amax, a log2
  histogram of |x| (32 bins per octave, for percentiles), per-input-channel amax, and optionally a
  fixed subset of input rows (held-out samples for the SQNR report). ComfyUI itself is not patched.
* ``QGCalibrationSave`` (output node): writes what a QGCalibrate recorded into
  ``output/quantgate-calib/*.safetensors`` (statistics JSON in the metadata); the file is fetched
  over HTTP (/view), so a remote server works too.
* ``QGActivationEmulation`` (MODEL -> MODEL): fake-quantizes each listed Linear's INPUT the way the
  native low-precision kernel would, through comfy-kitchen's eager reference functions: fp8 static
  per-tensor scale (``input_scale``, or 1.0), NVFP4 per-16-block e4m3 scales under a static
  (``input_scale``) or dynamic (amax/(448*6)) global scale; ``"dynamic": true`` on a layer: fp8 per call
  amax/448 too (the render gate's reference conversion). On a CPU ComfyUI never quantizes
  activations itself, so this shows what an fp8/Blackwell GPU would draw.

Bins: t = model_sampling.timestep(sigma) / model_sampling.timestep(sigma_max), in [0, 1]; bin 0 is
the noisiest (t near 1, the first steps), bin ``bins-1`` the last steps.
"""
import json
import os

import torch

HIST_LO = -40.0           # log2|x| of the first histogram bin
HIST_PER_OCTAVE = 32
HIST_BINS = 80 * HIST_PER_OCTAVE


class _AnyType(str):
    def __ne__(self, other):          # matches every type in ComfyUI's input validation
        return False


ANY = _AnyType("*")


def _linears(dm):
    """(name, module) of every Linear; ComfyUI's mixed-precision Linear is a plain nn.Module named Linear."""
    out = []
    for name, mod in dm.named_modules():
        if isinstance(mod, torch.nn.Linear) or (type(mod).__name__ == "Linear" and hasattr(mod, "weight")):
            out.append((name, mod))
    return out


def _norm_t(ms, sigma) -> float:
    try:
        s = sigma.reshape(-1)[0:1].float()
        t = float(ms.timestep(s).reshape(-1)[0])
        top = ms.sigma_max
        top = top.reshape(1).float() if torch.is_tensor(top) else torch.tensor([float(top)])
        tmax = float(ms.timestep(top).reshape(-1)[0])
        return min(1.0, max(0.0, t / tmax)) if tmax > 0 else 0.0
    except Exception:
        return 0.0


class _Stat:
    __slots__ = ("calls", "count", "zeros", "sum", "sumsq", "amax", "hist")

    def __init__(self):
        self.calls = self.count = self.zeros = 0
        self.sum = self.sumsq = 0.0
        self.amax = 0.0
        self.hist = torch.zeros(HIST_BINS, dtype=torch.int64)


class Recorder:
    def __init__(self, bins: int, sample_rows: int):
        self.bins = max(1, int(bins))
        self.sample_rows = max(0, int(sample_rows))
        self.stats = {}            # (layer, bin) -> _Stat
        self.chan_amax = {}        # layer -> [K] f32
        self.samples = {}          # layer -> list of [r, K] f32
        self.in_features = {}
        self.order = []            # layers in first-call order
        self.model_calls = 0

    def bin_of(self, t: float) -> int:
        return min(self.bins - 1, int((1.0 - t) * self.bins))

    def record(self, layer: str, b: int, x: torch.Tensor):
        x = x.detach()
        k = int(x.shape[-1])
        x2 = x.reshape(-1, k).float().cpu()
        a = x2.abs()
        if layer not in self.in_features:
            self.in_features[layer] = k
            self.order.append(layer)
            self.chan_amax[layer] = torch.zeros(k, dtype=torch.float32)
            self.samples[layer] = []
        st = self.stats.get((layer, b))
        if st is None:
            st = self.stats[(layer, b)] = _Stat()
        st.calls += 1
        st.count += a.numel()
        nz = a[a > 0]
        st.zeros += a.numel() - nz.numel()
        x64 = x2.double()
        st.sum += float(x64.sum())
        st.sumsq += float((x64 * x64).sum())
        if a.numel():
            st.amax = max(st.amax, float(a.max()))
            self.chan_amax[layer] = torch.maximum(self.chan_amax[layer], a.amax(dim=0))
        if nz.numel():
            idx = ((torch.log2(nz) - HIST_LO) * HIST_PER_OCTAVE).floor().clamp_(0, HIST_BINS - 1).long()
            st.hist += torch.bincount(idx, minlength=HIST_BINS)
        if self.sample_rows and x2.shape[0]:
            r = min(self.sample_rows, x2.shape[0])
            sel = torch.linspace(0, x2.shape[0] - 1, r).round().long()
            self.samples[layer].append(x2[sel].clone())

    def meta(self) -> dict:
        layers = {}
        for layer in self.order:
            bins = {}
            for b in range(self.bins):
                st = self.stats.get((layer, b))
                if st is None:
                    continue
                bins[str(b)] = {"calls": st.calls, "count": st.count, "zeros": st.zeros, "sum": st.sum,
                                "sumsq": st.sumsq, "amax": st.amax}
            layers[layer] = {"in_features": self.in_features[layer], "bins": bins}
        return {"schema": "quantgate.calibration-run/1", "bins": self.bins,
                "hist": {"lo": HIST_LO, "per_octave": HIST_PER_OCTAVE, "n": HIST_BINS},
                "model_calls": self.model_calls, "layers": layers}

    def tensors(self) -> dict:
        out = {}
        for i, layer in enumerate(self.order):
            out[f"chan_amax.{i}"] = self.chan_amax[layer].contiguous()
            for b in range(self.bins):
                st = self.stats.get((layer, b))
                if st is not None:
                    out[f"hist.{i}.{b}"] = st.hist.contiguous()
            if self.samples[layer]:
                out[f"samples.{i}"] = torch.cat(self.samples[layer]).contiguous()
                out[f"sample_rows.{i}"] = torch.tensor([s.shape[0] for s in self.samples[layer]], dtype=torch.int64)
        return out


def _wrap(model, make_hooks):
    """Clone ``model`` and install a unet function wrapper that registers the hooks ``make_hooks``
    returns for the duration of one model call (keeps an earlier wrapper working)."""
    m = model.clone()
    dm = m.get_model_object("diffusion_model")
    ms = m.get_model_object("model_sampling")
    prev = m.model_options.get("model_function_wrapper")
    lins = _linears(dm)

    def wrapper(apply_model, args):
        handles = make_hooks(lins, ms, args)
        try:
            if prev is not None:
                return prev(apply_model, args)
            return apply_model(args["input"], args["timestep"], **args["c"])
        finally:
            for h in handles:
                h.remove()

    m.set_model_unet_function_wrapper(wrapper)
    return m


class QGCalibrate:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "bins": ("INT", {"default": 6, "min": 1, "max": 100}),
            "sample_rows": ("INT", {"default": 0, "min": 0, "max": 4096,
                                    "tooltip": "input rows kept per Linear call (held-out samples); 0 = none"}),
        }}

    RETURN_TYPES = ("MODEL", "QG_CALIB")
    FUNCTION = "wrap"
    CATEGORY = "quantgate"
    DESCRIPTION = "Record every Linear's input statistics while this model samples (quantgate calibration)."

    def wrap(self, model, bins, sample_rows):
        rec = Recorder(bins, sample_rows)

        def hooks(lins, ms, args):
            t = _norm_t(ms, args["timestep"])
            rec.model_calls += 1
            b = rec.bin_of(t)
            hs = []
            for name, mod in lins:
                def pre(_m, inputs, _name=name):
                    if inputs and torch.is_tensor(inputs[0]):
                        rec.record(_name, b, inputs[0])
                hs.append(mod.register_forward_pre_hook(pre))
            return hs

        return (_wrap(model, hooks), rec)


class QGCalibrationSave:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "calibration": ("QG_CALIB",),
            "after": (ANY, {"tooltip": "any output of the sampling (ties this node after it)"}),
            "filename_prefix": ("STRING", {"default": "quantgate-calib"}),
        }}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "quantgate"
    DESCRIPTION = "Write what QGCalibrate recorded (safetensors with the statistics JSON in its metadata)."

    def save(self, calibration, after, filename_prefix):
        import folder_paths
        from safetensors.torch import save_file
        sub = "quantgate-calib"
        d = os.path.join(folder_paths.get_output_directory(), sub)
        os.makedirs(d, exist_ok=True)
        base = "".join(c if (c.isalnum() or c in "-_") else "_" for c in filename_prefix)[:80] or "calib"
        n = 0
        while os.path.exists(os.path.join(d, f"{base}_{n:05d}.safetensors")):
            n += 1
        name = f"{base}_{n:05d}.safetensors"
        tmp = os.path.join(d, f".{name}.tmp")
        tensors = calibration.tensors()
        if not tensors:
            tensors = {"empty": torch.zeros(1)}
        save_file(tensors, tmp, metadata={"quantgate_calibration": json.dumps(calibration.meta())})
        os.replace(tmp, os.path.join(d, name))
        return {"ui": {"quantgate_calibration": [{"filename": name, "subfolder": sub, "type": "output"}]}}


# ---- activation emulation -------------------------------------------------------------------

def _fake_fp8(x: torch.Tensor, scale, p=None) -> torch.Tensor:
    import comfy_kitchen as ck
    if scale == "dynamic":                 # per call amax / 448 (the render gate's reference conversion)
        from comfy_kitchen.float_utils import F8_E4M3_MAX
        a = float(x.detach().abs().amax())
        if not a > 0:
            return x
        scale = a / F8_E4M3_MAX
    s = torch.tensor(1.0 if scale is None else float(scale), dtype=torch.float32, device=x.device)
    with ck.use_backend("eager"):
        q = ck.quantize_per_tensor_fp8(x.float(), s)
        return ck.dequantize_per_tensor_fp8(q, s, torch.float32).to(x.dtype)


def _fake_nvfp4(x: torch.Tensor, scale, p=None) -> torch.Tensor:
    import comfy_kitchen as ck
    from comfy_kitchen.float_utils import F4_E2M1_MAX, F8_E4M3_MAX
    k = int(x.shape[-1])
    x2 = x.reshape(-1, k).float()
    m = x2.shape[0]
    if scale is None or scale == "dynamic":   # dynamic global scale, as the kernel does without input_scale
        g = (x2.abs().amax() / (F8_E4M3_MAX * F4_E2M1_MAX)).reshape(())
        if not float(g) > 0:
            return x
    else:
        g = torch.tensor(float(scale), dtype=torch.float32, device=x.device)
    with ck.use_backend("eager"):
        q, bs = ck.quantize_nvfp4(x2, g, pad_16x=True)
        y = ck.dequantize_nvfp4(q, g, bs, torch.float32)
    return y[:m, :k].reshape(x.shape).to(x.dtype)


def _rotate(x2: torch.Tensor, group) -> torch.Tensor:
    """kitchen's online ConvRot activation rotation (regular Hadamard per group; applying it twice is identity)."""
    if not group:
        return x2
    from comfy_kitchen.tensor.int8_utils import _build_hadamard, _rotate_activation
    return _rotate_activation(x2, _build_hadamard(int(group), device=x2.device, dtype=torch.float32), int(group))


def _fake_int8(x: torch.Tensor, scale, p=None) -> torch.Tensor:
    """int8_linear's dynamic per-row int8 activations (after the ConvRot rotation when the layer has one)."""
    from comfy_kitchen.backends.eager.quantization import quantize_int8_rowwise
    g = (p or {}).get("group")
    k = int(x.shape[-1])
    x2 = _rotate(x.reshape(-1, k).float(), g)
    q, s = quantize_int8_rowwise(x2)
    return _rotate(q.float() * s, g).reshape(x.shape).to(x.dtype)


def _fake_int4(x: torch.Tensor, scale, p=None) -> torch.Tensor:
    """convrot_w4a4_linear's activations: rotated, then signed int4 per row (amax/7), kitchen's quantizer."""
    from comfy_kitchen.backends.eager.convrot_w4a4 import quantize_signed_int4_rowwise
    g = (p or {}).get("group")
    k = int(x.shape[-1])
    x2 = _rotate(x.reshape(-1, k).float(), g)
    packed, s = quantize_signed_int4_rowwise(x2)
    b = packed.to(torch.int32)
    lo, hi = b & 0xF, (b >> 4) & 0xF
    codes = torch.stack([lo - ((lo >> 3) << 4), hi - ((hi >> 3) << 4)], dim=-1).reshape(x2.shape)
    return _rotate(codes.float() * s.reshape(-1, 1).float(), g).reshape(x.shape).to(x.dtype)


def _fake_mxfp8(x: torch.Tensor, scale, p=None) -> torch.Tensor:
    """MXFP8's native (Blackwell) activations: e4m3 with one E8M0 scale per 32 along K."""
    from comfy_kitchen.backends.eager.quantization import dequantize_mxfp8, quantize_mxfp8
    k = int(x.shape[-1])
    x2 = x.reshape(-1, k).float()
    q, bs = quantize_mxfp8(x2, pad_32x=True)
    y = dequantize_mxfp8(q, bs, torch.float32)[: x2.shape[0], :k]
    return y.reshape(x.shape).to(x.dtype)


def fn_dynamic(p: dict) -> bool:
    """Whether the layer's emulation takes a per-call ("dynamic") scale: fp8 and NVFP4 (their FAKE functions);
    the other formats quantize per row / block at run time anyway."""
    return FAKE.get(p.get("format")) in (_fake_fp8, _fake_nvfp4)


FAKE = {"fp8": _fake_fp8, "nvfp4": _fake_nvfp4, "int8": _fake_int8, "int8_convrot": _fake_int8,
        "w4a8": _fake_int8, "w4a4": _fake_int4, "mxfp8": _fake_mxfp8}


class QGActivationEmulation:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "policy": ("STRING", {"multiline": True, "default": "{\"layers\": {}}",
                                  "tooltip": 'JSON {"layers": {"<linear>": {"format": "fp8"|"nvfp4"|"int8"|'
                                             '"int8_convrot"|"w4a4"|"w4a8"|"mxfp8", "input_scale": number|null, '
                                             '"group": ConvRot group or null, "dynamic": bool (fp8/nvfp4)}}}'}),
        }}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "wrap"
    CATEGORY = "quantgate"
    DESCRIPTION = ("Quantize each listed Linear's input as the native fp8/NVFP4 kernel would "
                   "(comfy-kitchen reference), to see activation scales on a CPU.")

    def wrap(self, model, policy):
        pol = json.loads(policy)
        layers = pol.get("layers", {}) if isinstance(pol, dict) else {}
        for name, p in layers.items():
            if not isinstance(p, dict) or p.get("format") not in FAKE:
                raise ValueError(f"QGActivationEmulation: layer {name!r}: format must be one of {sorted(FAKE)}")
        m0 = model.get_model_object("diffusion_model")
        known = {n for n, _ in _linears(m0)}
        missing = sorted(set(layers) - known)
        if missing:
            raise ValueError(f"QGActivationEmulation: {len(missing)} policy layers are not Linears of this model "
                             f"(first: {missing[0]!r})")

        def hooks(lins, ms, args):
            hs = []
            for name, mod in lins:
                p = layers.get(name)
                if p is None:
                    continue
                dyn = p.get("dynamic") and fn_dynamic(p)          # the gate's reference conversion
                fn, scale = FAKE[p["format"]], ("dynamic" if dyn else p.get("input_scale"))

                def pre(_m, inputs, _fn=fn, _scale=scale, _p=p):
                    if not inputs or not torch.is_tensor(inputs[0]) or inputs[0].dim() < 2:
                        return None
                    return (_fn(inputs[0], _scale, _p),) + tuple(inputs[1:])
                hs.append(mod.register_forward_pre_hook(pre))
            return hs

        return (_wrap(model, hooks),)


NODE_CLASS_MAPPINGS = {"QGCalibrate": QGCalibrate, "QGCalibrationSave": QGCalibrationSave,
                       "QGActivationEmulation": QGActivationEmulation}
NODE_DISPLAY_NAME_MAPPINGS = {"QGCalibrate": "quantgate: calibrate activations",
                              "QGCalibrationSave": "quantgate: save calibration",
                              "QGActivationEmulation": "quantgate: emulate fp8/NVFP4 activations"}
