"""What `vit-serve embed` reads: each image of a source as a stable key and a way to read its
bytes, within a size limit. A directory is walked recursively, in sorted order, and a file is an
image by its content (its first bytes), not its name; a text file lists paths, one a line
(relative to the list's directory). Reading is bounded: a file over the limit, an unreadable
one or one that has gone is an error of its own row, never of the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from service.decode_cost import SIGNATURE_BYTES, image_format


class SourceError(Exception):
    """The source itself cannot be read (not one of its images: those are rows' errors)."""


@dataclass(frozen=True)
class Item:
    key: str  # the row's id: the path as given, or below the directory
    path: Path

    def read(self, limit: int) -> bytes:
        """The file's bytes; OSError if it cannot be read, ValueError past `limit` bytes."""
        with self.path.open("rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ValueError(f"over {limit} bytes (VIT_MAX_BODY_BYTES)")
        if not data:
            raise ValueError("empty file")
        return data


def items(source: Path) -> Iterator[Item]:
    """The images of `source`: a directory (keys relative to it) or a list of paths."""
    if source.is_dir():
        yield from _directory(source)
    elif source.is_file():
        yield from _listed(source)
    else:
        raise SourceError(f"{source}: no such directory or file")


def _directory(root: Path) -> Iterator[Item]:
    for directory, names, files in os.walk(root):
        names.sort()
        for name in sorted(files):
            path = Path(directory, name)
            if _looks_like_an_image(path):
                yield Item(path.relative_to(root).as_posix(), path)


def _looks_like_an_image(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return image_format(f.read(SIGNATURE_BYTES)) is not None
    except OSError:  # unreadable, or gone since it was listed: not an image of this source
        return False


def _listed(listing: Path) -> Iterator[Item]:
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{listing}: not a readable list of paths ({exc})") from exc
    for line in lines:
        if line.strip():
            path = Path(line.strip())
            yield Item(line.strip(), path if path.is_absolute() else listing.parent / path)
