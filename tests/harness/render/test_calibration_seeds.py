"""Issue 21: calibrating on the seeds the gate renders hides overfitting. `calibrate`'s default seeds are
disjoint from the gate's render seeds, and the gate warns when a candidate's calibration seeds (recorded in
its metadata by `convert --calibration`) are among the seeds it renders."""
import json

import torch

from harness.commands import calibrate
from harness.render import gate
from quant.safetensors_io import save_file


def test_default_calibration_seeds_are_not_render_seeds():
    pol = gate.load_policy()
    render = set(pol["plan"]["seeds"]) | {s + int(pol["plan"]["control_seed_offset"]) for s in pol["plan"]["seeds"]}
    default = set(range(calibrate.FIRST_SEED, calibrate.FIRST_SEED + 4))
    assert not default & render


def test_gate_names_calibration_seeds_it_renders(tmp_path):
    t = {"a.weight": torch.zeros(4, 4)}
    p = tmp_path / "c.safetensors"
    save_file(t, p, {"quantgate.calibration": json.dumps({"statistic": "amax", "margin": 1.0,
                                                           "model_sha256": "0" * 64, "seeds": [1, 2, 11]})})
    assert gate.calibration_seed_overlap(p, [1, 2, 3]) == [1, 2]
    assert gate.calibration_seed_overlap(p, [4, 5]) == []
    q = tmp_path / "plain.safetensors"
    save_file(t, q, None)
    assert gate.calibration_seed_overlap(q, [1, 2, 3]) == []


def test_hostile_calibration_metadata_is_no_seeds_not_a_traceback(tmp_path):
    """The metadata is the candidate's, so anyone's: nesting past Python's recursion limit (RecursionError is
    not a ValueError), NaN, a number of 5,000 digits, a list of strings -- no seeds, no crash."""
    t = {"a.weight": torch.zeros(4, 4)}
    for i, text in enumerate(["[" * 100_000 + "]" * 100_000, '{"seeds": [NaN, 1]}', '{"seeds": [' + "9" * 5000 + "]}",
                              '{"seeds": ["1", true]}', "not json"]):
        p = tmp_path / f"h{i}.safetensors"
        save_file(t, p, {"quantgate.calibration": text})
        assert gate.calibration_seed_overlap(p, [1, 2, 3]) == [], text[:20]
