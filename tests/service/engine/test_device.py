"""The engine on its device: compiled batch-size buckets, the one thread all its torch work runs on,
and batches split in halves when the device runs out of memory."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from model.vit import ViTOutput
from service.engine import BatchOutput, Engine
from tests.families import CASES, save
from tests.images import normalised, pixels
from tests.service.servers import tiny_settings


def compiled_and_eager(engine: Engine, count: int) -> tuple[BatchOutput, ViTOutput]:
    """`count` random images through the warmed, compiled engine (no recompilation allowed) and
    through its model eagerly."""
    images = [pixels(i) for i in range(count)]
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = engine.torch_thread.submit(lambda: engine.forward(engine.stage(images))).result()
    with torch.inference_mode():
        return out, engine.model(engine.stage(images))


def test_a_compiled_engine_pads_every_batch_to_a_warmed_bucket_and_never_recompiles() -> None:
    engine = Engine.from_settings(tiny_settings(compile=True))
    engine.warmup(4)
    assert engine.compiled and engine.buckets == [1, 2, 4]
    assert engine.card.compiled_buckets == (1, 2, 4)  # /v1/models' compiled_batch_sizes
    out, eager = compiled_and_eager(engine, 3)  # a batch of 3 must run as bucket 4
    assert out.probs is not None and eager.logits is not None
    assert out.probs.shape == (3, 10) and out.embeddings.shape == (3, 48)
    torch.testing.assert_close(out.probs, eager.logits.softmax(-1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.embeddings, eager.embedding, atol=1e-5, rtol=1e-4)


def test_batches_are_staged_as_inference_tensors_as_forward_pads_them() -> None:
    """A compiled graph on CUDA guards on inference mode: staged and padded tensors must agree."""
    engine = Engine.from_settings(tiny_settings())
    assert engine.stage([pixels()]).is_inference()
    assert engine.stage([pixels(), normalised()]).is_inference()  # a /v2 tensor beside pixels


def test_pixels_decoded_on_the_device_are_staged_as_the_same_pixels_from_the_cpu() -> None:
    """VIT_GPU_DECODE hands the batcher uint8 (S, S, 3) tensors; here on the CPU, as on the GPU."""
    engine = Engine.from_settings(tiny_settings())
    images = [pixels(i) for i in range(3)]
    mixed = [torch.from_numpy(images[0]), images[1], torch.from_numpy(images[2])]
    staged = engine.stage(mixed)
    assert staged.is_inference()
    torch.testing.assert_close(staged, engine.stage(images), atol=0, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["SiglipVisionModel", "Dinov2WithRegistersModel", "DeiTForImageClassificationWithTeacher"]
)
def test_compiled_buckets_cover_the_families(name: str, tmp_path: Path) -> None:
    """An attention-pool head, registers and LayerScale, two heads: the compiled path as the eager."""
    save(next(c for c in CASES if c.name == name), tmp_path)
    engine = Engine.from_settings(tiny_settings(checkpoint=str(tmp_path), compile=True))
    engine.warmup(2)
    out, eager = compiled_and_eager(engine, 2)
    torch.testing.assert_close(out.embeddings, eager.embedding, atol=1e-5, rtol=1e-4)
    if eager.logits is not None:
        assert out.probs is not None
        torch.testing.assert_close(out.probs, eager.logits.softmax(-1), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_an_int8_engine_is_compiled_and_computes_as_the_eager_int8_model() -> None:
    engine = Engine.from_settings(tiny_settings(quantize="int8", max_batch_size=2))
    assert engine.compiled and engine.card.dtype == "int8" and "VIT_QUANTIZE=int8" in engine.card.dtype_reason
    engine.warmup(2)
    out, eager = compiled_and_eager(engine, 2)
    cosine = torch.nn.functional.cosine_similarity(out.embeddings, eager.embedding)
    assert cosine.min() >= 0.999


def test_an_eager_engine_runs_each_batch_at_its_own_size() -> None:
    engine = Engine.from_settings(tiny_settings())
    engine.warmup(4)
    calls: list[int] = []
    engine.model.register_forward_pre_hook(lambda _, args: calls.append(len(args[0])))
    engine.forward(engine.stage([pixels()] * 3))
    assert calls == [3]  # no padding without compilation: it would only waste compute


def test_loading_and_warmup_run_on_the_engines_own_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    original = Engine.__init__

    def spy(self: Engine, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        seen.append(threading.current_thread().name)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "__init__", spy)
    engine = Engine.from_settings(tiny_settings())
    engine.model.register_forward_pre_hook(lambda *_: seen.append(threading.current_thread().name))
    engine.warmup(2)
    assert set(seen) == {"vit-torch_0"} and len(seen) == 3  # the load, and buckets 1 and 2


def _out_of_memory_above(engine: Engine, size: int) -> list[int]:
    """Make the model raise CUDA's out-of-memory error for batches larger than `size` (as a GPU
    would), and return the sizes of the batches it computed."""
    computed: list[int] = []

    def hook(_: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if len(args[0]) > size:
            raise torch.cuda.OutOfMemoryError("out of memory (injected)")
        computed.append(len(args[0]))

    engine.model.register_forward_pre_hook(hook)
    return computed


def test_out_of_memory_splits_the_batch_before_failing_anything() -> None:
    engine = Engine.from_settings(tiny_settings())
    images = [pixels(i) for i in range(7)]
    whole = engine.forward(engine.stage(images), [1])
    computed = _out_of_memory_above(engine, 2)
    split = engine.forward(engine.stage(images), [1])
    assert computed == [1, 2, 2, 2]  # 7 -> 3 + 4 -> (1 + 2) + (2 + 2)
    assert whole.probs is not None and split.probs is not None
    torch.testing.assert_close(split.probs, whole.probs)
    torch.testing.assert_close(split.embeddings, whole.embeddings)
    torch.testing.assert_close(split.hidden[1], whole.hidden[1])


def test_out_of_memory_at_batch_one_fails() -> None:
    engine = Engine.from_settings(tiny_settings())
    _out_of_memory_above(engine, 0)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        engine.forward(engine.stage([pixels()] * 2))


def test_a_crop_setting_replaces_the_processors_resize_and_crop(tmp_path: Path) -> None:
    save(next(c for c in CASES if c.name == "Dinov2Model"), tmp_path)  # shortest edge 40, then 32
    assert Engine.from_settings(tiny_settings(checkpoint=str(tmp_path))).preprocess.resize_size == 40
    engine = Engine.from_settings(tiny_settings(checkpoint=str(tmp_path), crop_pct=1.0))
    assert (engine.preprocess.resize_mode, engine.preprocess.resize_size, engine.preprocess.crop_pct) == (
        "crop",
        0,
        1.0,
    )
