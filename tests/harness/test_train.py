"""The trained tiny reference model: its training is deterministic, the committed weights are the
ones the current script makes (recorded script hash), and its analytic decoder inverts the latent map."""
from __future__ import annotations

import json

import pytest
import torch

from harness.train import data, latent, tiny_model as tm
from quant.safetensors_io import SafetensorsFile


def _train(tmp_path, name, seed):
    cfg = tm.Config(seed=seed, steps=3, batch=4)
    state, info = tm.train(cfg, progress=False)
    info = {k: v for k, v in info.items() if k != "train_s"}      # wall time is the one thing allowed to differ
    return tm.save(state, tmp_path / name, cfg, info).read_bytes()


def test_training_is_deterministic(tmp_path):
    a = _train(tmp_path, "a.safetensors", 5)
    b = _train(tmp_path, "b.safetensors", 5)
    c = _train(tmp_path, "c.safetensors", 6)
    assert a == b
    assert a != c


def test_committed_weights_come_from_this_script():
    with SafetensorsFile(tm.WEIGHTS) as f:
        meta = f.metadata
        assert set(f.keys()) == {n for n, _ in __import__("quant.arch", fromlist=["get"]).get(tm.ARCH).tensors()}
        assert {f.info(n).dtype for n in f.keys()} == {"BF16"}
    assert meta["quantgate_model"] == tm.ARCH
    assert meta["quantgate_script_sha256"] == tm.script_hash(), \
        "harness/train changed since the weights were trained: run ./qg train-tiny --force"
    rec = json.loads(meta["quantgate_train"])
    assert rec["loss_last50"] < 0.6 * rec["loss_first50"]
    assert tm.WEIGHTS.stat().st_size <= 8_000_000


def test_conditioning_is_the_render_node():
    import importlib.util
    from pathlib import Path
    f = Path(tm.__file__).resolve().parents[1] / "custom_nodes" / "quantgate_nodes.py"
    spec = importlib.util.spec_from_file_location("qg_nodes_under_test", f)
    nodes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nodes)
    (cond, _), = nodes.QGRandomConditioning().make(1, data.COND_TOKENS, data.COND_DIM, 1.0)[0]
    assert torch.equal(cond, data.conditioning(1))


def test_latent_map_round_trip():
    gen = torch.Generator().manual_seed(0)
    rgb, _ = data.batch(gen, 6, 64, 96)
    z = latent.encode(rgb)
    assert z.shape == (6, 16, 8, 12)
    assert 0.4 < float(z.std()) < 1.2                     # about the scale of a real WAN latent
    back = latent.decode_coarse(z)
    assert torch.allclose(back, torch.nn.functional.avg_pool2d(rgb, 8), atol=1e-5)


def test_simple_schedule_matches_comfy():
    tm._comfy()
    import comfy.model_sampling as ms
    import comfy.samplers
    from comfy.supported_models import WAN21_T2V

    class Cfg:
        sampling_settings = dict(WAN21_T2V.sampling_settings)

    s = ms.ModelSamplingDiscreteFlow(Cfg())
    sig = comfy.samplers.simple_scheduler(s, 6)
    assert sig.tolist() == pytest.approx(tm.simple_sigmas(6), abs=1e-6)
    assert float(s.timestep(torch.tensor(0.5))) == pytest.approx(0.5 * tm.MULTIPLIER)
