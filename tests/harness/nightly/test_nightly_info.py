"""The nightly GPU suite's machinery, run on this CPU in the shared server: the WAN 2.2 TI2V 5B workflow
(48 latent channels, random lighttaew2_2 TAEHV), seconds per step from two step counts, the server-side
memory route, and the machine facts every benchmark record carries."""
import pytest
import torch

from harness.nightly import gpu as N
from harness.render.workflow import Workflow, load


@pytest.fixture(scope="module")
def thin_5b(tmp_path_factory):
    from harness.fixtures.synth import make_model
    return make_model("wan22-ti2v-5b-thin", tmp_path_factory.mktemp("n") / "ti2v5b_thin.safetensors", seed=3,
                      dtype=torch.float32)


def test_ti2v_5b_workflow_renders_and_speed_is_measured(comfy_session, thin_5b):
    old = comfy_session.vae_latent_channels
    comfy_session.vae_latent_channels = 48
    try:
        wf = Workflow(load("wan22_ti2v_5b_smoke"), source="wan22_ti2v_5b_smoke")
        settings = {"cfg": 1.0, "sampler": "euler", "scheduler": "simple", "vae": comfy_session.vae()}
        sm = N.speed_and_memory(comfy_session, wf, thin_5b, settings, steps_lo=1, steps_hi=60, repeats=1)
    finally:
        comfy_session.vae_latent_channels = old
    # 59 more steps must take longer (with 1 vs 5 steps a quiet box's render noise beat the difference)
    assert sm["s_per_step"] > 0, sm
    assert len(sm["render_s"]) == 2 and sm["render_s"][1] > sm["render_s"][0]
    mem = N.memory(comfy_session)               # the route answers; on this CPU machine there is no CUDA
    assert mem["cuda"] is torch.cuda.is_available()


def test_machine_facts_name_the_versions():
    from harness.nightly.info import machine_facts
    f = machine_facts()
    assert f["torch"] == torch.__version__ and f["comfyui_embedded"] == "0.3.75"
    assert f["quantgate_commit"] and len(f["quantgate_commit"]) == 40
