"""Which number format the model runs in (`VIT_DTYPE`), and why.

On a GPU, `auto` is bfloat16 where the GPU has it. On the CPU it depends on the CPU, which on
this project's machines changes from day to day: bfloat16 is faster than float32 where the CPU
multiplies bf16 natively (avx512_bf16, or AMX's amx_bf16) and slower where it is emulated
(docs/BENCHMARKS.md, "Number formats on the CPU"). So `auto` on the CPU takes bfloat16 only
when the CPU has it natively **and** a short probe at start-up (a few forward passes of the
served model, both formats, interleaved) shows it faster; otherwise float32. The decision
(`choose_dtype`) is a pure function of the request, the device, the CPU's flags and the probe,
so that both capability answers are tested here whatever CPU runs the tests.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # in /proc/cpuinfo, best first
# bf16 must beat float32 by this factor in the probe: a tie on a noisy host is not a reason to
# give up float32's precision.
MARGIN = 0.9


@dataclass(frozen=True)
class Choice:
    dtype: torch.dtype
    reason: str  # one line for the log: what was chosen and why
    emulated: bool = False  # bfloat16 asked for on a CPU without it: a warning


def native_bf16(cpuinfo: str | None = None) -> str | None:
    """The CPU flag that says it multiplies bf16 natively (`cpuinfo`: /proc/cpuinfo's text,
    read when not given), or None: none, or not Linux."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return next((flag for flag in NATIVE_BF16_FLAGS if flag in flags), None)


def choose_dtype(
    requested: str, device: torch.device, bf16_flag: str | None, probe: Callable[[], tuple[float, float]]
) -> Choice:
    """The dtype for `requested` (a VIT_DTYPE value) on `device`; on the CPU with `auto`, `probe`
    (called only where the CPU has native bf16) gives the seconds of a float32 and a bfloat16
    forward pass."""
    if requested != "auto":
        dtype = DTYPES[requested]
        emulated = device.type == "cpu" and dtype == torch.bfloat16 and bf16_flag is None
        note = ": this CPU has no native bf16, so it is emulated and likely slower than float32" if emulated else ""
        return Choice(dtype, f"VIT_DTYPE={requested}{note}", emulated)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Choice(torch.bfloat16, "auto: bfloat16, which this GPU supports")
        return Choice(torch.float32, "auto: float32, since this GPU has no bfloat16")
    if bf16_flag is None:
        flags = " or ".join(NATIVE_BF16_FLAGS)
        return Choice(torch.float32, f"auto: float32, since this CPU has no native bf16 ({flags})")
    fp32_s, bf16_s = probe()
    timings = f"{bf16_s * 1000:.1f} ms a pass in bfloat16 against {fp32_s * 1000:.1f} in float32"
    if bf16_s < MARGIN * fp32_s:
        return Choice(torch.bfloat16, f"auto: bfloat16 (this CPU has {bf16_flag}; the start-up probe: {timings})")
    return Choice(torch.float32, f"auto: float32 (this CPU has {bf16_flag}, but the start-up probe measured {timings})")


def probe(model: torch.nn.Module, batch: int, image_size: int, passes: int = 2) -> tuple[float, float]:
    """The fastest of `passes` forward passes of `model` (float32, left as it is) and of a
    bfloat16 copy, at `batch` images, the two formats interleaved so that the host's drift falls
    on both; after one pass each to warm up. Seconds, (float32, bfloat16)."""
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    pixels = torch.randn(batch, 3, image_size, image_size)
    times: dict[torch.dtype, list[float]] = {torch.float32: [], torch.bfloat16: []}
    with torch.inference_mode():
        for round_ in range(passes + 1):
            for net, dtype in ((model, torch.float32), (bf16, torch.bfloat16)):
                start = time.perf_counter()
                net(pixels.to(dtype))
                if round_:  # the first round warms up
                    times[dtype].append(time.perf_counter() - start)
    return min(times[torch.float32]), min(times[torch.bfloat16])
