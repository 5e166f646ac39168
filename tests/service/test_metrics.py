"""service/metrics.py: a registry per app, in Prometheus' text format, without the *_created
series, with batch sizes bucketed by powers of two. (A process group's sum across processes:
tests/service/test_processes.py.)"""

from __future__ import annotations

from prometheus_client import generate_latest

from service.metrics import BATCH_BUCKETS, Metrics


def test_each_app_counts_in_its_own_registry() -> None:
    one, other = Metrics(), Metrics()
    one.images.labels(endpoint="/v1/classify").inc(3)
    one.batch_size.observe(5)
    text = generate_latest(one.exposition).decode()
    assert 'vit_images_total{endpoint="/v1/classify"} 3.0' in text
    assert 'vit_batch_size_bucket{le="4.0"} 0.0' in text and 'vit_batch_size_bucket{le="8.0"} 1.0' in text
    assert "_created" not in text
    assert "vit_images_total{" not in generate_latest(other.exposition).decode()


def test_batch_buckets_are_the_powers_of_two_the_engine_pads_to() -> None:
    assert BATCH_BUCKETS[:4] == (1.0, 2.0, 4.0, 8.0) and BATCH_BUCKETS[-1] == 4096.0
