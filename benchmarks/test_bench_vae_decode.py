"""WAN 2.1 VAE decode on a CUDA GPU, bf16 vs fp8-cast weights (harness/fixtures/wan_vae.py: ComfyUI's decoder
shapes, random weights). Measures instead of claiming a speed-up: ComfyUI has no fp8 convolution, so an
fp8 VAE can only be cast back to bf16 per op. Run on the GPU box: ``./qg bench -m gpu -k vae_decode``
(one-shot form without pytest: benchmarks/vae_decode_timing.py; its H200 result is in benchmarks/results/)."""
import pytest
import torch

pytestmark = [pytest.mark.bench, pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def latent():
    g = torch.Generator(device="cuda").manual_seed(1)
    return torch.randn(1, 16, 5, 60, 104, device="cuda", generator=g, dtype=torch.bfloat16)   # 17 frames 832x480


@pytest.mark.parametrize("variant", ["bf16", "fp8-cast"])
def test_wan21_vae_decode_17f_480p(benchmark, latent, variant):
    from harness.fixtures import wan_vae
    m = wan_vae.build(device="cuda", fp8=variant == "fp8-cast")

    def run():
        with torch.inference_mode():
            y = m(latent)
        torch.cuda.synchronize()
        return y

    y = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    assert y.shape == (1, 3, 17, 480, 832) and torch.isfinite(y).all()
    benchmark.extra_info.update(variant=variant, weight_bytes=wan_vae.weight_bytes(m), device=torch.cuda.get_device_name())
