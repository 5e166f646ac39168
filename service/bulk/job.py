"""`vit-serve embed SOURCE --out DEST`: every image of a source embedded, in this process, into
Parquet shards (service/bulk/output.py), resumable.

The model is the server's (the same settings choose and load it), reached through the same engine
seam, `in_process()` (service/engine/handle.py), with no HTTP between: images are read on threads,
decoded in the service's own decode processes (bounded in time and memory), and submitted one by
one to the batcher, which forms the same batches the server forms; a window of images in flight
keeps decoding ahead of the forward passes. An image that cannot be read, decoded or embedded is
a row with its error, never the end of the run.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from service.bulk.output import Output, Row
from service.bulk.sources import Columns, Item, count, items
from service.decoding import DecodeFailed, DecodePool
from service.engine.card import ModelCard
from service.engine.handle import EngineHandle, in_process
from service.errors import ServiceError
from service.lifecycle import decode_pool
from service.metrics import Metrics
from service.settings import Settings

if TYPE_CHECKING:  # lancedb is an optional extra, imported only for --lancedb
    from service.bulk.vectors import VectorTable

log = logging.getLogger(__name__)


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
class Summary:
    before: int  # rows an earlier run had written
    embedded: int
    failed: int
    seconds: float


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
        source = items(options.source, settings.max_body_bytes, options.columns)
        total = await asyncio.to_thread(count, options.source, options.columns)
        todo = _Progress(None if total is None else max(total - len(done), 0), len(done), progress)
        run = _Run(options, embedder, output, vectors, todo)
        window = 2 * settings.resolve(card.device_type).max_batch_size
        summary = await run.all((item for item in source if item.key not in done), window)
        if vectors is not None and await asyncio.to_thread(vectors.finish):
            log.info("built the vector index of %s, table %s", options.lancedb, options.table)
        return summary
    finally:
        await embedder.close()


@dataclass
class Embedder:
    """An image's row from its item: read on a thread, decoded in the decode processes, embedded
    through the engine seam (the batcher merges concurrent images into batches). Shared by
    `vit-serve embed` and the Ray Data transform (service/bulk/ray_data.py)."""

    settings: Settings
    engine: EngineHandle
    pool: DecodePool
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
        return cls(settings, engine, pool, top_k)

    async def close(self) -> None:
        self.pool.close()
        await self.engine.drain(self.settings.shutdown_timeout_s)

    async def row(self, item: Item) -> Row:
        """One image's row: its embedding, or why there is none."""
        try:
            data = await asyncio.to_thread(item.load)
        except (OSError, ValueError) as exc:
            return Row(item.key, None, f"unreadable: {exc}")
        try:
            pixels = (await self.pool.decode_all([data]))[0]
        except DecodeFailed as failure:
            return Row(item.key, None, f"not decoded: {failure.error}")
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


def _vector_table(options: Options, model: dict[str, Any], output: Output) -> VectorTable | None:
    if options.lancedb is None:
        return None
    try:
        from service.bulk.vectors import VectorTable
    except ImportError as exc:
        raise EmbedError(f"--lancedb: {exc.name} is missing: pip install 'vit-serve[lancedb]'") from exc
    return VectorTable.open(options.lancedb, options.table, model, output, options.index_min_rows)


@dataclass
class _Run:
    options: Options
    embedder: Embedder
    output: Output
    vectors: VectorTable | None
    progress: _Progress

    async def all(self, todo: Iterator[Item], window: int) -> Summary:
        """Every item, at most `window` in flight, in shards of `shard_size` rows."""
        rows: list[Row] = []
        pending: set[asyncio.Task[Row]] = set()
        for item in todo:
            if len(pending) >= window:
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                await self._collect(rows, finished)
            pending.add(asyncio.create_task(self.embedder.row(item)))
        if pending:
            await self._collect(rows, (await asyncio.wait(pending))[0])
        if rows:
            await self._write(rows)
        self.progress.finish()
        return Summary(self.progress.before, self.progress.done, self.progress.failed, self.progress.elapsed)

    async def _collect(self, rows: list[Row], finished: set[asyncio.Task[Row]]) -> None:
        for task in finished:
            row = task.result()
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

    def __init__(self, total: int | None, before: int, stream: TextIO) -> None:
        self.total, self.before, self.stream = total, before, stream
        self.done = self.failed = 0
        self.started = self._shown = time.monotonic()
        self.tty = stream.isatty()

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
        counted = f" of {self.total:,}" if self.total is not None else ""  # tar shards are not counted ahead
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
