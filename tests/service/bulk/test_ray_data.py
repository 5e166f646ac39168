"""service/bulk/ray_data.py on a local Ray instance (2 CPUs): the Ray Data transform embeds images
exactly as `vit-serve embed` does, bad images included as rows with their error."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray

from service.bulk.ray_data import RayEmbedder, main

# Ray warns of its own deprecations from its own code (DataContext's defaults): not this project's.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
DIGITS = Path(__file__).parents[3] / "examples" / "digits"
SETTINGS = {"dtype": "float32", "device": "cpu", "log_level": "warning", "max_batch_size": 4}


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_the_transform_gives_the_clis_embeddings(local_ray: None, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIT_")}
    command = [sys.executable, "-m", "service", "embed", str(DIGITS), "--out", str(tmp_path), "--dtype", "float32"]
    subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=True)
    cli = {row["key"]: row["embedding"] for row in pq.read_table(tmp_path).to_pylist()}
    samples = [{"key": name, "image": (DIGITS / name).read_bytes()} for name in sorted(cli)]
    samples.append({"key": "broken", "image": b"not an image"})
    dataset = ray.data.from_items(samples).map_batches(
        RayEmbedder, fn_constructor_kwargs={"settings": SETTINGS}, concurrency=1, batch_size=4
    )
    rows = {row["key"]: row for row in dataset.take_all()}
    assert sorted(rows) == sorted([*cli, "broken"])
    assert rows["broken"]["embedding"] is None and rows["broken"]["error"].startswith("not decoded:")
    for key, embedding in cli.items():
        assert rows[key]["error"] is None and np.allclose(rows[key]["embedding"], embedding, atol=1e-5)


def test_the_rayjob_entrypoint_embeds_a_directory_of_files(local_ray: None, tmp_path: Path) -> None:
    main([str(DIGITS), "--files", "--out", str(tmp_path / "out"), "--batch-size", "4"])
    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert sorted(Path(row["key"]).name for row in rows) == sorted(p.name for p in DIGITS.glob("*.png"))
    assert all(row["error"] is None and len(row["embedding"]) == 96 for row in rows)
