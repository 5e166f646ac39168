"""service/bulk/sources.py: every kind of source read lazily into keys and bounded loads: a
directory's images found by their content, in a stable order; a list of paths; Parquet and CSV
tables of paths or bytes; WebDataset tar shards; and what each refuses."""

from __future__ import annotations

import io
import logging
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service.bulk.sources import Columns, SourceError, count, items
from tests.images import encode, gradient

PNG, JPEG = encode(gradient(), "PNG"), encode(gradient(), "JPEG")
LIMIT = 1 << 20


def loaded(source: str | Path, columns: Columns | None = None, limit: int = LIMIT) -> dict[str, bytes | str]:
    """Each item's bytes, or the error its load raised."""
    out: dict[str, bytes | str] = {}
    for item in items(str(source), limit, columns):
        try:
            out[item.key] = item.load()
        except (OSError, ValueError) as exc:
            out[item.key] = f"{type(exc).__name__}: {exc}"
    return out


def test_a_directory_is_walked_recursively_and_images_are_told_by_their_content(tmp_path: Path) -> None:
    (tmp_path / "b" / "deeper").mkdir(parents=True)
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "b" / "no-extension").write_bytes(JPEG)
    (tmp_path / "b" / "deeper" / "c.webp").write_bytes(encode(gradient(), "WEBP"))
    (tmp_path / "b" / "notes.jpg").write_text("not an image, whatever its name")
    (tmp_path / "empty.png").write_bytes(b"")
    assert list(loaded(tmp_path)) == ["a.png", "b/no-extension", "b/deeper/c.webp"]
    assert loaded(tmp_path)["b/no-extension"] == JPEG and count(str(tmp_path)) == 3


def test_a_list_holds_paths_relative_to_itself_or_absolute(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(PNG)
    (tmp_path / "zero.png").write_bytes(b"")
    listing = tmp_path / "list.txt"
    listing.write_text(f"x.png\n\n{tmp_path / 'x.png'}\nmissing.png\nzero.png\n")
    found = loaded(listing)
    assert list(found) == ["x.png", str(tmp_path / "x.png"), "missing.png", "zero.png"]
    assert found["x.png"] == PNG == found[str(tmp_path / "x.png")]
    assert str(found["missing.png"]).startswith("FileNotFoundError") and found["zero.png"] == "ValueError: empty file"
    assert count(str(listing)) == 4


def test_loading_is_bounded(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(encode(gradient(64, 64), "PNG"))
    assert loaded(tmp_path, limit=100)["big.png"] == "ValueError: over 100 bytes (VIT_MAX_BODY_BYTES)"


def test_a_parquet_table_of_bytes_or_paths_with_keys(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(PNG)
    pq.write_table(pa.table({"id": ["a", "b", "c"], "image": [PNG, JPEG, None]}), tmp_path / "bytes.parquet")
    assert loaded(tmp_path / "bytes.parquet") == {"a": PNG, "b": JPEG, "c": "ValueError: empty file"}
    pq.write_table(pa.table({"path": ["x.png", "x.png"], "n": [1, 2]}), tmp_path / "paths.parquet")
    assert [item.key for item in items(str(tmp_path / "paths.parquet"), LIMIT)] == ["x.png", "x.png"]  # the path
    pq.write_table(pa.table({"blob": [PNG], "n": [1]}), tmp_path / "named.parquet")
    assert loaded(tmp_path / "named.parquet", Columns(image="blob")) == {"named.parquet:0": PNG}
    assert count(str(tmp_path / "bytes.parquet")) == 3


def test_a_csv_table_of_paths(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(PNG)
    (tmp_path / "t.csv").write_text("file,caption,sku\nx.png,a gradient,A-1\nmissing.png,none,B-2\n")
    found = loaded(tmp_path / "t.csv", Columns(key="sku"))
    assert found["A-1"] == PNG and str(found["B-2"]).startswith("FileNotFoundError")


def test_a_table_without_the_columns_asked_for_stops_the_run_naming_its_columns(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("caption,sku\na,b\n")
    with pytest.raises(SourceError, match=r"no image column .* its columns: caption, sku"):
        loaded(tmp_path / "t.csv")
    with pytest.raises(SourceError, match="no key column 'nope'"):
        loaded(tmp_path / "t.csv", Columns(image="caption", key="nope"))


def shard(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_yield_each_samples_image_by_its_key(tmp_path: Path) -> None:
    shard(tmp_path / "shard-000.tar", {"s/000.txt": b"a caption", "s/000.jpg": JPEG, "s/000.json": b"{}"})
    shard(tmp_path / "shard-001.tar", {"001.png": PNG, "001.jpg": JPEG, "002.cls": b"3", "003.jpg": b"not one"})
    found = loaded(tmp_path / "shard-*.tar")
    assert found == {"s/000": JPEG, "001": PNG}  # a sample's first image; samples without one are not images
    assert count(str(tmp_path / "shard-*.tar")) is None  # counted only by reading them through
    shard(tmp_path / "big.tar", {"big.png": encode(gradient(64, 64), "PNG")})
    assert loaded(tmp_path / "big.tar", limit=100)["big"].startswith("ValueError: a ")  # never read


def test_a_source_that_does_not_exist_stops_the_run(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such directory or file"):
        loaded(tmp_path / "nowhere")


def test_a_shard_gone_mid_run_is_a_source_error_after_the_items_before_it(tmp_path: Path) -> None:
    shard(tmp_path / "shard-000.tar", {"000.png": PNG})
    shard(tmp_path / "shard-001.tar", {"001.png": PNG})
    source = items(str(tmp_path / "shard-*.tar"), LIMIT)
    assert next(source).key == "000"
    (tmp_path / "shard-001.tar").unlink()
    with pytest.raises(SourceError, match=r"shard-001\.tar: not a readable tar shard"):
        next(source)


def test_a_directory_gone_mid_walk_is_logged_and_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "sub" / "b.png").write_bytes(PNG)
    source = items(str(tmp_path), LIMIT)
    assert next(source).key == "a.png"  # a directory's own files before the directories below it
    shutil.rmtree(tmp_path / "sub")
    with caplog.at_level(logging.WARNING, "service.bulk.sources"):
        assert list(source) == []
    assert f"{tmp_path / 'sub'}: not listed (No such file or directory)" in caplog.text
