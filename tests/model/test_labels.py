"""Label precedence (docs/API.md, Settings: `VIT_LABELS`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.labels import LabelsError, imagenet_labels, resolve_labels


def test_imagenet_names_ship_in_index_order() -> None:
    names = imagenet_labels()
    assert len(names) == 1000
    assert names[0] == "tench, Tinca tinca" and names[207] == "golden retriever"


def test_precedence(tmp_path: Path) -> None:
    text = tmp_path / "labels.txt"
    text.write_text("cat\ndog\n\n")
    as_json = tmp_path / "labels.json"
    as_json.write_text(json.dumps(["x", "y"]))
    assert resolve_labels(2, text, ["a", "b"]) == ["cat", "dog"]
    assert resolve_labels(2, as_json) == ["x", "y"]
    assert resolve_labels(2, None, ["a", "b"]) == ["a", "b"]
    assert resolve_labels(1000)[1] == "goldfish, Carassius auratus"
    assert resolve_labels(3) == ["0", "1", "2"]


def test_labels_file_of_the_wrong_length(tmp_path: Path) -> None:
    path = tmp_path / "l.txt"
    path.write_text("only-one\n")
    with pytest.raises(LabelsError, match="1 labels for a model with 10 classes"):
        resolve_labels(10, path)
