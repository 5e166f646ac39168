"""Where `vit-serve embed` writes: Parquet shards, each written aside and renamed into place, and
a manifest that names the model they came from.

    DEST/_manifest.json         {"model": {...}, "shards": ["part-00000.parquet", ...], "rows": N}
    DEST/part-00000.parquet     key, embedding (float32 or float16, null where it failed), error,
                                and with top-k labels: labels, scores

A shard is complete once renamed, and the manifest is rewritten (aside, then renamed) after each,
so a run killed at any point leaves whole shards and a manifest naming them; what was in flight
is embedded again by the next run, which skips every key already in a shard. The model's identity
(id, checkpoint hash, dtype, preprocessing, embedding size and format) is recorded once: a run with
another model into the same directory stops, unless told to start over.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "_manifest.json"  # "_" and "." files are not data to pyarrow: `pq.read_table(DEST)` reads the shards


class OutputError(Exception):
    """The output directory cannot take this run's rows (another model's, or unwritable)."""


@dataclass
class Row:
    key: str
    embedding: np.ndarray | None  # None where the image could not be embedded
    error: str | None = None
    labels: list[str] | None = None  # the top-k of a classifier, best first
    scores: list[float] | None = None


@dataclass
class Output:
    directory: Path
    identity: dict[str, Any]  # the model and format: what must match to add rows
    dim: int
    float16: bool = False
    top_k: bool = False
    shards: list[str] = field(default_factory=list)
    rows: int = 0

    @classmethod
    def open(
        cls, directory: Path, identity: dict[str, Any], dim: int, float16: bool, top_k: bool, overwrite: bool
    ) -> Output:
        """The output at `directory`: a new one, or the one an earlier run left with the same
        identity (OutputError for another, unless `overwrite`, which removes its shards)."""
        identity = json.loads(json.dumps(identity))  # as the manifest holds it (tuples are lists)
        output = cls(directory, identity, dim, float16, top_k)
        manifest = directory / MANIFEST
        if manifest.is_file():
            recorded = json.loads(manifest.read_text())
            if recorded["identity"] != identity and not overwrite:
                differences = _differences(recorded["identity"], identity)
                raise OutputError(
                    f"{directory} holds embeddings of another model or format ({differences});"
                    " choose another --out, or --overwrite to replace them"
                )
            if recorded["identity"] == identity:
                output.shards, output.rows = list(recorded["shards"]), int(recorded["rows"])
            else:
                for name in recorded["shards"]:
                    (directory / name).unlink(missing_ok=True)
        elif directory.exists() and any(directory.glob("part-*.parquet")) and not overwrite:
            raise OutputError(f"{directory} holds shards without a manifest; choose another --out, or --overwrite")
        directory.mkdir(parents=True, exist_ok=True)
        for partial in directory.glob(".part-*.parquet.partial"):  # a killed run's shard in flight
            partial.unlink()
        output._write_manifest()
        return output

    def done(self) -> set[str]:
        """The keys of every row in a complete shard."""
        keys: set[str] = set()
        for name in self.shards:
            keys.update(pq.read_table(self.directory / name, columns=["key"]).column("key").to_pylist())
        return keys

    def write(self, rows: list[Row]) -> None:
        """One more shard of `rows`, complete on disk before the manifest names it."""
        name = f"part-{len(self.shards):05d}.parquet"
        aside = self.directory / f".{name}.partial"
        pq.write_table(rows_table(rows, self.dim, self.float16, self.top_k), aside)
        _sync(aside)
        aside.rename(self.directory / name)
        self.shards.append(name)
        self.rows += len(rows)
        self._write_manifest()

    def _write_manifest(self) -> None:
        manifest = {"identity": self.identity, "shards": self.shards, "rows": self.rows}
        aside = self.directory / f".{MANIFEST}.partial"
        aside.write_text(json.dumps(manifest, indent=1))
        _sync(aside)
        aside.rename(self.directory / MANIFEST)


def rows_table(rows: list[Row], dim: int, float16: bool = False, top_k: bool = False) -> pa.Table:
    """Rows as the shards hold them (the module's columns)."""
    value, dtype = (pa.float16(), np.float16) if float16 else (pa.float32(), np.float32)
    columns: dict[str, pa.Array] = {
        "key": pa.array([row.key for row in rows], pa.string()),
        "embedding": pa.array(
            [None if row.embedding is None else row.embedding.astype(dtype) for row in rows], pa.list_(value, dim)
        ),
        "error": pa.array([row.error for row in rows], pa.string()),
    }
    if top_k:
        columns["labels"] = pa.array([row.labels for row in rows], pa.list_(pa.string()))
        columns["scores"] = pa.array([row.scores for row in rows], pa.list_(pa.float32()))
    return pa.table(columns)


def _sync(path: Path) -> None:
    """`path`'s bytes on disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _differences(recorded: dict[str, Any], asked: dict[str, Any]) -> str:
    names = sorted(name for name in recorded.keys() | asked.keys() if recorded.get(name) != asked.get(name))
    return ", ".join(f"{name}: {recorded.get(name)!r} there, {asked.get(name)!r} now" for name in names)
