"""`vit-serve embed … --lancedb DIR --table NAME`: the embedded rows also in a LanceDB table (an
embedded vector database: the `[lancedb]` extra), searched by cosine, with a vector index once
the table is large enough; and `vit-serve search`'s side of it.

The Parquet shards stay the record of the run (service/bulk/output.py): rows reach the table
only once their shard is complete, and a table that missed some (a run killed between the two)
is given them from the shards when it is next opened, so the table ends with every embedded row
exactly once. Rows without an embedding (their error is in the shards) are not added. The table
records the model's identity in its schema's metadata, and refuses another's rows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from lancedb.index import IvfPq

from service.bulk.output import Output, OutputError, Row

INDEX_MIN_ROWS = 50_000  # below it, a search reads every vector (exact, and fast at this size)
_IDENTITY = b"vit-serve.identity"


@dataclass
class VectorTable:
    table: Any  # lancedb's Table
    dim: int
    index_min_rows: int

    @classmethod
    def open(
        cls, directory: Path, name: str, model: dict[str, Any], output: Output, index_min_rows: int = INDEX_MIN_ROWS
    ) -> VectorTable:
        """The table `name` in the LanceDB at `directory`, made for the `model` whose rows
        `output` holds, holding every embedded row of `output`'s complete shards."""
        db = lancedb.connect(str(directory))
        identity = _identity(model)
        schema = pa.schema(
            [("key", pa.string()), ("embedding", pa.list_(pa.float32(), output.dim))], metadata={_IDENTITY: identity}
        )
        if name in db.list_tables().tables:
            table = _same_model(db, directory, name, identity)
        else:
            table = db.create_table(name, schema=schema)
        vectors = cls(table, output.dim, index_min_rows)
        vectors._catch_up(output)
        return vectors

    def add(self, rows: list[Row]) -> None:
        embedded = [row for row in rows if row.embedding is not None]
        self._append([row.key for row in embedded], [row.embedding for row in embedded])

    def _catch_up(self, output: Output) -> None:
        """Add the rows of `output`'s shards that the table lacks (a run killed between the two)."""
        keys = self.table.search().select(["key"]).limit(None).to_arrow()  # the keys only, not the vectors
        present = set(keys.column("key").to_pylist())
        for name in output.shards:
            shard = pq.read_table(output.directory / name, columns=["key", "embedding"]).to_pylist()
            missing = [row for row in shard if row["key"] not in present and row["embedding"] is not None]
            self._append([row["key"] for row in missing], [row["embedding"] for row in missing])

    def _append(self, keys: list[str], embeddings: list[Any]) -> None:
        if keys:
            vectors = pa.array([np.asarray(e, np.float32) for e in embeddings], pa.list_(pa.float32(), self.dim))
            self.table.add(pa.table({"key": keys, "embedding": vectors}))

    def finish(self) -> bool:
        """Build (or rebuild) the cosine vector index once the table has `index_min_rows` rows;
        True if it did."""
        rows = self.table.count_rows()
        if rows < self.index_min_rows:
            return False
        partitions = max(1, round(math.sqrt(rows)))
        sub_vectors = next(n for n in (self.dim // 16, self.dim // 8, self.dim // 4, 1) if n and self.dim % n == 0)
        config = IvfPq(distance_type="cosine", num_partitions=partitions, num_sub_vectors=sub_vectors)
        self.table.create_index("embedding", config=config, replace=True)
        return True


def search(directory: Path, name: str, model: dict[str, Any], vector: list[float], k: int) -> list[tuple[str, float]]:
    """The `k` rows of the table nearest to `vector` (an embedding by `model`, which must be the
    table's), with their cosine similarity, best first."""
    db = lancedb.connect(str(directory))
    if name not in db.list_tables().tables:
        raise OutputError(f"{directory}: no table {name!r}")
    table = _same_model(db, directory, name, _identity(model))
    found = table.search(vector, vector_column_name="embedding").distance_type("cosine").limit(k)
    return [(row["key"], 1.0 - float(row["_distance"])) for row in found.to_list()]


def _identity(model: dict[str, Any]) -> bytes:
    return json.dumps(model, sort_keys=True).encode()


def _same_model(db: Any, directory: Path, name: str, identity: bytes) -> Any:
    table = db.open_table(name)
    if (table.schema.metadata or {}).get(_IDENTITY) != identity:
        raise OutputError(f"{directory}: table {name!r} holds another model's embeddings")
    return table
