"""inspect / formats / --help: what users read."""
import json

from quant import formats as spec


def test_inspect_reports_layout_and_formats(cli, thin_wan5b, tmp_path):
    from quant.convert import convert
    out = tmp_path / "nv.safetensors"
    convert(thin_wan5b, out, "nvfp4")
    r = cli("inspect", out, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["family"] == "wan" and s["tensors"] == 123
    assert s["quantized_formats"] == {"nvfp4": 14, "fp8": 6}
    assert s["layout"].startswith("comfy_quant mixed (20 layers in header, 20 .comfy_quant")
    r = cli("inspect", thin_wan5b)
    assert "unquantized" in r.stdout and "BF16" in r.stdout
    legacy = tmp_path / "l.safetensors"
    convert(thin_wan5b, legacy, "fp8-legacy")
    assert "legacy scaled fp8 (marker scaled_fp8, 20 scale_weight)" in cli("inspect", legacy).stdout


def test_formats_doc_comes_from_spec(cli):
    r = cli("formats")
    assert r.returncode == 0
    for f in spec.FORMATS.values():
        assert f.name in r.stdout and f.min_comfy in r.stdout
    assert "cuBLAS 128x4 swizzled" in r.stdout and "scale_weight" in r.stdout


def test_readme_formats_table_is_the_registry(cli):
    """The README's formats table is `quantgate formats --markdown` (generated from quant.formats), and its
    ComfyUI column names each format's minimum version facts."""
    from tests.conftest import ROOT
    r = cli("formats", "--markdown")
    assert r.returncode == 0, r.stderr
    table = r.stdout.strip()
    assert table in (ROOT / "README.md").read_text(), "README formats table differs from `quantgate formats --markdown`"
    rows = table.splitlines()[2:]
    assert [row.split("`")[1] for row in rows] == list(spec.TARGETS)


def test_formats_min_comfy_is_what_the_checker_finds(thin_wan5b, tmp_path):
    """The ComfyUI column (README/`formats --markdown`) is what `verify` finds in a converted file, and a
    format's min_comfy is what it finds in a file written for the oldest ComfyUI."""
    import re

    from harness.verify import verify
    from quant.convert import convert
    for f in spec.FORMATS.values():
        if not f.target:                 # a dialect quantgate reads (int8-fast), never writes
            continue
        out = tmp_path / f"{f.name}.safetensors"
        convert(thin_wan5b, out, f.name)
        assert verify(out, header_only=True).min_comfy == re.match(r"≥ ([0-9.]+)", f.doc_comfy).group(1), f.name
        old = tmp_path / f"{f.name}-old.safetensors"
        convert(thin_wan5b, old, f.name, comfy_version=f.min_comfy)
        assert verify(old, header_only=True).min_comfy == f.min_comfy, f.name


def test_help_lists_commands_and_exit_codes(cli):
    r = cli("--help")
    assert r.returncode == 0
    for c in ("convert", "plan", "inspect", "verify", "diff", "gate", "demo"):
        assert c in r.stdout
    assert "exit codes" in r.stdout
    r = cli("convert", "--help")
    assert "--format" in r.stdout and "fp8-legacy" in r.stdout and "exit codes" in r.stdout


def test_no_command_is_usage_error(cli):
    assert cli().returncode == 2


def test_inspect_counts_layers_declared_only_by_comfy_quant_tensors(cli, thin_wan5b, tmp_path):
    from safetensors import safe_open

    from quant.convert import convert
    from quant.safetensors_io import save_file
    out = tmp_path / "nv.safetensors"
    convert(thin_wan5b, out, "nvfp4")
    with safe_open(str(out), "pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "_quantization_metadata"}
        t = {k: f.get_tensor(k) for k in f.keys()}
    cq_only = tmp_path / "cq_only.safetensors"
    save_file(t, cq_only, meta)
    s = json.loads(cli("inspect", cq_only, "--json").stdout)
    assert s["quantized_formats"] == {"nvfp4": 14, "fp8": 6}
