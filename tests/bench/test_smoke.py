"""A bounded smoke run of the benchmark suite (tiny model, about a second a point), so it never rots."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.kit import peak_tflops
from bench.model_only import flops_per_image
from model.config import preset


def test_flops_match_the_published_vit_b16_figure() -> None:
    # ViT-B/16 at 224: 17.6 GMACs = 35.1 GFLOP per image (the figure, as timm counts it)
    assert flops_per_image(preset("vit_base_patch16_224")) / 2e9 == pytest.approx(17.6, abs=0.05)


@pytest.mark.slow
def test_quick_run_writes_results_and_a_plot(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert {r["dtype"] for r in results["model_only"]} == {"float32", "bfloat16"}
    systems = {r["system"] for r in results["end_to_end"]}
    assert systems == {"vit-serve", "naive", "litserve"}
    for row in results["end_to_end"]:
        assert row["errors"] == 0 and row["requests"] > 0 and row["images_per_s"] > 0
    ours = [r for r in results["end_to_end"] if r["system"] == "vit-serve"]
    assert all(sum(r["batch_size_histogram"].values()) > 0 for r in ours)  # read from its own /metrics
    assert set(results["summary"]) >= {"reference", "c=1", "c=4"}
    assert results["summary"]["c=1"]["vs_naive_throughput"] > 0


def _run(*args: str) -> str:
    run = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_thread_and_decode_probes_run() -> None:
    threads = _run("bench.probes.threads", "--model", "vit_test_tiny", "--passes", "3", "--rounds", "1")
    assert threads.startswith("round 1: built and run on one thread ") and "×)" in threads
    decode = _run("bench.probes.decode", "--workers", "2", "--seconds", "0.05")
    lines = decode.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["224", "500x375"]
    assert all(all(f"{v} " in line for v in ("serial", "threads", "processes", "service")) for line in lines[:2])
    assert lines[2].startswith("4000x3000 JPEG (0.8 MB), one at a time: full decode ") and "draft" in lines[2]
    assert lines[3].startswith("4000x3000+grain JPEG (2.") and "draft" in lines[3]  # a phone's weight
    costs = _run("bench.probes.decode_cost", "--rounds", "1").splitlines()
    assert len(costs) == 16 and all(re.search(r"measured +[\d.]+ ms +expected +[\d.]+ ms", line) for line in costs[1:])


def test_the_ceiling_benchmark_runs(tmp_path) -> None:
    out = _run("bench.ceiling", "--quick", "--out", str(tmp_path))
    result = json.loads((tmp_path / "ceiling.json").read_text())
    targets = {(p["target"], p["concurrency"], p["workers"]) for p in result["points"]}
    names = ("classify 224", "classify 500x375", "decode-only 224", "decode-only 500x375")
    floors = {(t, c, 1) for t in ("healthz", "models") for c in (1, 16)}
    assert targets == {(t, c, w) for t in names for c in (1, 16) for w in (1, 2)} | floors
    scaling = {(row["image"], row["concurrency"], tuple(row["processes"])) for row in result["scaling"]}
    # every point a ratio can be taken from (a one-second run that completes nothing has none)
    assert scaling and scaling <= {(size, c, (1, 2)) for size in ("224", "500x375") for c in (1, 16)}
    two = [p for p in result["points"] if p["target"].startswith("classify") and p["workers"] == 2]
    assert all(p["engine_process_cpu_ms_per_request"] > 0 for p in two)  # the group's engine process was found
    one = [p for p in result["points"] if p["target"].startswith("classify") and p["workers"] == 1]
    assert all(0 < p["event_loop_cpu_ms_per_request"] < p["server_cpu_ms_per_request"] for p in one)
    assert all(p["errors"] == 0 and p["requests"] > 0 for p in result["points"])
    assert all(p["cpu_over_decode"] > 0 for p in result["points"] if p["target"].startswith(("classify", "decode")))
    assert (tmp_path / "ceiling.png").stat().st_size > 0 and "× decode+resize+normalise" in out
    assert "a bare uvicorn app that only decodes: " in out and "(event loop " in out


def test_the_decoder_comparison_and_the_ab_run(tmp_path: Path) -> None:
    lines = _run("bench.probes.decoders", "--rounds", "1").splitlines()
    measured = [line for line in lines if "not measured" not in line]
    assert [line.split(":")[0] for line in measured] == [
        "224",
        "500x375",
        "4000x3000 full",
        "4000x3000 scaled",
    ]
    assert all("service (simplejpeg)" in line and "(max |Δ| 0)" in line for line in measured[:3])
    ab = _run("bench.probes.ab", ".", "--rounds", "1", "--duration", "1", "--sizes", "224").splitlines()
    assert ab[-1].startswith("224: this tree's server CPU per request ÷ the other's, per round: ")


def test_the_dtype_comparison_runs() -> None:
    out = _run(
        "bench.probes.dtypes",
        *("--model", "vit_test_tiny", "--rounds", "1", "--duration", "0.5", "--warmup", "0.2"),
        *("--max-batch-size", "2", "--concurrency", "2"),  # int8 compiles two buckets, not five
    ).splitlines()
    assert ", CPU native bf16 flag: " in out[0]
    assert "(VIT_QUANTIZE=int8: " in out[3]  # the third server's /v1/models says why
    assert [line.split(",")[0] for line in out[-4:]] == [
        "auto ÷ float32",
        "embedding cosine",
        "int8 ÷ float32",
        "embedding cosine",
    ]


def test_the_gil_benchmark_runs() -> None:
    lines = _run("bench.probes.gil", "--rounds", "1", "--batches", "3", "--batch", "2").splitlines()
    cases = [line for line in lines if line.startswith("main thread ")]
    assert [line.split(":")[0] for line in cases] == [f"main thread {c}" for c in ("idle", "python", "no-gil")]
    assert all("per batch of 2: CPU " in line and "; wall " in line for line in cases)


@pytest.mark.slow
def test_the_gpu_kit_dry_run_runs_every_step_and_says_the_cuda_tests_skipped(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.kit", "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "kit.json").read_text())
    assert [s["name"] for s in report["steps"]] == [
        "cuda-tests",
        "end-to-end",
        "ceiling",
        "gpu-decode",
        "bulk",
        "compiled",
    ]
    assert all(s["status"] == "passed" for s in report["steps"])
    assert report["cuda_tests"].endswith("(skipped: no CUDA GPU on this machine)") and "skipped" in report["cuda_tests"]
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) <= 8
    assert {"e2e/results.json", "ceiling/ceiling.json", "decode.json", "model-only.json"} <= set(files)
    e2e = json.loads((tmp_path / "e2e" / "results.json").read_text())
    assert {r["workers"] for r in e2e["end_to_end"]} == {"1", "1e", "2"}
    for row in e2e["end_to_end"]:
        assert row["errors"] == 0 and row["images_per_s"] > 0
        assert row["engine_busy"] > 0 and row["decode_cores"] > 0  # from its /metrics and /proc
    assert {s["workers"] for s in e2e["servers"]} == {"1", "1e", "2"} and all(s["ready_s"] > 0 for s in e2e["servers"])
    summary = run.stdout.splitlines()
    assert any(line.startswith("served, VIT_WORKERS=2 224 c=4:") for line in summary)
    assert any(line.startswith("model alone, bfloat16+compile batch 2:") for line in summary)
    assert any(line.startswith("decode 4000x3000, cpu, one core:") for line in summary)
    decode = json.loads((tmp_path / "decode.json").read_text())["rows"]
    assert {r["skipped"] for r in decode if r["variant"].startswith("gpu, batch")} == {"no CUDA GPU on this machine"}


def test_the_kit_knows_a_gpus_peak_by_its_name() -> None:
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA L40S") == 362.0 and peak_tflops("NVIDIA L4") == 121.0  # not L4's for L40S
    assert peak_tflops("Some Future GPU") is None and peak_tflops(None) is None


def test_the_compiled_start_probe_runs() -> None:
    """Its plumbing, uncompiled (seconds): what a cache saves is tests/service/scenarios/test_compiled_start.py's."""
    out = _run("bench.probes.compiled_start", "--model", "vit_test_tiny", "--env", "VIT_COMPILE=false", "--starts", "2")
    lines = out.splitlines()
    assert "'VIT_COMPILE': 'false'" in lines[0] and len(lines) == 3
    assert lines[1].startswith("start 1 (empty cache): ready in ") and "none (not compiled)" in lines[1]
    assert lines[2].startswith("start 2 (the cache, an empty temp directory): ready in ")


def test_the_text_and_zero_shot_comparison_runs() -> None:
    args = ("--small", "--rounds", "1", "--duration", "0.5", "--warmup", "0.2", "--concurrency", "1")
    out = _run("bench.probes.texts", *args).splitlines()
    rounds = [line for line in out if line.startswith("round 1: serve texts ")]
    assert len(rounds) == 1 and "hf zero-shot" in rounds[0]
    assert [line.split(":")[0] for line in out[-2:]] == ["texts", "zero-shot"]


def test_the_embed_comparison_runs() -> None:
    args = ("--model", "vit_test_tiny", "--images", "8", "--rounds", "1", "--max-batch-size", "4", "--seconds", "0.2")
    out = _run("bench.probes.embed", *args).splitlines()
    rounds = [line for line in out if line.startswith("round 1 (")]
    assert len(rounds) == 1 and all(f"{name} " in rounds[0] for name in ("embed", "bare", "http"))
    assert [line.split(" per round")[0] for line in out[-2:]] == ["embed ÷ bare", "embed ÷ http"]
