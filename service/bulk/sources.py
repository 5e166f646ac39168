"""What `vit-serve embed` reads: each image of a source as a stable key and a way to load its
bytes within a size limit, streamed, so a source of millions of images is never held at once.

- a directory, walked recursively in sorted order; a file is an image by its content (its first
  bytes), not its name; the key is its path below the directory;
- a text file listing paths, one a line (relative to the list's directory); the key is the line;
- a Parquet or CSV table with a column of paths (relative to the table's directory) or, in
  Parquet, of image bytes, and optionally a column of keys (else the path, or `file:row`);
- WebDataset tar shards (a glob): each sample's first member that is an image, keyed by the
  sample's `__key__` (its members' shared name before the first dot), as WebDataset keys it.

Loading is bounded: a file over the limit, unreadable, gone or empty is an error of its own row,
never of the run. A directory below the source that cannot be listed is logged and left out; a
source that fails mid-run (a tar shard cut short or gone) raises SourceError where it fails.
"""

from __future__ import annotations

import csv
import glob
import itertools
import logging
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.decode_cost import SIGNATURE_BYTES, image_format

TABLE_SUFFIXES = (".parquet", ".csv")
_PATH_COLUMNS = ("path", "file", "filename", "image_path")
_BYTES_COLUMNS = ("image", "bytes", "jpg", "png")
_KEY_COLUMNS = ("key", "id", "__key__")

log = logging.getLogger(__name__)


class SourceError(Exception):
    """The source itself cannot be read (not one of its images: those are rows' errors)."""


@dataclass(frozen=True)
class Item:
    key: str  # the row's id
    load: Callable[[], bytes]  # the bytes, within the limit: OSError or ValueError otherwise


@dataclass(frozen=True)
class Columns:
    """Which columns of a table hold the images and the keys (None: found by name)."""

    image: str | None = None
    key: str | None = None


def items(source: str, limit: int, columns: Columns | None = None) -> Iterator[Item]:
    """The images of `source`, lazily, each at most `limit` bytes: see the module for what a
    source may be."""
    path = Path(source)
    reader = _Reader(limit)
    if path.is_dir():
        return reader.directory(path)
    if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
        return reader.table(path, columns or Columns())
    if path.is_file() and path.suffix.lower() == ".tar":
        return reader.tars([path])
    if path.is_file():
        return reader.listed(path)
    shards = sorted(Path(name) for name in glob.glob(source) if name.endswith(".tar"))
    if shards:
        return reader.tars(shards)
    raise SourceError(f"{source}: no such directory or file, nor tar shards matching it")


