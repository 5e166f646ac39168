"""The engine: compiled batch-size buckets, and the one thread all its torch work runs on."""

from __future__ import annotations

import threading

import pytest
import torch

from service.engine import Engine
from tests.service.conftest import tiny_settings


def test_a_compiled_engine_pads_every_batch_to_a_warmed_bucket_and_never_recompiles() -> None:
    engine = Engine.from_settings(tiny_settings(compile=True))
    engine.warmup(4)
    assert engine.compiled and engine.buckets == [1, 2, 4]
    images = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8) for _ in range(3)]
    with torch._dynamo.config.patch(error_on_recompile=True):  # a batch of 3 must run as bucket 4
        out = engine.thread.submit(lambda: engine.forward(engine.stage(images))).result()
    with torch.inference_mode():
        eager = engine.model(engine.stage(images))
    assert out.probs is not None and eager.logits is not None
    assert out.probs.shape == (3, 10) and out.embeddings.shape == (3, 48)
    torch.testing.assert_close(out.probs, eager.logits.softmax(-1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.embeddings, eager.embedding, atol=1e-5, rtol=1e-4)


def test_an_eager_engine_runs_each_batch_at_its_own_size() -> None:
    engine = Engine.from_settings(tiny_settings())
    engine.warmup(4)
    calls: list[int] = []
    engine.model.register_forward_pre_hook(lambda _, args: calls.append(len(args[0])))
    engine.forward(engine.stage([torch.zeros(3, 32, 32, dtype=torch.uint8)] * 3))
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
