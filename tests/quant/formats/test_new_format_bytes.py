"""The formats ComfyUI 0.33 ships beside fp8/nvfp4 write the bytes comfy-kitchen 0.2.40's eager reference writes
on the same input (odd sizes, every float dtype, outliers, zero rows, a tensor big enough to be chunked), their
layer tensors are what the header promises, and the plan hands a layer a format cannot hold to its fallback."""
from __future__ import annotations

import comfy_kitchen as ck
import pytest
import torch

from quant import formats, presets
from quant.errors import UsageError

NEW = ("int8", "int8-convrot", "mxfp8", "w4a4-convrot", "w4a8-int8")
SHAPES = [(1, 1), (3, 5), (33, 50), (17, 48), (64, 256), (128, 128), (100, 320), (7, 1024)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _x(n, k, dtype, kind, seed=0):
    g = torch.Generator().manual_seed(seed + n * 1000 + k)
    x = torch.randn(n, k, generator=g) * 0.05
    if kind == "outliers":
        x[:, torch.randint(0, k, (max(1, k // 50),), generator=g)] *= 40
    elif kind == "zero-rows":
        x[: n // 2] = 0
    elif kind == "heavy":
        x = x * torch.distributions.StudentT(1.5).sample((n, k)).clamp(-50, 50)
    return x.to(dtype)


def _kitchen(fmt, x, conf):
    """comfy-kitchen's own eager quantizer for the format, with the parameters our file declares."""
    from comfy_kitchen.backends.eager import quantization as Q
    from comfy_kitchen.tensor import quantize_convrot_w4a4_weight, quantize_w4a8_int8_weight
    with ck.use_backend("eager"):
        if fmt == "int8":
            q, s = Q.quantize_int8_rowwise(x)
            return {"weight": q, "weight_scale": s}
        if fmt == "int8-convrot":
            q, s = Q.quantize_int8_convrot_weight(x, conf["convrot_groupsize"])
            return {"weight": q, "weight_scale": s}
        if fmt == "mxfp8":
            q, s = ck.quantize_mxfp8(x, pad_32x=x.shape[0] % 32 != 0 or x.shape[1] % 32 != 0)
            return {"weight": q, "weight_scale": s.view(torch.uint8)}
        if fmt == "w4a4-convrot":
            q, s = quantize_convrot_w4a4_weight(x, conf["convrot_groupsize"])
            return {"weight": q, "weight_scale": s}
        q, sr, sc, _corr, cb = quantize_w4a8_int8_weight(x, conf["group_size"], conf["convrot_groupsize"])
        return {"weight": q, "weight_s_rel": sr, "weight_s_channel": sc, "weight_codebook": cb}


def _same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(torch.uint8),
                                                                     b.contiguous().view(torch.uint8))


@pytest.mark.parametrize("fmt", NEW)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["normal", "outliers", "zero-rows", "heavy"])
def test_bytes_bit_exact_with_comfy_kitchen(fmt, shape, dtype, kind):
    f = formats.get(fmt)
    n, k = shape
    if f.refuses(n, k):
        pytest.skip(f"{fmt} does not take K={k} (the plan gives it to {f.fallback_action or 'keep'})")
    x = _x(n, k, dtype, kind)
    ours = f.quantize(x)
    conf = f.layer_config(False, None, (n, k))
    theirs = _kitchen(fmt, x, conf)
    assert set(ours) == set(theirs)
    for key in ours:
        assert _same(ours[key], theirs[key]), (fmt, shape, dtype, kind, key)
    # the header's promise: every written tensor has the entry's dtype and shape
    tensors = f.layer_tensors("L", ours)
    from quant.safetensors_io import DTYPE_NAMES
    for key, dt, shp in f.layer_entries("L", n, k):
        assert (DTYPE_NAMES[tensors[key].dtype], tuple(tensors[key].shape)) == (dt, tuple(shp)), key


def test_w4a8_chunked_rows_bit_exact():
    """More rows than kitchen's 4M-element chunk: the same codebook across chunks, the same bytes."""
    f = formats.get("w4a8-int8")
    x = _x(4200, 1024, torch.bfloat16, "normal")
    ours, theirs = f.quantize(x), _kitchen("w4a8-int8", x, f.layer_config(False, None, (4200, 1024)))
    assert all(_same(ours[key], theirs[key]) for key in ours)


@pytest.mark.parametrize("fmt", NEW)
def test_dequantize_inverts_within_the_format_bound(fmt):
    f = formats.get(fmt)
    x = _x(64, 256, torch.float32, "normal")
    q = f.quantize(x)
    conf = f.layer_config(False, None, (64, 256))
    back = f.dequantize(q, (64, 256), group=conf.get("convrot_groupsize")) if conf.get("convrot_groupsize") \
        else f.dequantize(q, (64, 256))
    rel = float((back - x).norm() / x.norm())
    assert rel <= f.max_rel_error, rel
    bound = f.elem_bound(q, x, conf)          # every row of a correct encoding lies within the format's bound
    assert bool(((back - x).square().sum(1) <= bound.square().sum(1) * (1 + 1e-3)).all())
    assert bool(((-back - x).square().sum(1) > bound.square().sum(1)).all())     # a negated row does not


def _plan(fmt, shapes):
    p = presets.load("smart")
    return {d.name: d for d in presets.plan(p, fmt, [(f"blocks.0.l{i}.weight", "BF16", s)
                                                     for i, s in enumerate(shapes)]).decisions}


def test_plan_falls_back_where_a_format_cannot_hold_a_layer():
    shapes = [(128, 4104), (128, 1040), (128, 1024)]        # K % 16 != 0 | K % 64 != 0 | both fine
    d = _plan("int8-convrot", shapes)
    assert [d[f"blocks.0.l{i}.weight"].action for i in range(3)] == ["int8", "int8_convrot", "int8_convrot"]
    assert "K=4104" in d["blocks.0.l0.weight"].reason
    d = _plan("w4a4-convrot", shapes)
    assert [d[f"blocks.0.l{i}.weight"].action for i in range(3)] == ["int8", "int8_convrot", "w4a4"]
    d = _plan("mxfp8", shapes)                                # pads: holds every shape
    assert {x.action for x in d.values()} == {"mxfp8"}


def test_four_bit_sensitive_layers_are_int8_convrot(tmp_path):

    p = presets.load("wan22-a14b")
    names = [("blocks.0.self_attn.v.weight", "BF16", (128, 128)), ("blocks.0.self_attn.q.weight", "BF16", (128, 128))]
    for fmt, low in (("w4a4-convrot", "w4a4"), ("w4a8-int8", "w4a8"), ("nvfp4", "nvfp4")):
        d = {x.name: x.action for x in presets.plan(p, fmt, names).decisions}
        assert d["blocks.0.self_attn.q.weight"] == low
        assert d["blocks.0.self_attn.v.weight"] == ("fp8" if fmt == "nvfp4" else "int8_convrot")


@pytest.mark.parametrize("fmt", NEW)
def test_learned_rounding_and_calibration_refused_with_one_line(fmt, tmp_path):
    from quant.convert import convert
    src = tmp_path / "src.safetensors"
    from quant.safetensors_io import save_file
    save_file({"blocks.0.ffn.0.weight": torch.randn(128, 256).to(torch.bfloat16)}, src)
    with pytest.raises(UsageError, match="learned"):
        convert(src, tmp_path / "o.safetensors", fmt, rounding="learned")
    with pytest.raises(UsageError, match="no input_scale"):
        convert(src, tmp_path / "o.safetensors", fmt, input_scales={"blocks.0.ffn.0": 3.0})
    assert not (tmp_path / "o.safetensors").exists()


def test_formats_registry_knows_the_new_formats():
    assert set(NEW) <= set(formats.TARGETS)
    assert formats.for_conf({"format": "int8_tensorwise"}).name == "int8"
    assert formats.for_conf({"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": 256}).name == "int8-convrot"
    assert formats.for_conf({"format": "int8_tensorwise", "params": {"convrot": True}}).name == "int8-convrot"
    assert formats.for_conf({"format": "convrot_w4a4"}).name == "w4a4-convrot"
    assert formats.for_conf({"format": "asym_w4a8_int8"}).name == "w4a8-int8"
    assert formats.for_conf({"format": "mxfp8"}).name == "mxfp8"
    assert formats.for_conf({"format": "awq_w4a16"}) is None
