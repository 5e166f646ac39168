"""The embedding of `vit-serve embed` as a Ray Data transform, for datasets that outgrow one
machine: a callable class for `Dataset.map_batches` with an actor pool, one model per actor (on a
GPU or a CPU, as Ray assigns it), reading any Ray Data source and returning the shards' columns,
which `Dataset.write_parquet` writes (the `[ray]` extra; docs/BULK.md, On a Ray cluster).

    ds = ray.data.read_parquet("s3://bucket/images/")           # a column of image bytes, one of keys
    ds = ds.map_batches(RayEmbedder, fn_constructor_kwargs={"settings": {"checkpoint": "/models/clip"}},
                        concurrency=8, num_gpus=1, batch_size=256)
    ds.write_parquet("s3://bucket/embeddings/")

Each actor runs what `vit-serve embed` runs (service/bulk/job.py's `Embedder`: the decode
processes, the engine, the batcher) on an event loop of its own, so a batch's images are decoded
in parallel and embedded in the engine's batches; a bad image is a row with its error.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from service.bulk.job import Embedder
from service.bulk.output import Row, rows_table
from service.bulk.sources import Item, in_memory
from service.settings import Settings

T = TypeVar("T")


class RayEmbedder:
    """`map_batches(RayEmbedder, fn_constructor_kwargs={...})`: a batch with a column of image bytes
    (`image_column`) and one of keys (`key_column`) -> the shards' columns (key, embedding, error;
    labels and scores with `top_k`)."""

    def __init__(
        self,
        settings: dict[str, Any] | None = None,
        image_column: str = "image",
        key_column: str = "key",
        top_k: int = 0,
        float16: bool = False,
    ) -> None:
        self.settings = Settings(**(settings or {}))  # and the actor's VIT_* environment, as the server reads it
        self.image_column, self.key_column, self.top_k, self.float16 = image_column, key_column, top_k, float16
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="vit-serve-embed", daemon=True).start()
        self._embedder = self._run(Embedder.start(self.settings, top_k))

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        limit = self.settings.max_body_bytes
        pairs = zip(batch[self.key_column], batch[self.image_column], strict=True)
        rows = self._run(self._rows([in_memory(str(key), data, limit) for key, data in pairs]))
        return rows_table(rows, self._embedder.engine.card.cfg.embedding_dim, self.float16, self.top_k > 0)

    async def _rows(self, images: list[Item]) -> list[Row]:
        async with contextlib.aclosing(self._embedder.stream(images)) as groups:
            return [row async for group in groups for row in group]

    def __del__(self) -> None:
        if self._loop.is_running():
            self._run(self._embedder.close())
            self._loop.call_soon_threadsafe(self._loop.stop)


def main(argv: list[str] | None = None) -> None:
    """`python -m service.bulk.ray_data SOURCE --out OUT`: a RayJob's entrypoint (deploy/ray/)."""
    import argparse

    import ray

    parser = argparse.ArgumentParser(
        prog="python -m service.bulk.ray_data",
        description="Embed a dataset on the Ray cluster this runs in (RAY_ADDRESS; a local one otherwise) into"
        " Parquet. The model is chosen by the VIT_* variables, as the server's.",
    )
    parser.add_argument("source", help="a Parquet dataset (path or URI), or with --files a directory of image files")
    parser.add_argument("--out", required=True, help="the Parquet output (path or URI)")
    parser.add_argument("--files", action="store_true", help="SOURCE holds image files; their paths are the keys")
    parser.add_argument("--image-column", default="image", help="a Parquet source's column of image bytes")
    parser.add_argument("--key-column", default="key", help="a Parquet source's column of keys")
    parser.add_argument("--concurrency", type=int, default=1, help="actors, one model each")
    parser.add_argument("--num-gpus", type=float, default=0, help="GPUs per actor")
    parser.add_argument("--batch-size", type=int, default=256, help="images per actor call")
    args = parser.parse_args(argv)
    if not ray.is_initialized():  # a RayJob's driver joins its cluster (RAY_ADDRESS)
        ray.init()
    if args.files:
        dataset = ray.data.read_binary_files(args.source, include_paths=True)
        image, key = "bytes", "path"
    else:
        dataset = ray.data.read_parquet(args.source)
        image, key = args.image_column, args.key_column
    dataset.map_batches(
        RayEmbedder,
        fn_constructor_kwargs={"image_column": image, "key_column": key},
        concurrency=args.concurrency,
        num_gpus=args.num_gpus,
        batch_size=args.batch_size,
    ).write_parquet(args.out)


if __name__ == "__main__":
    main()
