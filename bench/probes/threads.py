"""`python -m bench.probes.threads`: why all of an engine's torch work runs on one thread.

Times a batch-1 forward pass of a model built and run on the same thread, against one built on
the main thread and run on a worker thread (each in a fresh process, so neither inherits the
other's OpenMP teams). On a CPU build of torch, the second has two libgomp teams in the process.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from model.config import preset
from model.vit import VisionTransformer


def _median_pass_ms(model_name: str, build_on_worker: bool, passes: int) -> float:
    worker = ThreadPoolExecutor(1)
    build = lambda: VisionTransformer(preset(model_name)).eval()  # noqa: E731
    model = worker.submit(build).result() if build_on_worker else build()
    size = model.cfg.image_size
    x = worker.submit(torch.randn, 1, 3, size, size).result()

    @torch.inference_mode()
    def one() -> float:
        start = time.perf_counter()
        model(x)
        return time.perf_counter() - start

    for _ in range(5):
        worker.submit(one).result()
    return 1000 * statistics.median(worker.submit(one).result() for _ in range(passes))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.probes.threads", description=__doc__)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--passes", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=["same", "other"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(_median_pass_ms(args.model, args.child == "same", args.passes))
        return
    for round_ in range(args.rounds):  # interleaved, so drift on a shared machine hits both alike
        times = {}
        for mode in ("same", "other"):
            cmd = [sys.executable, "-m", "bench.probes.threads", "--model", args.model, "--passes", str(args.passes)]
            out = subprocess.run([*cmd, "--child", mode], capture_output=True, text=True, check=True)
            times[mode] = float(out.stdout)
        print(
            f"round {round_ + 1}: built and run on one thread {times['same']:.1f} ms; "
            f"built on main, run on a worker {times['other']:.1f} ms ({times['other'] / times['same']:.2f}×)"
        )


if __name__ == "__main__":
    main()
