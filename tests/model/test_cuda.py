"""The CUDA paths: dtypes on the GPU, and the engine's pinned, non-blocking staging."""

from __future__ import annotations

import pytest
import torch

from model.config import preset
from model.vit import VisionTransformer
from tests.images import normalised, pixels

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA); none is present")


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-4), (torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
@torch.inference_mode()
def test_gpu_matches_cpu_float32(dtype: torch.dtype, tol: float) -> None:
    torch.manual_seed(0)
    cpu = VisionTransformer(preset("vit_test_tiny")).eval()
    gpu = VisionTransformer(cpu.cfg).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.to("cuda", dtype)
    x = torch.randn(8, 3, 32, 32)
    ref = cpu(x)
    out = gpu(x.to("cuda", dtype))
    assert (out.embedding.float().cpu() - ref.embedding).abs().max() <= tol * ref.embedding.abs().max()


def test_engine_stages_through_pinned_memory_and_normalises_on_the_gpu() -> None:
    from service.engine import Engine
    from service.settings import Settings

    engine = Engine.from_settings(Settings(_env_file=None, model="vit_test_tiny", device="cuda", compile=False))
    images = [pixels(i) for i in range(4)]
    staged = engine.stage(images)
    assert staged.device.type == "cuda" and staged.dtype == torch.bfloat16
    out = engine.forward(staged)
    assert out.embeddings.shape == (4, 48) and torch.isfinite(out.embeddings).all()
    memory = engine.gpu_memory()
    assert set(memory) == {"allocated", "reserved"} and 0 < memory["allocated"] <= memory["reserved"]


def test_compiled_buckets_and_hidden_states_on_the_gpu() -> None:
    from service.engine import Engine
    from service.settings import Settings

    engine = Engine.from_settings(Settings(_env_file=None, model="vit_test_tiny", device="cuda", compile=True))
    engine.warmup(4)
    images = [pixels(i) for i in range(3)]
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = engine.torch_thread.submit(lambda: engine.forward(engine.stage(images))).result()
    assert out.embeddings.shape == (3, 48)
    hidden = engine.torch_thread.submit(lambda: engine.forward(engine.stage(images), [-2])).result().hidden[-2]
    assert hidden.shape == (3, 17, 48) and hidden.device.type == "cpu"


def test_a_batch_of_v2_tensors_and_pixels_is_staged_on_the_gpu() -> None:
    """/v2 may send normalised float32 tensors (on the host), batched with pixels that staging
    puts on the GPU: both must end up there, or the whole batch fails."""
    from service.engine import Engine
    from service.settings import Settings

    engine = Engine.from_settings(Settings(_env_file=None, model="vit_test_tiny", device="cuda", compile=False))
    staged = engine.stage([pixels(), normalised()])
    assert staged.device.type == "cuda" and staged.shape == (2, 3, 32, 32)
    torch.testing.assert_close(staged[0], engine.stage([pixels()])[0])
