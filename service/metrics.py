"""Prometheus metrics (docs/API.md, Metrics), in a registry of their own per app (tests run several apps).

In a process group (VIT_WORKERS > 1, service/processes.py) every process writes its values to
files in PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess mode, chosen when the
variable is set before the library is imported), and `/metrics` in any front-end adds up all
of them: counters and histograms summed, gauges as their `multiprocess_mode` says.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.multiprocess import MultiProcessCollector

disable_created_metrics()  # the *_created series only double the output

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = tuple(float(2**i) for i in range(13))  # 1, 2, 4, … 4096


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.exposition = r  # what /metrics shows: this process, or the whole group
        if directory := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.exposition = CollectorRegistry()
            MultiProcessCollector(self.exposition, directory)
        self.requests = Counter("vit_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.request_duration = Histogram(
            "vit_request_duration_seconds",
            "Time from arrival to response",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter("vit_images", "Images processed", ["endpoint"], registry=r)
        self.texts = Counter("vit_texts", "Texts embedded by the text tower", ["endpoint"], registry=r)
        self.label_cache = Counter(
            "vit_label_cache_lookups", "Zero-shot label embeddings looked up, found or not", ["result"], registry=r
        )
        self.label_cache_hit_ratio = Gauge(
            "vit_label_cache_hit_ratio",
            "Of the zero-shot label lookups since start, the share found cached (per front-end process)",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.queue_depth = Gauge(
            "vit_queue_depth", "Images waiting for a batch", registry=r, multiprocess_mode="livesum"
        )
        self.queue_wait = Histogram(
            "vit_queue_wait_seconds", "Enqueue to batch start, per image", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("vit_batch_size", "Images per forward pass", buckets=BATCH_BUCKETS, registry=r)
        self.inference_duration = Histogram(
            "vit_inference_duration_seconds",
            "One forward pass, device time included",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.preprocess_duration = Histogram(
            "vit_preprocess_duration_seconds", "Decode and resize, per image", buckets=LATENCY_BUCKETS, registry=r
        )
        self.rejected = Counter("vit_rejected", "Requests or images refused, by reason", ["reason"], registry=r)
        self.dropped = Counter(
            "vit_dropped_images", "Queued images never computed because their client had gone", registry=r
        )
        self.decode_restarts = Counter(
            "vit_decode_restarts",
            "Decode processes killed (a decode past VIT_DECODE_TIMEOUT_S) or dead, and replaced",
            registry=r,
        )
        self.model_info = Gauge(
            "vit_model_info",
            "The model being served",
            ["model", "device", "dtype"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.gpu_memory = Gauge(
            "vit_gpu_memory_bytes",
            "CUDA memory of the model's device: allocated by tensors, reserved by torch's caching allocator",
            ["kind"],
            registry=r,
            multiprocess_mode="livemax",
        )
