"""`python -m bench.probes.gil`: what a busy event loop costs the engine thread beside it.

One vit-serve process runs its event loop (HTTP, parsing, answering) and the engine's torch
thread in one interpreter, and every torch op releases the GIL and takes it back. This runs
the engine's work (`Engine.stage` and `Engine.forward` of the null model, on the engine's own
thread, back to back) while the main thread

- waits (`idle`);
- runs Python, holding the GIL as a busy event loop does (`python`);
- keeps its core busy outside the GIL, hashing (`no-gil`): a busy core, a free GIL;

and prints the engine thread's CPU (`time.thread_time`) and wall time per batch in each case,
interleaved over `--rounds`. What `python` adds beyond `no-gil` is the GIL's, not the cores'.
With `VIT_WORKERS` > 1 the engine runs in a process, and under a GIL, of its own.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from bench.procfs import cpu_model
from service.engine import Engine
from service.settings import Settings

MODEL = "vit_null_patch56_224"  # bench.ceiling's: its forward pass is op calls, little arithmetic


def _busy_python() -> None:
    sum(range(200))


_BLOB = b"\0" * (1 << 20)


def _busy_without_gil() -> None:
    hashlib.sha256(_BLOB).digest()  # hashlib releases the GIL for data this large


CASES: dict[str, Callable[[], None] | None] = {"idle": None, "python": _busy_python, "no-gil": _busy_without_gil}


def measure(engine: Engine, batch: int, batches: int, main: Callable[[], None] | None) -> tuple[float, float]:
    """Median engine-thread CPU ms and wall ms per batch of `batch` images, over `batches`
    batches run back to back on the engine's thread while the main thread runs `main` in a
    loop (or waits, for None)."""
    images = [np.zeros((224, 224, 3), np.uint8) for _ in range(batch)]  # as the decode processes hand them over

    def timed() -> tuple[float, float]:
        cpu, wall = time.thread_time(), time.perf_counter()
        engine.forward(engine.stage(images))
        return time.thread_time() - cpu, time.perf_counter() - wall

    futures = [engine.torch_thread.submit(timed) for _ in range(batches)]
    while main is not None and not futures[-1].done():
        main()
    cpu, wall = zip(*(future.result() for future in futures), strict=True)
    return 1000 * statistics.median(cpu), 1000 * statistics.median(wall)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.probes.gil", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=7, help="images a batch (7-8: the ceiling's mean at 224×224)")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as bench.ceiling runs the null model
    engine = Engine.from_settings(Settings(_env_file=None, model=MODEL, device="cpu", dtype="float32"))
    measure(engine, args.batch, 20, None)  # warm-up
    print(f"{cpu_model()}, Python {sys.version.split()[0]}, switch interval {sys.getswitchinterval() * 1000:g} ms")
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in CASES}
    for _ in range(args.rounds):
        for name, busy in CASES.items():
            results[name].append(measure(engine, args.batch, args.batches, busy))
    for name, runs in results.items():
        cpu = ", ".join(f"{c:.2f}" for c, _ in runs)
        wall = ", ".join(f"{w:.2f}" for _, w in runs)
        print(f"main thread {name}: engine thread per batch of {args.batch}: CPU {cpu} ms; wall {wall} ms")


if __name__ == "__main__":
    main()
