"""`vit-serve embed SOURCE --out DEST`: every image of a source embedded, in this process, into
Parquet shards (service/bulk/output.py), resumable.

The model is the server's (the same settings choose and load it), reached through the same engine
seam, `in_process()` (service/engine/handle.py), with no HTTP between: images are read on threads,
decoded in the service's own decode processes (bounded in time and memory; plain JPEGs on the GPU
where VIT_GPU_DECODE says so), and submitted one by one to the batcher, which forms the same
batches the server forms; a window of images in flight, in groups, keeps decoding ahead of the
forward passes. An image that cannot be read, decoded or embedded is
a row with its error, never the end of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
import time
from collections.abc import AsyncGenerator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from model.preprocess import ImageError
from service.bulk.output import Output, Row
from service.bulk.sources import Columns, Item, SourceError, count, items
from service.decoding import DecodePool
from service.engine.card import ModelCard
from service.engine.device import Image
from service.engine.device_decode import DeviceDecoder
from service.engine.handle import EngineHandle, in_process
from service.errors import ServiceError
from service.lifecycle import decode_pool
from service.metrics import Metrics
from service.settings import Settings

if TYPE_CHECKING:  # lancedb is an optional extra, imported only for --lancedb
    from service.bulk.vectors import VectorTable

log = logging.getLogger(__name__)

# Groups of images in flight at once: enough that decoding runs ahead of the forward passes while
# the slowest image of a group holds back few others.
GROUPS_IN_FLIGHT = 8


class EmbedError(Exception):
    """The run cannot start (the model, the source or the output): said in one line."""


@dataclass(frozen=True)
class Options:
    source: str  # a directory, a list of paths, a Parquet or CSV table, or tar shards (a glob)
    out: Path
    shard_size: int = 10_000  # rows a shard: what a killed run may have to embed again
    float16: bool = False
    top_k: int = 0  # a classifier's top-k labels beside each embedding
    overwrite: bool = False  # replace another model's shards in `out`
    columns: Columns = field(default_factory=Columns)  # a table's image and key columns
    lancedb: Path | None = None  # also into this LanceDB (the [lancedb] extra)
    table: str = "images"
    index_min_rows: int = 50_000  # the LanceDB table's vector index, from this many rows


@dataclass(frozen=True)
class ModelTime:
    """The forward passes of a run: how busy the model was tells whether it, or reading and
    decoding, set the pace."""

    seconds: float
    batches: int
    images: int

    def __sub__(self, earlier: ModelTime) -> ModelTime:
        return ModelTime(self.seconds - earlier.seconds, self.batches - earlier.batches, self.images - earlier.images)


@dataclass(frozen=True)
class Summary:
    before: int  # rows an earlier run had written
    embedded: int
    failed: int
    seconds: float
    model: ModelTime  # the forward passes within those seconds


def model_identity(card: ModelCard) -> dict[str, Any]:
    """What must match for two embeddings to share a space: the model, its weights, its numbers."""
    return {
        "model": card.model_id,
        "checkpoint_sha256": card.checkpoint_sha256,
        "checkpoint_format": card.checkpoint_format,
        "dtype": card.dtype,
        "preprocess": card.preprocess.to_dict(),
        "image_size": card.image_size,
        "embedding": card.embedding_meaning,
        "dim": card.cfg.embedding_dim,
    }


def identity(card: ModelCard, options: Options) -> dict[str, Any]:
    """What must match for two runs' rows to share one output: the model, and the rows' format."""
    return model_identity(card) | {"format": "float16" if options.float16 else "float32", "top_k": options.top_k}


async def embed(settings: Settings, options: Options, progress: TextIO = sys.stderr) -> Summary:
    """Embed every image of `options.source` not yet in `options.out`."""
    embedder = await Embedder.start(settings, options.top_k)
    try:
        card = embedder.engine.card
        output = Output.open(
            options.out,
            identity(card, options),
            card.cfg.embedding_dim,
            options.float16,
            options.top_k > 0,
            options.overwrite,
        )
        vectors = _vector_table(options, model_identity(card), output)
        done = output.done()
        source = _Source(items(options.source, settings.max_body_bytes, options.columns))
        todo = _Progress(len(done), progress)
        counting = asyncio.create_task(asyncio.to_thread(count, options.source, options.columns))
        counting.add_done_callback(todo.counted)  # beside the run: no image waits for the count
        run = _Run(options, embedder, output, vectors, todo)
        summary = await run.all(item for item in source if item.key not in done)
        await asyncio.wait([counting])
        todo.finish()
        source.check(summary)
        if vectors is not None and await asyncio.to_thread(vectors.finish):
            log.info("built the vector index of %s, table %s", options.lancedb, options.table)
        return summary
    finally:
        await embedder.close()


@dataclass
class Embedder:
    """Images' rows from their items, a group at a time: read on threads, decoded (in the decode
    processes, or a group's JPEGs at once on the GPU), embedded through the engine seam (the
    batcher merges concurrent images into batches). Shared by `vit-serve embed`, `vit-serve
    search` and the Ray Data transform (service/bulk/ray_data.py)."""

    settings: Settings
    engine: EngineHandle
    pool: DecodePool
    metrics: Metrics
    top_k: int = 0  # a classifier's top-k labels beside each embedding

    @classmethod
    async def start(cls, settings: Settings, top_k: int = 0) -> Embedder:
        """Load the model these settings choose (in this process) and start its decode processes."""
        metrics = Metrics()
        engine = await in_process().connect(settings, metrics)
        try:
            card = engine.card
            if not card.cfg.embedding_dim:
                raise EmbedError(f"{card.model_id} has no pooled embedding (a tower without its head)")
            if top_k and not card.labels:
                raise EmbedError(f"--top-k: {card.model_id} has no classification head")
            pool = decode_pool(settings, card, settings.resolve(card.device_type), metrics)
            await pool.start()
        except BaseException:
            await engine.drain(settings.shutdown_timeout_s)
            raise
        return cls(settings, engine, pool, metrics, top_k)

    def model_time(self) -> ModelTime:
        """The forward passes so far (the engine's own metrics)."""
        value = self.metrics.registry.get_sample_value
        return ModelTime(
            value("vit_inference_duration_seconds_sum") or 0.0,
            int(value("vit_batch_size_count") or 0),
            int(value("vit_batch_size_sum") or 0),
        )

    async def close(self) -> None:
        self.pool.close()
        await self.engine.drain(self.settings.shutdown_timeout_s)

    async def stream(self, items: Iterable[Item]) -> AsyncGenerator[list[Row], None]:
        """The items' rows, a group at a time as each group finishes (not in order), with at most
        two batches' worth of images in flight, so that reading and decoding the next groups
        overlaps the forward passes of these; unfinished groups are cancelled when it is closed."""
        window = 2 * self.settings.resolve(self.engine.card.device_type).max_batch_size
        size = max(1, window // GROUPS_IN_FLIGHT)
        todo = iter(items)
        pending: set[asyncio.Task[list[Row]]] = set()
        try:
            for group in iter(lambda: list(itertools.islice(todo, size)), []):
                if len(pending) >= GROUPS_IN_FLIGHT:
                    finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in finished:
                        yield task.result()
                pending.add(asyncio.create_task(self.rows(group)))
            while pending:
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    yield task.result()
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def rows(self, items: Sequence[Item]) -> list[Row]:
        """The items' rows, in order: each read on a thread, decoded (a group's plain JPEGs in
        batched nvJPEG calls where VIT_GPU_DECODE decodes them on the model's GPU, the rest in the
        decode processes), then embedded through the engine seam. An image that fails fails only
        its own row."""
        loaded = await asyncio.gather(*(self._load(item) for item in items))
        decoded = await self._decode({i: data for i, data in enumerate(loaded) if isinstance(data, bytes)})
        outcomes = [decoded[i] if isinstance(data, bytes) else data for i, data in enumerate(loaded)]
        return list(await asyncio.gather(*(self._embed(item, out) for item, out in zip(items, outcomes, strict=True))))

    @staticmethod
    async def _load(item: Item) -> bytes | str:
        try:
            return await asyncio.to_thread(item.load)
        except (OSError, ValueError) as exc:
            return f"unreadable: {exc}"

    async def _decode(self, encoded: dict[int, bytes]) -> dict[int, Image | str]:
        """Each image's pixels, or why it has none, by its index in the group."""
        decoded: dict[int, Image | str] = {}
        if (decoder := self.engine.device_decoder) is not None and encoded:
            decoded = await _on_device(decoder, encoded)
        rest = [i for i in encoded if i not in decoded]
        on_cpu = await asyncio.gather(*(self._on_cpu(encoded[i]) for i in rest))
        return decoded | dict(zip(rest, on_cpu, strict=True))

    async def _on_cpu(self, data: bytes) -> Image | str:
        try:
            return await self.pool.decode(data)
        except ImageError as exc:
            return f"not decoded: {exc}"

    async def _embed(self, item: Item, pixels: Image | str) -> Row:
        if isinstance(pixels, str):
            return Row(item.key, None, pixels)
        try:
            deadline = time.monotonic() + self.settings.request_timeout_s
            result = (await self.engine.submit([pixels], deadline))[0]
        except ServiceError as exc:
            return Row(item.key, None, f"not embedded: {exc}")
        if not self.top_k or result.probs is None:
            return Row(item.key, result.embedding)
        best = np.argsort(-result.probs, kind="stable")[: self.top_k]
        labels = self.engine.card.labels
        return Row(item.key, result.embedding, None, [labels[i] for i in best], result.probs[best].tolist())


async def _on_device(decoder: DeviceDecoder, encoded: dict[int, bytes]) -> dict[int, Image | str]:
    """The plain JPEGs among `encoded` decoded on the GPU in batched calls, each that fails with
    why, by index; the rest are left to the decode processes."""
    indices = list(encoded)
    decoded = await decoder.decode_each([encoded[i] for i in indices])
    return {
        i: f"not decoded: {out}" if isinstance(out, ImageError) else out
        for i, out in zip(indices, decoded, strict=True)
        if out is not None
    }


def _vector_table(options: Options, model: dict[str, Any], output: Output) -> VectorTable | None:
    if options.lancedb is None:
        return None
    try:
        from service.bulk.vectors import VectorTable
    except ImportError as exc:
        raise EmbedError(f"--lancedb: {exc.name} is missing: pip install 'vit-serve[lancedb]'") from exc
    return VectorTable.open(options.lancedb, options.table, model, output, options.index_min_rows)


class _Source:
    """A source's items; one that fails after its first item (a tar shard cut short, a file or
    mount gone) ends them instead of the run, so that the rows before it are written first."""

    def __init__(self, items: Iterator[Item]) -> None:
        self.items = items
        self.error: SourceError | None = None
        self.started = False

    def __iter__(self) -> Iterator[Item]:
        try:
            for item in self.items:
                self.started = True
                yield item
        except SourceError as exc:
            self.error = exc

    def check(self, summary: Summary) -> None:
        """The source's failure, if it failed: as it was if it never began, else with what was kept."""
        if self.error is not None and not self.started:
            raise self.error
        if self.error is not None:
            raise EmbedError(
                f"{self.error}: the source failed mid-run; every image before it has its row"
                f" ({summary.before + summary.embedded:,} rows in all), and a new run with the same arguments"
                " resumes after them"
            )


@dataclass
class _Run:
    options: Options
    embedder: Embedder
    output: Output
    vectors: VectorTable | None
    progress: _Progress

    async def all(self, todo: Iterator[Item]) -> Summary:
        """Every item, in shards of `shard_size` rows."""
        rows: list[Row] = []
        before = self.embedder.model_time()
        async with contextlib.aclosing(self.embedder.stream(todo)) as groups:
            async for group in groups:
                await self._collect(rows, group)
        if rows:
            await self._write(rows)
        progress = self.progress
        model = self.embedder.model_time() - before
        return Summary(progress.before, progress.done, progress.failed, progress.elapsed, model)

    async def _collect(self, rows: list[Row], group: list[Row]) -> None:
        for row in group:
            rows.append(row)
            self.progress.add(row.error is not None)
        while len(rows) >= self.options.shard_size:
            shard, rows[:] = rows[: self.options.shard_size], rows[self.options.shard_size :]
            await self._write(shard)

    async def _write(self, rows: list[Row]) -> None:
        """One shard; a disk that is full (or any failure to write) ends the run, in one line,
        with every shard written before it intact and named by the manifest."""
        try:
            await asyncio.to_thread(self.output.write, rows)
            if self.vectors is not None:  # once the shard is complete: the table never runs ahead of it
                await asyncio.to_thread(self.vectors.add, rows)
        except OSError as exc:
            written = len(self.output.shards)
            raise EmbedError(
                f"writing shard {written} to {self.output.directory} failed ({exc}); the {written} shards"
                f" ({self.output.rows:,} rows) written before it are intact, and a new run resumes after them"
            ) from exc


class _Progress:
    """Images done, errors and the rate: a line redrawn on a terminal, a log line every 10 s elsewhere."""

    def __init__(self, before: int, stream: TextIO) -> None:
        self.before, self.stream = before, stream
        self.total: int | None = None  # images to do, once counted (tar shards are not)
        self.done = self.failed = 0
        self.started = self._shown = time.monotonic()
        self.tty = stream.isatty()

    def counted(self, task: asyncio.Future[int | None]) -> None:
        """The source's count has finished: the images left to do, and so an ETA, from now on."""
        if not task.cancelled() and task.exception() is None and (total := task.result()) is not None:
            self.total = max(total - self.before, 0)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def add(self, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        now = time.monotonic()
        if now - self._shown >= (0.2 if self.tty else 10.0):
            self._shown = now
            self._show()

    def _show(self, end: str = "") -> None:
        rate = self.done / max(self.elapsed, 1e-9)
        counted = f" of {self.total:,}" if self.total is not None else ""
        line = f"{self.done:,}{counted} images ({self.failed:,} failed), {rate:,.1f} images/s"
        if self.total is not None:
            line += f", {max(self.total - self.done, 0) / rate if rate else float('inf'):,.0f} s to go"
        if self.tty:
            self.stream.write(f"\r{line}{end}")
        else:
            self.stream.write(f"{line}\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.done:
            self._show(end="\n")
