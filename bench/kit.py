"""`python -m bench.kit`: the GPU check kit, every check a CUDA host should pass, in one call.

On a machine with a CUDA GPU it runs, each step in its own process with its own time limit:

1. the CUDA tests (tests/model/test_cuda.py, tests/service/engine/);
2. end to end (`python -m bench`): ViT-B/16 in bfloat16 served eagerly (VIT_COMPILE=0, so a
   start costs seconds, not a compile per bucket), one 224×224 or 500×375 JPEG per request at
   concurrency 1, 16, 64 and 256, in one process, with one front-end and an engine process, and
   with two front-ends: images/s, p50/p99, the engine's busy fraction and the cores decoding
   used, beside the model alone, eager, at batch 1–256 with MFU;
3. the serving ceiling with the null model (`python -m bench.ceiling`): the serving layer's limit;
4. JPEG decoding on the GPU (`VIT_GPU_DECODE`) against the CPU's decode processes, at 500×375 and
   12 megapixels (`python -m bench.probes.gpu_decode`);
5. bulk embedding (`python -m bench.probes.embed`): `vit-serve embed` of 4,000 224×224 JPEGs
   against the model alone and the server, with and without VIT_GPU_DECODE;
6. the model alone, compiled (`python -m bench.model_only`), at batch 1, 64 and 256: last,
   because compiling is the step whose length is least known.

Results go to --out as at most 8 files (kit.json, kit.log, and each step's JSON and PNG); kit.json
is rewritten after every step, so a run cut short keeps what it finished. The last lines printed
are a short summary. `--dry-run` runs the same steps on a CPU-only machine with a tiny model and
short runs; the CUDA tests are reported skipped. bench/gpu/check.sh installs the wheels
bench/gpu/wheels.sh fetched, then runs this; docs/DEPLOY.md says how to use the two.

    python -m bench.kit --out /tmp/kit             # on a GPU host: about 8 minutes
    python -m bench.kit --dry-run --out /tmp/kit   # anywhere: about 2 minutes
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bench.procfs import cpu_model

# Dense bfloat16 peaks from the vendors' datasheets (TFLOP/s), for MFU; --peak-tflops for others.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0}


@dataclass
class Step:
    name: str
    command: list[str]
    timeout_s: float


@dataclass
class Outcome:
    name: str
    status: str  # "passed", "failed", "timed out" or "skipped: <why>"
    seconds: float
    command: str


def peak_tflops(gpu: str | None) -> float | None:
    """The GPU's dense bf16 peak, found by the model in its name (longest first: "L40S" before "L4")."""
    if gpu is None:
        return None
    return next((PEAK_BF16_TFLOPS[k] for k in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True) if k in gpu), None)


def steps(out: Path, dry_run: bool, peak: float | None) -> list[Step]:
    """The kit's steps, writing under `out`: on a GPU as the module says; dry, the same commands,
    small and short."""
    py = [sys.executable, "-m"]
    model = "vit_test_tiny" if dry_run else "vit_base_patch16_224"
    peak_args = ["--peak-tflops", str(peak)] if peak else []
    tests = ["tests/model/test_cuda.py", "tests/model/test_gpu_decode.py::test_nvjpeg_matches_the_cpu_path"]
    tests += [] if dry_run else ["tests/service/engine"]
    e2e = [
        *py,
        "bench",
        "--systems",
        "vit-serve",
        "--model",
        model,
        "--dtypes",
        "bfloat16",
        "--no-compile",
        "--images-per-request",
        "1",
        "--workers",
        "1,1e,2",
        "--server-env",
        "VIT_COMPILE=0",
        "--out",
        str(out / "e2e"),
        *peak_args,
    ]
    e2e += (
        ["--concurrency", "1,4", "--sizes", "224", "--duration", "1", "--warmup", "0.3", "--max-batch-size", "8"]
        if dry_run
        else ["--concurrency", "1,16,64,256", "--sizes", "224,500x375", "--duration", "3", "--warmup", "1.5"]
    )
    ceiling = [*py, "bench.ceiling", "--workers", "1,2", "--no-decode-only", "--no-floors"]
    ceiling += ["--out", str(out / "ceiling")]
    ceiling += ["--quick", "--concurrency", "1,4"] if dry_run else ["--duration", "3", "--concurrency", "1,16,64"]
    decode = [*py, "bench.probes.gpu_decode", "--out", str(out / "decode.json")]
    decode += ["--seconds", "0.3", "--rounds", "1", "--batch", "8"] if dry_run else ["--seconds", "2", "--rounds", "3"]
    bulk = [*py, "bench.probes.embed", "--model", model, "--rounds", "1"]
    bulk += (
        ["--images", "32", "--max-batch-size", "8", "--seconds", "0.3"]
        if dry_run
        else ["--device", "cuda", "--gpu-decode", "--images", "4000", "--max-batch-size", "256", "--seconds", "3"]
    )
    compiled = [*py, "bench.model_only", "--model", model, "--variants", "bfloat16,bfloat16+compile", "--rounds", "1"]
    compiled += ["--batch", "1,2", "--seconds", "0.2"] if dry_run else ["--batch", "1,64,256", "--seconds", "1"]
    return [
        Step("cuda-tests", [*py, "pytest", "-q", "-p", "no:cacheprovider", *tests], 150),
        Step("end-to-end", e2e, 240),
        Step("ceiling", ceiling, 120),
        Step("gpu-decode", decode, 120),
        Step("bulk", bulk, 150),
        Step("compiled", [*compiled, "--out", str(out / "model-only.json"), *peak_args], 200),
    ]


