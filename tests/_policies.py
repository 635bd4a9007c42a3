"""Small render-gate policies for tests that run `quantgate gate` as a command (a TOML file)."""


def small_policy_toml(sizes=((64, 64), (80, 48)), timeout_s: int = 120) -> str:
    """One seed, few steps; the shipped thresholds for fp8-legacy and the rest; a control that must
    score below 0.9."""
    size_list = ", ".join(f"[{w}, {h}]" for w, h in sizes)
    return f"""
[plan]
seeds = [1]
sizes = [{size_list}]
steps = 4
cfg = 1.0
sampler = "euler"
scheduler = "simple"
control_seed_offset = 1000
render_timeout_s = {timeout_s}
[thresholds]
fp8-legacy = 0.97
default = 0.95
[control]
max_ssim = 0.9
min_margin = 0.05
"""
