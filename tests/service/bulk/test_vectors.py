"""service/bulk/vectors.py and `vit-serve search`: held-out MNIST digits embedded by vit-mnist
into LanceDB, with its vector index, and each digit's nearest neighbours found among its own
class; a table that missed rows catches up from the shards; another model's table refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lancedb
import numpy as np
import pytest
from PIL import Image

from model.train import load_digits, split_indices
from service.bulk.output import MANIFEST, Output, OutputError, Row
from service.bulk.vectors import VectorTable, search

QUIET = ["--log-level", "warning", "--dtype", "float32"]
PER_CLASS = 20


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIT_")}
    command = [sys.executable, "-m", "service", *map(str, args), *QUIET]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 held-out digits (20 a class, never trained on) as PNG files named by their class."""
    images, labels = load_digits()
    _, held_out = split_indices(len(labels), validate=False)
    root = tmp_path_factory.mktemp("digits")
    for digit in range(10):
        for n, index in enumerate(held_out[labels[held_out] == digit][:PER_CLASS]):
            Image.fromarray(images[index]).save(root / f"{digit}-{n:02d}.png")
    return root


def test_digits_find_their_own_class_in_lancedb_through_its_index(digits: Path, tmp_path: Path) -> None:
    out, db = tmp_path / "out", tmp_path / "db"
    done = cli("embed", digits, "--out", out, "--lancedb", db, "--table", "digits", "--index-min-rows", "150")
    assert done.returncode == 0, done.stderr
    model = {
        k: v for k, v in json.loads((out / MANIFEST).read_text())["identity"].items() if k not in ("format", "top_k")
    }

    table = lancedb.connect(str(db)).open_table("digits")
    assert table.count_rows() == 10 * PER_CLASS and [i.name for i in table.list_indices()] == ["embedding_idx"]
    rows = {row["key"]: row["embedding"] for row in table.to_arrow().to_pylist()}
    same = 0
    for key, vector in rows.items():
        neighbours = [found for found, _ in search(db, "digits", model, list(vector), 4) if found != key][:3]
        same += sum(found[0] == key[0] for found in neighbours)
    assert same / (3 * len(rows)) >= 0.9  # the three nearest other digits, nearly all of the same class
    found = cli("search", db, "--table", "digits", "--image", digits / "7-00.png", "-k", "3")
    assert found.returncode == 0, found.stderr
    lines = [line.split("\t") for line in found.stdout.splitlines()]
    assert lines[0] == ["1.0000", "7-00.png"] and all(key.startswith("7-") for _, key in lines)


def test_a_table_catches_up_from_the_shards_and_refuses_another_model(tmp_path: Path) -> None:
    model = {"model": "m", "dim": 4}
    output = Output.open(tmp_path / "out", model | {"format": "float32"}, 4, False, False, overwrite=False)
    output.write([Row("a", np.ones(4, np.float32)), Row("b", None, "not decoded: x")])  # a shard the table missed
    table = VectorTable.open(tmp_path / "db", "t", model, output)
    table.add([Row("c", np.array([1, 0, 0, 0], np.float32))])
    assert sorted(r["key"] for r in table.table.to_arrow().to_pylist()) == ["a", "c"]  # errors stay in the shards
    again = VectorTable.open(tmp_path / "db", "t", model, output)
    assert again.table.count_rows() == 2 and not again.finish()  # nothing missed twice; too few rows for an index
    assert search(tmp_path / "db", "t", model, [1, 0, 0, 0], 1) == [("c", pytest.approx(1.0))]
    with pytest.raises(OutputError, match="holds another model's embeddings"):
        VectorTable.open(tmp_path / "db", "t", model | {"model": "other"}, output)
    with pytest.raises(OutputError, match="holds another model's embeddings"):
        search(tmp_path / "db", "t", model | {"dim": 8}, [0.0] * 8, 1)


def test_search_without_lancedbs_table_or_query_is_one_line(tmp_path: Path, digits: Path) -> None:
    missing = cli("search", tmp_path / "db", "--image", digits / "0-00.png")
    assert missing.returncode == 2 and missing.stderr.strip().endswith("no table 'images'")
    neither = cli("search", tmp_path / "db")
    assert neither.returncode == 2 and "one of the arguments --image --text is required" in neither.stderr