def run_step(step: Step, log: Any, root: Path) -> Outcome:
    """Run one step from the repository root, its output appended to the log."""
    command = " ".join(step.command)
    log.write(f"\n$ {command}\n")
    log.flush()
    begin = time.monotonic()
    try:
        done = subprocess.run(step.command, cwd=root, stdout=log, stderr=subprocess.STDOUT, timeout=step.timeout_s)
        status = "passed" if done.returncode == 0 else f"failed (exit {done.returncode})"
    except subprocess.TimeoutExpired:
        status = f"timed out after {step.timeout_s:.0f} s"
    return Outcome(step.name, status, time.monotonic() - begin, command)


def tests_summary(log_text: str, cuda: bool) -> str:
    """pytest's last summary line in the log (e.g. "12 passed, 1 skipped in 30.1s"), and why the
    CUDA tests skipped where there is no GPU."""
    lines = re.findall(r"^=*\s*(\d+ (?:passed|failed|skipped|error).*?)\s*=*$", log_text, re.M)
    found = lines[-1] if lines else "no summary"
    return found if cuda else f"{found} (skipped: no CUDA GPU on this machine)"


def summary_lines(out: Path) -> list[str]:
    """The headline figures from the results the steps wrote."""
    lines: list[str] = []
    e2e = out / "e2e" / "results.json"
    if e2e.exists():
        results = json.loads(e2e.read_text())
        for row in results["model_only"]:
            mfu = f", MFU {row['mfu']:.1%}" if row.get("mfu") else ""
            rate = f"{row['images_per_s']:.0f}/s{mfu}"
            lines.append(f"model alone, eager {row['dtype']} batch {row['batch_size']}: {rate}")
        for row in results["end_to_end"]:
            lines.append(
                f"served, VIT_WORKERS={row['workers']} {row['image']} c={row['concurrency']}:"
                f" {row['images_per_s']:.0f} images/s, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms,"
                f" engine busy {row.get('engine_busy', 0):.2f}, decoding {row['decode_cores']:.2f} cores,"
                f" errors {row['errors']}"
            )
    ceiling = out / "ceiling" / "ceiling.json"
    if ceiling.exists():
        for p in json.loads(ceiling.read_text())["points"]:
            lines.append(
                f"ceiling (null model), VIT_WORKERS={p['workers']} {p['target']} c={p['concurrency']}:"
                f" {p['requests_per_s']:.0f} requests/s"
            )
    decode = out / "decode.json"
    if decode.exists():
        for row in json.loads(decode.read_text())["rows"]:
            if "images_per_s" in row:
                lines.append(f"decode {row['size']}, {row['variant']}: {row['images_per_s']:.0f} images/s")
            elif "levels" in row and row["levels"] is not None:
                lines.append(f"decode {row['size']}, GPU against a full CPU decode: at most {row['levels']} levels")
    compiled = out / "model-only.json"
    if compiled.exists():
        for row in json.loads(compiled.read_text())["rows"]:
            mfu = f", MFU {row['mfu']:.1%}" if row.get("mfu") else ""
            lines.append(
                f"model alone, {row['variant']} batch {row['batch_size']}: {row['images_per_s']:.0f}/s{mfu}"
                f" (first pass {row['first_pass_s']:.1f} s)"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.kit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true", help="CPU-only: tiny model, short runs")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not known")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        parser.error("no CUDA GPU here: use --dry-run")
    gpu = torch.cuda.get_device_name() if cuda else None
    peak = args.peak_tflops or peak_tflops(gpu)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent
    report: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": {"cpu": cpu_model(), "platform": platform.platform(), "gpu": gpu, "peak_bf16_tflops": peak},
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "dry_run": args.dry_run,
        "steps": [],
    }
    print(f"{report['date']}: {gpu or 'no GPU'}, {cpu_model()}, torch {torch.__version__}", flush=True)
    with open(args.out / "kit.log", "w") as log:
        for step in steps(args.out, args.dry_run, peak):
            outcome = run_step(step, log, root)
            print(f"{outcome.name}: {outcome.status} in {outcome.seconds:.0f} s", flush=True)
            report["steps"].append(asdict(outcome))
            (args.out / "kit.json").write_text(json.dumps(report, indent=2) + "\n")
    report["cuda_tests"] = tests_summary((args.out / "kit.log").read_text(), cuda)
    report["summary"] = summary_lines(args.out)
    (args.out / "kit.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join([f"CUDA tests: {report['cuda_tests']}", *report["summary"]]))
    return 0 if all(s["status"] == "passed" for s in report["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
