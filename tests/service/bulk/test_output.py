"""service/bulk/output.py: shards complete before the manifest names them, the keys an earlier
run finished, and no output ever mixing two models' rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from service.bulk.output import MANIFEST, Output, OutputError, Row

MODEL = {"model": "m", "checkpoint_sha256": "0" * 64, "dtype": "float32", "preprocess": {"mean": (0.5, 0.5, 0.5)}}


def rows(*keys: str) -> list[Row]:
    return [Row(key, np.full(4, i, np.float32)) for i, key in enumerate(keys)]


def test_shards_and_the_manifest_hold_every_row_and_a_second_run_knows_them(tmp_path: Path) -> None:
    output = Output.open(tmp_path, MODEL, 4, False, False, overwrite=False)
    output.write(rows("a", "b"))
    output.write([*rows("c"), Row("d", None, "not decoded: broken")])
    again = Output.open(tmp_path, MODEL, 4, False, False, overwrite=False)
    assert again.done() == {"a", "b", "c", "d"} and again.rows == 4
    table = pq.read_table(tmp_path / "part-00001.parquet")
    assert table.column("error").to_pylist() == [None, "not decoded: broken"]
    assert table.column("embedding").to_pylist()[1] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, "part-00000.parquet", "part-00001.parquet"]


def test_float16_and_top_k_columns(tmp_path: Path) -> None:
    output = Output.open(tmp_path, MODEL, 4, True, True, overwrite=False)
    output.write([Row("a", np.array([1, 2, 3, 4], np.float32), None, ["7", "1"], [0.9, 0.05])])
    table = pq.read_table(tmp_path / "part-00000.parquet")
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: halffloat>[4]"
    assert table.column("labels").to_pylist() == [["7", "1"]]
    assert table.column("scores").to_pylist()[0] == pytest.approx([0.9, 0.05])


def test_another_models_output_is_refused_naming_the_difference_unless_overwritten(tmp_path: Path) -> None:
    Output.open(tmp_path, MODEL, 4, False, False, overwrite=False).write(rows("a"))
    other = MODEL | {"checkpoint_sha256": "1" * 64}
    with pytest.raises(OutputError, match=r"checkpoint_sha256: '0+' there, '1+' now"):
        Output.open(tmp_path, other, 4, False, False, overwrite=False)
    replaced = Output.open(tmp_path, other, 4, False, False, overwrite=True)
    assert replaced.done() == set() and not (tmp_path / "part-00000.parquet").exists()
    assert json.loads((tmp_path / MANIFEST).read_text())["identity"]["checkpoint_sha256"] == "1" * 64


def test_shards_without_a_manifest_are_not_taken_over(tmp_path: Path) -> None:
    (tmp_path / "part-00000.parquet").write_bytes(b"someone else's")
    with pytest.raises(OutputError, match="shards without a manifest"):
        Output.open(tmp_path, MODEL, 4, False, False, overwrite=False)


def test_an_unfinished_shard_is_never_read_as_done(tmp_path: Path) -> None:
    output = Output.open(tmp_path, MODEL, 4, False, False, overwrite=False)
    output.write(rows("a"))
    (tmp_path / ".part-00001.parquet.partial").write_bytes(b"cut short by a kill")
    assert Output.open(tmp_path, MODEL, 4, False, False, overwrite=False).done() == {"a"}
