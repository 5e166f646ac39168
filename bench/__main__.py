"""`python -m bench`: the model alone, then vit-serve and its peers under the same load.

Writes results.json (every figure with the machine, date and versions) and plot.png
(throughput against p99 latency, one curve per system) to --out.

    python -m bench --out bench-results                 # the full CPU run
    python -m bench --quick --out /tmp/bench            # seconds: the CI smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from bench import model_only
from bench.load import closed_loop
from bench.procfs import server_cpu_seconds
from bench.systems import SYSTEMS, Running, serve
from bench.workload import SIZES, jpeg, json_body


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument("--quick", action="store_true", help="tiny model, short runs: a smoke test")
    p.add_argument("--model", default="vit_base_patch16_224" if gpu else "vit_small_patch16_224")
    p.add_argument("--device", default="cuda" if gpu else "cpu")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--concurrency", default="1,8,16,64,256")
    p.add_argument("--images-per-request", default="1,16")
    p.add_argument("--sizes", default=",".join(SIZES))
    p.add_argument(
        "--workers",
        default="1",
        help="vit-serve's process layouts to compare: VIT_WORKERS values, 'e' after one for an engine process (1e)",
    )
    p.add_argument("--rounds", type=int, default=1, help="repeat the end-to-end runs, each layout in turn")
    p.add_argument(
        "--server-env", action="append", default=[], metavar="NAME=VALUE", help="more settings for vit-serve"
    )
    p.add_argument("--dtypes", default="float32,bfloat16", help="the model-only dtypes")
    p.add_argument("--compile-sizes", default=None, help="model-only batch sizes to compile (default: all)")
    p.add_argument("--max-batch-size", type=int, default=256 if gpu else 32)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per point")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=gpu, help="also measure torch.compile")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0 if gpu else None,
        help="dense peak of the device for MFU (H100 SXM bf16: 989)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.concurrency, args.images_per_request, args.sizes = "vit_test_tiny", "1,4", "1,4", "224"
        args.duration, args.warmup, args.max_batch_size, args.compile = 1.0, 0.3, 8, False
    return args


def batch_histogram(metrics_url: str) -> dict[str, float]:
    text = httpx.get(metrics_url).text
    return {le: float(v) for le, v in re.findall(r'^vit_batch_size_bucket\{le="([^"]+)"\} (\S+)$', text, re.M)}


def layout_env(workers: str) -> dict[str, str]:
    """vit-serve's settings for a process layout: "2" is VIT_WORKERS=2, "1e" one front-end with an
    engine process (VIT_ENGINE_PROCESS=true)."""
    count, engine = workers.removesuffix("e"), workers.endswith("e")
    return {"VIT_WORKERS": count} | ({"VIT_ENGINE_PROCESS": "true"} if engine else {})


def inference_seconds(metrics_url: str) -> float:
    """The engine's seconds in forward passes so far (vit_inference_duration_seconds' sum)."""
    found = re.search(r"^vit_inference_duration_seconds_sum (\S+)$", httpx.get(metrics_url).text, re.M)
    return float(found[1]) if found else 0.0


def _point(server: Running, body: bytes, per_request: int, concurrency: int, args: argparse.Namespace) -> dict:
    """One closed-loop run, with what the server spent on it: batch sizes, the engine's busy
    fraction (seconds in forward passes a second; above 1 where two batches overlap on a GPU)
    and the cores its decode processes and the rest of it used."""
    before = batch_histogram(server.metrics_url) if server.metrics_url else {}
    busy_before = inference_seconds(server.metrics_url) if server.metrics_url else 0.0
    cpu_before, start = server_cpu_seconds(server.pid), time.perf_counter()
    load = closed_loop(server.url, body, per_request, concurrency, warmup_s=args.warmup, duration_s=args.duration)
    wall = time.perf_counter() - start
    rest_cpu, decode_cpu = (after - b for after, b in zip(server_cpu_seconds(server.pid), cpu_before, strict=True))
    row: dict[str, Any] = {**load.to_dict(), "decode_cores": decode_cpu / wall, "other_server_cores": rest_cpu / wall}
    if server.metrics_url:
        after = batch_histogram(server.metrics_url)
        row["batch_size_histogram"] = {k: after[k] - before.get(k, 0) for k in after}
        row["engine_busy"] = (inference_seconds(server.metrics_url) - busy_before) / wall
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    sizes = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= args.max_batch_size]
    compile_sizes = _ints(args.compile_sizes) if args.compile_sizes else sizes
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "settings": {k: str(v) for k, v in vars(args).items()} | {"server_env_items": args.server_env},
        "model_only": [],
        "end_to_end": [],
        "servers": [],
    }
    for dtype in dtypes:
        for compiled in [False, True] if args.compile else [False]:
            rows = model_only.measure(
                args.model,
                args.device,
                dtype,
                compile_sizes if compiled else sizes,
                compiled,
                seconds=max(0.3, args.duration / 5),
                peak_tflops=args.peak_tflops,
            )
            results["model_only"] += rows
            for r in rows:
                print(
                    f"model  {r['dtype']:8} compiled={r['compiled']!s:5} batch {r['batch_size']:3}: "
                    f"{r['images_per_s']:8.1f} images/s"
                )
    server_env = dict(item.split("=", 1) for item in args.server_env)
    layouts = args.workers.split(",")
    runs = [(r, s, w) for r in range(args.rounds) for s in args.systems.split(",") for w in layouts]
    for round_, system, workers in runs:
        if system != "vit-serve" and workers != layouts[0]:
            continue  # the peers have no VIT_WORKERS: measured once a round
        env = server_env | layout_env(workers)
        with serve(system, args.model, args.max_batch_size, args.max_wait_ms, args.device, env) as server:
            results["servers"].append({"system": system, "workers": workers, "ready_s": server.ready_s})
            print(f"{system} with VIT_WORKERS={workers} ready in {server.ready_s:.1f} s")
            for size in args.sizes.split(","):
                for per_request in _ints(args.images_per_request):
                    body = json_body([jpeg(size, i) for i in range(per_request)])
                    for concurrency in _ints(args.concurrency):
                        point = _point(server, body, per_request, concurrency, args)
                        row = {"system": system, "workers": workers, "round": round_, "image": size, **point}
                        results["end_to_end"].append(row)
                        busy = f"  engine busy {row['engine_busy']:.2f}" if "engine_busy" in row else ""
                        print(
                            f"{system:9} w={workers} {size:7} {per_request:2}/req c={concurrency:3}: "
                            f"{row['images_per_s']:8.1f} images/s  p50 {row['p50_ms']:7.1f} ms  "
                            f"p99 {row['p99_ms']:7.1f} ms  errors {row['errors']}{busy}  "
                            f"decode cores {row['decode_cores']:.2f}"
                        )
    return results


def summary(results: dict[str, Any], device: str) -> dict[str, Any]:
    """The issue's target ratios, from this run only: one image per request, 224×224 JPEGs, one
    key per concurrency ("c=16"), and per further VIT_WORKERS value ("workers=2 c=16").

    The model-only reference is what the server ran: bfloat16 on a GPU, float32 on the CPU,
    compiled where the server compiled (VIT_COMPILE, by default on CUDA) and that was measured.
    """
    cuda = device.startswith("cuda")
    dtype = "bfloat16" if cuda else "float32"
    server_env = dict(item.split("=", 1) for item in results["settings"].get("server_env_items", []))
    served_compiled = server_env.get("VIT_COMPILE", str(cuda)).lower() in ("1", "true", "yes", "on")
    measured_compiled = results["settings"]["compile"] == "True"
    reference = {
        r["batch_size"]: r
        for r in results["model_only"]
        if r["dtype"] == dtype and r["compiled"] == (served_compiled and measured_compiled)
    }
    first_workers = results["settings"]["workers"].split(",")[0]
    e2e = {
        (r["system"], r["workers"], r["concurrency"]): r
        for r in results["end_to_end"]
        if r["image"] == "224" and r["images_per_request"] == 1
    }
    out: dict[str, Any] = {
        "reference": f"{dtype}, batch-1 median {reference[1]['batch_ms']:.1f} ms" if 1 in reference else None
    }
    for (system, workers, concurrency), row in sorted(e2e.items(), key=lambda kv: kv[0][1:]):
        if system != "vit-serve":
            continue
        point: dict[str, float] = {}
        if concurrency in reference:
            point["vs_model_only_same_batch"] = row["images_per_s"] / reference[concurrency]["images_per_s"]
        for peer in ("naive", "litserve"):
            if (peer, first_workers, concurrency) in e2e:
                peer_row = e2e[peer, first_workers, concurrency]
                point[f"vs_{peer}_throughput"] = row["images_per_s"] / peer_row["images_per_s"]
                point[f"vs_{peer}_p99"] = row["p99_ms"] / peer_row["p99_ms"]
        if concurrency == 1 and 1 in reference:
            point["p50_over_batch1_ms"] = row["p50_ms"] - reference[1]["batch_ms"]
        out[f"c={concurrency}" if workers == first_workers else f"workers={workers} c={concurrency}"] = point
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system, workers in dict.fromkeys((r["system"], r["workers"]) for r in results["end_to_end"]):
        rows = sorted(
            (
                r
                for r in results["end_to_end"]
                if (r["system"], r["workers"]) == (system, workers)
                and r["round"] == 0
                and r["image"] == "224"
                and r["images_per_request"] == 1
            ),
            key=lambda r: r["concurrency"],
        )
        label = f"{system}, VIT_WORKERS={workers}" if system == "vit-serve" else system
        if rows:
            ax.plot([r["p99_ms"] for r in rows], [r["images_per_s"] for r in rows], marker="o", label=label)
            for r in rows:
                ax.annotate(f"c={r['concurrency']}", (r["p99_ms"], r["images_per_s"]), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("images/s")
    model = results["settings"]["model"]
    ax.set_title(f"{model}, 224×224 JPEG, one image per request ({results['settings']['device']})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = run(args)
    results["summary"] = summary(results, args.device)
    print(json.dumps(results["summary"], indent=2))
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out / "plot.png")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'plot.png'}")


if __name__ == "__main__":
    main()
