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
from pathlib import Path
from typing import Any

import httpx
import torch

from bench import model_only
from bench.load import closed_loop
from bench.systems import SYSTEMS, serve
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
    p.add_argument("--max-batch-size", type=int, default=256 if gpu else 32)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per point")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--compile", action="store_true", default=gpu, help="also measure torch.compile")
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    dtypes = [torch.float32, torch.bfloat16]
    sizes = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= args.max_batch_size]
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "settings": {k: str(v) for k, v in vars(args).items()},
        "model_only": [],
        "end_to_end": [],
    }
    for dtype in dtypes:
        for compiled in [False, True] if args.compile else [False]:
            rows = model_only.measure(
                args.model,
                args.device,
                dtype,
                sizes,
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
    for system in args.systems.split(","):
        with serve(system, args.model, args.max_batch_size, args.max_wait_ms, args.device) as server:
            for size in args.sizes.split(","):
                for per_request in _ints(args.images_per_request):
                    body = json_body([jpeg(size, i) for i in range(per_request)])
                    for concurrency in _ints(args.concurrency):
                        before = batch_histogram(server.metrics_url) if server.metrics_url else {}
                        load = closed_loop(
                            server.url, body, per_request, concurrency, warmup_s=args.warmup, duration_s=args.duration
                        )
                        row = {"system": system, "image": size, **load.to_dict()}
                        if server.metrics_url:
                            after = batch_histogram(server.metrics_url)
                            row["batch_size_histogram"] = {k: after[k] - before.get(k, 0) for k in after}
                        results["end_to_end"].append(row)
                        print(
                            f"{system:9} {size:7} {per_request:2}/req c={concurrency:3}: "
                            f"{load.images_per_s:8.1f} images/s  p50 {load.p50_ms:7.1f} ms  "
                            f"p99 {load.p99_ms:7.1f} ms  errors {load.errors}"
                        )
    return results


def summary(results: dict[str, Any], device: str) -> dict[str, Any]:
    """The issue's target ratios, from this run only: one image per request, 224×224 JPEGs.

    The model-only reference is what the server runs: bfloat16 compiled on a GPU (eager when
    compilation was not measured), float32 eager on the CPU.
    """
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    reference = {
        r["batch_size"]: r
        for r in results["model_only"]
        if r["dtype"] == dtype
        and r["compiled"] == (device.startswith("cuda") and results["settings"]["compile"] == "True")
    }
    e2e = {
        (r["system"], r["concurrency"]): r
        for r in results["end_to_end"]
        if r["image"] == "224" and r["images_per_request"] == 1
    }
    out: dict[str, Any] = {
        "reference": f"{dtype}, batch-1 median {reference[1]['batch_ms']:.1f} ms" if 1 in reference else None
    }
    for (system, concurrency), row in sorted(e2e.items(), key=lambda kv: kv[0][1]):
        if system != "vit-serve":
            continue
        point: dict[str, float] = {}
        if concurrency in reference:
            point["vs_model_only_same_batch"] = row["images_per_s"] / reference[concurrency]["images_per_s"]
        for peer in ("naive", "litserve"):
            if (peer, concurrency) in e2e:
                point[f"vs_{peer}_throughput"] = row["images_per_s"] / e2e[peer, concurrency]["images_per_s"]
                point[f"vs_{peer}_p99"] = row["p99_ms"] / e2e[peer, concurrency]["p99_ms"]
        if concurrency == 1 and 1 in reference:
            point["p50_over_batch1_ms"] = row["p50_ms"] - reference[1]["batch_ms"]
        out[f"c={concurrency}"] = point
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system in dict.fromkeys(r["system"] for r in results["end_to_end"]):
        rows = sorted(
            (
                r
                for r in results["end_to_end"]
                if r["system"] == system and r["image"] == "224" and r["images_per_request"] == 1
            ),
            key=lambda r: r["concurrency"],
        )
        if rows:
            ax.plot([r["p99_ms"] for r in rows], [r["images_per_s"] for r in rows], marker="o", label=system)
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
