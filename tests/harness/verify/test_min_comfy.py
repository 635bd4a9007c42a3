"""min ComfyUI of a scaled_fp8 file depends on whether it keeps Linears in high precision."""
import json


def test_kj_recipe_needs_0_4_and_all_linear_legacy_does_not(cli, thin_wan5b, tmp_path):
    kj = tmp_path / "kj.safetensors"
    old = tmp_path / "old.safetensors"
    assert cli("convert", thin_wan5b, "-o", kj, "-f", "fp8-legacy").returncode == 0
    assert cli("convert", thin_wan5b, "-o", old, "-f", "fp8-legacy", "--comfy-version", "0.3.75").returncode == 0
    rk = json.loads(cli("verify", kj, "--json").stdout)
    ro = json.loads(cli("verify", old, "--json").stdout)
    assert rk["min_comfy"] == "0.4.0" and any("0.3.77" in w for w in rk["min_comfy_because"])
    assert ro["min_comfy"] == "0.3.25"
