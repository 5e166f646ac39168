"""`python -m bench.ceiling`: what the serving layer itself can carry, whatever the model.

vit-serve runs `vit_null_patch56_224` (a ViT of width 8 and one block at 224×224, random weights:
its forward pass costs microseconds), so what is measured is HTTP, parsing, decoding, batching
and answering: the limit a GPU would meet first. wrk loads it (a compiled client that costs the
server's cores little: `apt-get install wrk`, which `make bench-ceiling` runs; without it, the
Python load generator of bench.load stands in, and the results say so), with one JPEG per
request at concurrency 1 and 16, 224×224 and ImageNet-like 500×375, and `/healthz` and
`/v1/models` as floors. For each point: requests/s, the server's CPU per request (its process and
its decode processes, from /proc), the in-process cost of decoding, resizing and normalising
that image on the same machine, and their ratio. Last, the same for the floor of any Python
front-end: a bare uvicorn app that only decodes (bench.peers.decode_only; `--no-decode-only`
skips it). `--pin-server` and `--pin-client` take CPU
lists for taskset. Writes ceiling.json and ceiling.png to --out.

    python -m bench.ceiling --out docs/bench            # the full run (about two minutes)
    python -m bench.ceiling --quick --out /tmp/ceiling  # seconds: the CI smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import re
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.harness import Server, free_port, machine, measured_load, run, vit_serve, vit_serve_env
from bench.procfs import cpu_seconds, process_tree, thread_cpu_seconds
from bench.workload import jpeg
from model.preprocess import PreprocessConfig
from model.tensors import load_image, normalize

MODEL = "vit_null_patch56_224"
# The server's preprocessing for a preset without a checkpoint (squash, bilinear), timed in process.
PREPROCESS = PreprocessConfig()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--pin-server", default=None, help="CPU list for the server (taskset -c)")
    parser.add_argument("--pin-client", default=None, help="CPU list for wrk (taskset -c)")
    parser.add_argument("--sizes", default="224,500x375", help="JPEG sizes to classify (4000x3000: a phone photo)")
    parser.add_argument("--floors", action=argparse.BooleanOptionalAction, default=True, help="/healthz, /v1/models")
    parser.add_argument(
        "--decode-only",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the floor: a bare uvicorn app that only decodes (bench.peers.decode_only)",
    )
    parser.add_argument("--workers", default="1,2", help="front-end processes (VIT_WORKERS) to compare")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every configuration, interleaved")
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 1.0
    levels = [int(c) for c in args.concurrency.split(",")]
    client = "wrk" if shutil.which("wrk") else "python (bench.load; wrk not installed)"
    sizes = args.sizes.split(",")
    points = []
    worker_counts = [int(n) for n in args.workers.split(",")]
    for round_ in range(args.rounds):  # each round every configuration once: the host drifts between rounds
        for workers in worker_counts:
            with null_server(args.pin_server, workers=workers) as server:
                targets: list[tuple[str, str, bytes | None]] = []
                if args.floors and workers == worker_counts[0] and round_ == 0:
                    targets += [("healthz", "/healthz", None), ("models", "/v1/models", None)]
                targets += [(f"classify {size}", "/v1/classify?top_k=1", jpeg(size)) for size in sizes]
                for name, path, body in targets:
                    for concurrency in levels:
                        point = _point(server, name, path, body, concurrency, args, vit_serve=True)
                        points.append({"round": round_, "workers": workers, **point})
            if args.decode_only:
                with null_server(args.pin_server, decode_only=True, workers=workers) as server:
                    for size in sizes:
                        for concurrency in levels:
                            point = _point(server, f"decode-only {size}", "/", jpeg(size), concurrency, args)
                            points.append({"round": round_, "workers": workers, **point})
    result = {
        "command": "python -m bench.ceiling " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "client": client,
        "model": MODEL,
        "points": points,
        "scaling": _scaling(points, worker_counts),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ceiling.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(points, args.out / "ceiling.png", result)
    floors = {
        (p["round"], p["target"].removeprefix("decode-only "), p["concurrency"], p["workers"]): p
        for p in points
        if "decode-only" in p["target"]
    }
    for point in points:
        if "model_ms_per_request" in point:
            key = (point["round"], point["target"].removeprefix("classify "), point["concurrency"], point["workers"])
            floor = floors.get(key)
            shown = f"; a bare uvicorn app that only decodes: {floor['cpu_over_decode']:.2f} ×" if floor else ""
            parts = ""
            if point["workers"] == 1:
                loop, decoders = point["event_loop_cpu_ms_per_request"], point["decode_processes_cpu_ms_per_request"]
                other = point["server_cpu_ms_per_request"] - loop - decoders
                parts = f" (event loop {loop:.2f}, engine thread {other:.2f}, decode processes {decoders:.2f})"
            print(
                f"{point['target']} c={point['concurrency']} workers={point['workers']}:"
                f" server CPU {point['server_cpu_ms_per_request']:.2f} ms{parts}"
                f" per request = {point['cpu_over_decode']:.2f} × decode+resize+normalise"
                f" ({point['decode_ms']:.2f} ms);"
                f" the null model's forward pass: {point['model_ms_per_request']:.2f} ms an image"
                f" at batch {round(point['mean_batch_size'])}{shown}"
            )


def _scaling(points: list[dict], worker_counts: list[int]) -> list[dict[str, Any]]:
    """For each image and concurrency, what each further number of processes gave vit-serve
    against the first, beside what it gave the decode-only floor (issue 14's targets): the
    scaling of requests/s, the cores used (server CPU seconds a second) against the floor's
    with as many processes, and the growth of CPU per request; within each round, then the
    median over rounds. Printed, and kept in the JSON."""
    by_key = {(p["round"], p["target"], p["concurrency"], p["workers"]): p for p in points}

    def cores(point: dict) -> float:
        return float(point["requests_per_s"] * point["server_cpu_ms_per_request"] / 1000)

    per_round: dict[tuple[str, int, int], list[dict[str, float]]] = {}
    first = worker_counts[0]
    for (round_, target, concurrency, workers), point in by_key.items():
        size = target.removeprefix("classify ")
        base = by_key.get((round_, target, concurrency, first))
        floor, floor_base = (by_key.get((round_, f"decode-only {size}", concurrency, n)) for n in (workers, first))
        if not target.startswith("classify") or workers == first or None in (base, floor, floor_base):
            continue
        assert base is not None and floor is not None and floor_base is not None
        if not all(p["requests_per_s"] > 0 for p in (base, floor, floor_base)):
            continue  # a run that completed nothing (a --quick second) has no ratio
        scaling = point["requests_per_s"] / base["requests_per_s"]
        floor_scaling = floor["requests_per_s"] / floor_base["requests_per_s"]
        per_round.setdefault((size, concurrency, workers), []).append(
            {
                "scaling": scaling,
                "floor_scaling": floor_scaling,
                "scaling_over_floor": scaling / floor_scaling,
                "cores": cores(point),
                "floor_cores": cores(floor),
                "cores_over_floor": cores(point) / cores(floor),
                "cpu_per_request_growth": point["server_cpu_ms_per_request"] / base["server_cpu_ms_per_request"],
            }
        )
    rows = []
    for (size, concurrency, workers), rounds in per_round.items():
        row: dict[str, Any] = {"image": size, "concurrency": concurrency, "processes": [first, workers]}
        row |= {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
        row["rounds"] = rounds
        rows.append(row)
        growth = ", ".join(f"{r['cpu_per_request_growth']:.2f}" for r in rounds)
        print(
            f"{size} c={concurrency}, {first} -> {workers} processes (median of {len(rounds)}):"
            f" requests/s × {row['scaling']:.2f} (the decode-only floor: × {row['floor_scaling']:.2f};"
            f" ratio {row['scaling_over_floor']:.2f}); {row['cores']:.2f} cores (the floor's {workers}:"
            f" {row['floor_cores']:.2f}; ratio {row['cores_over_floor']:.2f}); CPU per request ×"
            f" {row['cpu_per_request_growth']:.2f} (each round: {growth})"
        )
    return rows


def _point(
    server: Server,
    name: str,
    path: str,
    body: bytes | None,
    concurrency: int,
    args: argparse.Namespace,
    vit_serve: bool = False,
) -> dict[str, Any]:
    """One load run against `url + path`, with the server's CPU from /proc and, for an image, the
    in-process decode cost beside it; for vit-serve, its mean batch from /metrics too."""
    url, pid = server.url, server.pid
    decode_ms = [_decode_ms(body)] if body is not None else []  # beside the load: the host drifts
    batches_before = _batch_totals(url) if vit_serve else (0.0, 0.0)  # outside the CPU window
    engine_before, loop_before = _engine_seconds(pid), thread_cpu_seconds(pid, pid)
    load, main_ms, decode_processes_ms = measured_load(
        pid, url + path, body, concurrency, args.duration, args.pin_client
    )
    engine_ms = (_engine_seconds(pid) - engine_before) * 1000 / max(1, load["requests"])
    loop_ms = (thread_cpu_seconds(pid, pid) - loop_before) * 1000 / max(1, load["requests"])
    batches_after = _batch_totals(url) if vit_serve else (0.0, 0.0)
    batches, images = (batches_after[i] - batches_before[i] for i in (0, 1))
    point: dict[str, Any] = {"target": name, "concurrency": concurrency, **load}
    point["server_cpu_ms_per_request"] = main_ms + decode_processes_ms
    point["decode_processes_cpu_ms_per_request"] = decode_processes_ms
    point["engine_process_cpu_ms_per_request"] = engine_ms  # with VIT_WORKERS > 1; else 0
    # One process: its event loop, apart from its other threads (the engine's torch thread). A
    # group's first process is its supervisor, whose loop does nothing per request.
    point["event_loop_cpu_ms_per_request"] = loop_ms
    point["mean_batch_size"] = images / batches if batches else 0.0
    if body is not None:
        point["decode_ms"] = statistics.mean([*decode_ms, _decode_ms(body)])
        point["cpu_over_decode"] = point["server_cpu_ms_per_request"] / point["decode_ms"]
        if vit_serve:
            point["model_ms_per_request"] = _model_ms(round(point["mean_batch_size"]))
    print(_line(point), flush=True)
    return point


@contextlib.contextmanager
def null_server(
    cpus: str | None = None, tree: Path | None = None, decode_only: bool = False, workers: int = 1
) -> Iterator[Server]:
    """vit-serve with the null model on 127.0.0.1 and `workers` front-ends, optionally pinned, run
    from the checkout `tree` (default: this one); or, with `decode_only`, the floor:
    bench.peers.decode_only in `workers` processes."""
    env = {
        "VIT_MODEL": MODEL,
        "VIT_DEVICE": "cpu",
        "VIT_MAX_QUEUE_SIZE": "100000",
        "VIT_LOG_LEVEL": "warning",
        "VIT_WORKERS": str(workers),
        # One intra-op thread: the null model's forward pass stays near zero. On two, libgomp's
        # workers spin-wait after each of its tiny parallel regions, a cost of torch's thread team,
        # not of serving (BENCHMARKS.md, "The serving ceiling").
        "OMP_NUM_THREADS": "1",
    }
    if not decode_only:
        with vit_serve(env, tree, cpus) as server:
            yield server
        return
    port = free_port()
    cmd = [sys.executable, "-m", "bench.peers.decode_only", "--port", str(port), "--processes", str(workers)]
    with run(cmd, port, vit_serve_env(port, **env), "/", tree, cpus) as server:
        for _ in range(4 * workers):  # each process's first decode imports torch: not part of any request
            httpx.post(server.url, content=jpeg("224"), timeout=60, headers={"connection": "close"})
        yield server


def _engine_seconds(pid: int) -> float:
    """CPU seconds of the server's engine process (VIT_WORKERS > 1), 0 without one."""
    seconds = 0.0
    for process, fields in process_tree(pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{process}/comm").read_text().strip() == "vit-engine":
                seconds += cpu_seconds(fields)
    return seconds


def _batch_totals(url: str) -> tuple[float, float]:
    """The server's batches and batched images so far, from its /metrics."""
    text = httpx.get(url + "/metrics").text

    def value(name: str) -> float:
        return float(re.search(rf"^{name} (\S+)$", text, re.MULTILINE).group(1))  # type: ignore[union-attr]

    return value("vit_batch_size_count"), value("vit_batch_size_sum")


def _decode_ms(data: bytes, rounds: int = 5, seconds: float = 0.2) -> float:
    """Decode (in draft mode, as the server does by default), resize (the server's defaults) and
    normalise one image in this process: the median of `rounds` rounds of `seconds` each, in ms.
    Measured just before and just after each load run, while the server idles: these hosts are
    shared, and a figure from a minute earlier can be off by half."""
    import torch

    torch.set_num_threads(1)
    times = []
    for _ in range(rounds):
        start, done = time.perf_counter(), 0
        while done < 3 or time.perf_counter() - start < seconds:
            normalize(load_image(data, 224, PREPROCESS, draft=True)[None], PREPROCESS.mean, PREPROCESS.std)
            done += 1
        times.append((time.perf_counter() - start) / done * 1000)
    return statistics.median(times)


def _model_ms(batch: int, repeat: int = 200) -> float:
    """The null model's forward pass per image (one thread, in this process) at `batch`: what the
    server's CPU per request holds beyond serving (normalising is in the decode figure)."""
    import torch

    from model.config import preset
    from model.vit import VisionTransformer

    model = VisionTransformer(preset(MODEL)).eval()
    pixels = normalize(torch.zeros(max(1, batch), 3, 224, 224, dtype=torch.uint8), PREPROCESS.mean, PREPROCESS.std)
    with torch.inference_mode():
        for _ in range(10):
            model(pixels)
        start = time.perf_counter()
        for _ in range(repeat):
            model(pixels)
    return (time.perf_counter() - start) / repeat / len(pixels) * 1000


def _line(point: dict) -> str:
    return (
        f"{point['target']} c={point['concurrency']}: {point['requests_per_s']:.0f} requests/s, "
        f"p50 {point['p50_ms']:.2f} ms, p99 {point['p99_ms']:.2f} ms, errors {point['errors']}, "
        f"server CPU {point['server_cpu_ms_per_request']:.3f} ms/request "
        f"({point['decode_processes_cpu_ms_per_request']:.3f} in decode processes), "
        f"mean batch {point['mean_batch_size']:.1f}"
    )


def _plot(points: list[dict], path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    points = [p for p in points if p["round"] == 0]
    labels = [f"{p['target']}\nc={p['concurrency']}, {p['workers']} proc." for p in points]
    ax.bar(range(len(points)), [p["requests_per_s"] for p in points])
    ax.set_xticks(range(len(points)), labels, fontsize=7)
    ax.set_ylabel("requests/s")
    ax.set_title(f"vit-serve serving ceiling ({MODEL}), {result['machine']['cpu']}, {result['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
