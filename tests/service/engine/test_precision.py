"""VIT_DTYPE (service/engine/precision.py): auto's choice on CPUs with and without native bf16,
whatever CPU runs the tests, and the probe it runs."""

from __future__ import annotations

import pytest
import torch

from model.config import preset
from model.vit import VisionTransformer
from service.engine import Engine
from service.engine.precision import choose_dtype, native_bf16, probe
from tests.service.servers import tiny_settings

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE_RAPIDS = "flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
OLDER = "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"


def never() -> tuple[float, float]:
    raise AssertionError("the probe must not run here")


def test_the_cpu_flags_say_whether_bf16_is_native() -> None:
    assert native_bf16(ZEN4) == "avx512_bf16"
    assert native_bf16(SAPPHIRE_RAPIDS) == "amx_bf16"
    assert native_bf16(OLDER) is None and native_bf16("") is None


def test_auto_on_a_cpu_without_native_bf16_is_float32_without_probing() -> None:
    choice = choose_dtype("auto", CPU, native_bf16(OLDER), never)
    assert choice.dtype == torch.float32 and "no native bf16" in choice.reason and not choice.emulated


@pytest.mark.parametrize(
    ("fp32_s", "bf16_s", "expected"), [(0.080, 0.045, torch.bfloat16), (0.080, 0.075, torch.float32)]
)
def test_auto_on_a_cpu_with_native_bf16_follows_the_probe(fp32_s: float, bf16_s: float, expected: torch.dtype) -> None:
    choice = choose_dtype("auto", CPU, native_bf16(ZEN4), lambda: (fp32_s, bf16_s))
    assert choice.dtype == expected
    assert "avx512_bf16" in choice.reason and f"{bf16_s * 1000:.1f} ms" in choice.reason


def test_an_explicit_dtype_is_kept_and_emulated_bf16_warns() -> None:
    emulated = choose_dtype("bfloat16", CPU, None, never)
    assert emulated.dtype == torch.bfloat16 and emulated.emulated and "emulated" in emulated.reason
    native = choose_dtype("bfloat16", CPU, "avx512_bf16", never)
    assert native.dtype == torch.bfloat16 and not native.emulated
    assert choose_dtype("float32", CPU, "amx_bf16", never).dtype == torch.float32


def test_auto_on_a_gpu_does_not_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert choose_dtype("auto", CUDA, None, never).dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert choose_dtype("auto", CUDA, None, never).dtype == torch.float32


def test_the_probe_times_both_formats_and_leaves_the_model_in_float32() -> None:
    model = VisionTransformer(preset("vit_test_tiny")).eval()
    fp32_s, bf16_s = probe(model, 2, 32, passes=1)
    assert fp32_s > 0 and bf16_s > 0
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_an_auto_engine_reports_what_it_chose_and_why() -> None:
    engine = Engine.from_settings(tiny_settings(dtype="auto"))
    assert engine.dtype in (torch.float32, torch.bfloat16)
    assert engine.dtype_reason.startswith(f"auto: {engine.dtype_name}")
    assert {p.dtype for p in engine.model.parameters()} == {engine.dtype}