def count(source: str, columns: Columns | None = None) -> int | None:
    """How many images `source` holds, cheaply (no image is read), or None for tar shards, which
    would have to be read through to count."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    if path.is_dir() or (path.is_file() and path.suffix.lower() != ".tar"):
        return sum(1 for _ in items(source, 0, columns))  # loading nothing, at most sniffing headers
    return None


def in_file(path: Path, limit: int) -> Item:
    """One image file (a search's query), keyed by its path, loaded within `limit` bytes."""
    return Item(str(path), _Reader(limit).file(path))


def in_memory(key: str, data: bytes | None, limit: int) -> Item:
    """An image already read (a Ray Data batch's), loaded within `limit` bytes as any other."""
    return Item(key, _Reader(limit).data(data))


@dataclass(frozen=True)
class _Reader:
    limit: int  # bytes an image may have (VIT_MAX_BODY_BYTES)

    def file(self, path: Path) -> Callable[[], bytes]:
        def load() -> bytes:
            with path.open("rb") as f:
                return self.bounded(f.read(self.limit + 1))

        return load

    def data(self, data: bytes | None) -> Callable[[], bytes]:
        return lambda: self.bounded(data or b"")

    def bounded(self, data: bytes) -> bytes:
        if len(data) > self.limit:
            raise ValueError(f"over {self.limit} bytes (VIT_MAX_BODY_BYTES)")
        if not data:
            raise ValueError("empty file")
        return data

    def directory(self, root: Path) -> Iterator[Item]:
        for directory, names, files in os.walk(root, onerror=_unlisted):
            names.sort()
            for name in sorted(files):
                path = Path(directory, name)
                if _looks_like_an_image(path):
                    yield Item(path.relative_to(root).as_posix(), self.file(path))

    def listed(self, listing: Path) -> Iterator[Item]:
        try:
            with listing.open(encoding="utf-8") as lines:
                for line in lines:
                    if entry := line.strip():
                        yield Item(entry, self.file(_beside(listing, entry)))
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"{listing}: not a readable list of paths ({exc})") from exc

    def table(self, path: Path, columns: Columns) -> Iterator[Item]:
        rows = _parquet_rows(path) if path.suffix.lower() == ".parquet" else _csv_rows(path)
        first = next(rows, None)
        if first is None:
            return
        image = columns.image or next((c for c in (*_PATH_COLUMNS, *_BYTES_COLUMNS) if c in first), None)
        if image is None or image not in first:
            raise SourceError(
                f"{path}: no image column (--column; found by name: {', '.join(_PATH_COLUMNS + _BYTES_COLUMNS)});"
                f" its columns: {', '.join(first)}"
            )
        key = columns.key or next((c for c in _KEY_COLUMNS if c in first), None)
        if key is not None and key not in first:
            raise SourceError(f"{path}: no key column {key!r}; its columns: {', '.join(first)}")
        for index, row in enumerate(itertools.chain([first], rows)):
            value = row[image]
            name = str(row[key]) if key is not None else value if isinstance(value, str) else f"{path.name}:{index}"
            if isinstance(value, bytes) or value is None:
                yield Item(name, self.data(value))
            else:
                yield Item(name, self.file(_beside(path, str(value))))

    def tars(self, shards: list[Path]) -> Iterator[Item]:
        for shard in shards:
            try:
                with tarfile.open(shard, mode="r|*") as tar:  # a stream: members in order, each read once
                    yield from self.samples(tar)
            except (OSError, tarfile.TarError) as exc:
                raise SourceError(f"{shard}: not a readable tar shard ({exc})") from exc

    def samples(self, tar: tarfile.TarFile) -> Iterator[Item]:
        """Each sample's first member that is an image (by content), keyed by WebDataset's
        `__key__`; a member over the limit is never read."""
        seen: str | None = None
        for member in tar:
            directory, _, name = member.name.rpartition("/")
            key = f"{directory}/{name.split('.', 1)[0]}" if directory else name.split(".", 1)[0]
            reader = tar.extractfile(member) if member.isfile() and key != seen else None
            if reader is None:
                continue
            head = reader.read(SIGNATURE_BYTES)
            if image_format(head) is None:
                continue
            seen = key
            if member.size > self.limit:
                yield Item(key, _refused(f"a {member.size}-byte member: over {self.limit} bytes (VIT_MAX_BODY_BYTES)"))
            else:
                yield Item(key, self.data(head + reader.read()))


def _refused(reason: str) -> Callable[[], bytes]:
    def load() -> bytes:
        raise ValueError(reason)

    return load


def _unlisted(error: OSError) -> None:
    """A directory of the source that cannot be listed (gone, or not readable): said, not fatal."""
    log.warning("%s: not listed (%s): the images below it are not part of this run", error.filename, error.strerror)


def _looks_like_an_image(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return image_format(f.read(SIGNATURE_BYTES)) is not None
    except OSError:  # unreadable, or gone since it was listed: not an image of this source
        return False


def _beside(table: Path, entry: str) -> Path:
    path = Path(entry)
    return path if path.is_absolute() else table.parent / path


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow's ArrowInvalid and OSError alike: not a table it can read
        raise SourceError(f"{path}: not a readable Parquet file ({exc})") from exc
    for batch in table.iter_batches(batch_size=256):  # a batch of rows at a time: bytes columns stream
        yield from batch.to_pylist()


def _csv_rows(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            yield from csv.DictReader(f)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SourceError(f"{path}: not a readable CSV file ({exc})") from exc
