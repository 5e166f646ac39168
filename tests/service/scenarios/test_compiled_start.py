"""VIT_COMPILE_CACHE_DIR: a second start with an empty temp directory, as a new pod or container
has, finds everything the first start compiled in the cache volume and compiles nothing new; each
compiled batch size is logged, and /v1/models lists them. (The time it saves: docs/BENCHMARKS.md,
"Compiled start-up".)"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bench.probes.compiled_start import cache_files
from tests.service.servers import server_process


@pytest.mark.slow
def test_a_second_start_finds_the_first_starts_compiled_graphs(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    # float32, not auto: auto's start-up probe may choose differently at each start of a tiny model,
    # and a different dtype is a different graph.
    env = {
        "VIT_MODEL": "vit_test_tiny",
        "VIT_COMPILE": "true",
        "VIT_DTYPE": "float32",
        "VIT_MAX_BATCH_SIZE": "1",
        "VIT_LOG_LEVEL": "info",
    }
    logs, models = [], []
    for start in ("first", "second"):
        temp = tmp_path / start
        temp.mkdir()
        with server_process(**env, VIT_COMPILE_CACHE_DIR=str(cache), TMPDIR=str(temp)) as server:
            models.append(httpx.get(f"{server.url}/v1/models").json()["data"][0])
        logs.append(server.log)
        if start == "first":
            compiled = cache_files(cache)
    assert compiled, "the first start left nothing in VIT_COMPILE_CACHE_DIR"
    assert cache_files(cache) == compiled  # the second start compiled nothing it did not find
    for log, model in zip(logs, models, strict=True):
        assert "compiled batch size 1 (1 of 1) in " in log
        assert model["compiled_batch_sizes"] == [1]
    built = [path for path in (tmp_path / "second").rglob("*") if path.is_file()]
    assert not built  # nothing under the temp directory: not a kernel, not inductor's precompiled header
