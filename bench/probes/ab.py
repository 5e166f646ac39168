"""`python -m bench.probes.ab <checkout>`: this tree's serving layer against another checkout's, interleaved.

Is a change faster? These hosts are shared and drift by tens of percent within minutes, so two
separate `bench.ceiling` runs cannot say. This runs the null-model server of bench.ceiling from
this tree and from `<checkout>` (e.g. `git worktree add /tmp/before HEAD~1`) in turn, `--rounds`
times, each loaded by wrk with one JPEG a request at concurrency 16, and prints each round's
server CPU per request of this tree over the other's, and their median. Both trees must know
bench.ceiling's null model; `python -m service` runs from each checkout (its decode processes too).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench.ceiling import null_server
from bench.harness import load, measured_load
from bench.workload import jpeg


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.probes.ab", description=__doc__)
    parser.add_argument("checkout", type=Path, help="the other tree: a worktree or clone of another commit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="224,500x375")
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="VIT_WORKERS of both servers")
    args = parser.parse_args(argv)
    trees = {"this": None, "other": args.checkout.resolve()}
    sizes = args.sizes.split(",")
    cpu: dict[tuple[str, str], list[float]] = {(tree, size): [] for tree in trees for size in sizes}
    for round_ in range(args.rounds):
        for tree, path in trees.items():
            with null_server(tree=path, workers=args.workers) as server:
                for size in sizes:
                    body, target = jpeg(size), server.url + "/v1/classify?top_k=1"
                    load(target, body, args.concurrency, 1)  # warm-up, not measured
                    result, main_ms, decode_ms = measured_load(
                        server.pid, target, body, args.concurrency, args.duration
                    )
                    ms = main_ms + decode_ms
                    cpu[(tree, size)].append(ms)
                    print(
                        f"round {round_ + 1} {tree} {size}: {result['requests_per_s']:.0f} requests/s, "
                        f"{ms:.3f} ms server CPU per request, "
                        f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms",
                        flush=True,
                    )
    for size in sizes:
        ratios = [a / b for a, b in zip(cpu[("this", size)], cpu[("other", size)], strict=True)]
        print(
            f"{size}: this tree's server CPU per request ÷ the other's, per round: "
            f"{', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f} "
            f"({statistics.median(cpu[('this', size)]):.2f} ms against {statistics.median(cpu[('other', size)]):.2f})"
        )


if __name__ == "__main__":
    main()
