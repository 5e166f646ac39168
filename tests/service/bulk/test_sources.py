"""service/bulk/sources.py: a directory's images found by their content, in a stable order; a
list of paths; reading bounded and failing per item."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.bulk.sources import SourceError, items
from tests.images import encode, gradient


def test_a_directory_is_walked_recursively_and_images_are_told_by_their_content(tmp_path: Path) -> None:
    (tmp_path / "b" / "deeper").mkdir(parents=True)
    (tmp_path / "a.png").write_bytes(encode(gradient(), "PNG"))
    (tmp_path / "b" / "no-extension").write_bytes(encode(gradient(), "JPEG"))
    (tmp_path / "b" / "deeper" / "c.webp").write_bytes(encode(gradient(), "WEBP"))
    (tmp_path / "b" / "notes.jpg").write_text("not an image, whatever its name")
    (tmp_path / "empty.png").write_bytes(b"")
    assert [item.key for item in items(tmp_path)] == ["a.png", "b/no-extension", "b/deeper/c.webp"]


def test_a_list_holds_paths_relative_to_itself_or_absolute(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(encode(gradient(), "PNG"))
    listing = tmp_path / "list.txt"
    listing.write_text(f"x.png\n\n{tmp_path / 'x.png'}\nmissing.png\n")
    found = list(items(listing))
    assert [item.key for item in found] == ["x.png", str(tmp_path / "x.png"), "missing.png"]
    assert found[0].read(1 << 20) == found[1].read(1 << 20)
    with pytest.raises(OSError):
        found[2].read(1 << 20)  # a row's error, not the run's


def test_reading_is_bounded_and_an_empty_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(encode(gradient(64, 64), "PNG"))
    listing = tmp_path / "list.txt"
    listing.write_text("big.png\nzero.png\n")
    (tmp_path / "zero.png").write_bytes(b"")
    big, zero = items(listing)
    with pytest.raises(ValueError, match="over 100 bytes"):
        big.read(100)
    with pytest.raises(ValueError, match="empty file"):
        zero.read(100)


def test_a_source_that_does_not_exist_stops_the_run(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such directory or file"):
        list(items(tmp_path / "nowhere"))
