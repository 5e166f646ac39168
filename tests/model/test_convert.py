"""model/convert.py: `vit-convert` writes this project's format from every format it reads, with
the labels and preprocessing, and reports a bad source in one line without a traceback."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from model.checkpoints import load_checkpoint
from model.convert import main as convert
from tests.model.reference import DEPTH, PRESET, assert_matches, hf_tensors, npz_layout, save_npz, timm_layout


def test_native_round_trip_and_convert_from_every_format(reference, tmp_path: Path) -> None:
    reference[0].save_pretrained(tmp_path / "hf")
    save_file(timm_layout(hf_tensors(reference[0]), DEPTH), str(tmp_path / "t.safetensors"))
    save_npz(tmp_path / "g.npz", npz_layout(hf_tensors(reference[0]), DEPTH))
    sources = [
        [str(tmp_path / "hf")],
        [str(tmp_path / "t.safetensors"), "--model", PRESET],
        [str(tmp_path / "g.npz"), "--model", PRESET],
    ]
    for i, src in enumerate(sources):
        dst = tmp_path / f"out{i}"
        assert convert([src[0], str(dst), *src[1:]]) == 0
        ckpt = load_checkpoint(dst)
        assert ckpt.format == "native" and ckpt.labels == ["0", "1", "2", "3", "4"]
        assert_matches(ckpt.model, reference)


def test_convert_reports_errors_without_a_traceback(tmp_path: Path, capsys) -> None:
    assert convert([str(tmp_path / "nothing.npz"), str(tmp_path / "out")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_convert_stores_a_labels_file(reference, tmp_path: Path) -> None:
    reference[0].save_pretrained(tmp_path / "hf")
    (tmp_path / "labels.txt").write_text("ant\nbee\ncat\ndog\nelk\n")
    assert convert([str(tmp_path / "hf"), str(tmp_path / "out"), "--labels", str(tmp_path / "labels.txt")]) == 0
    assert load_checkpoint(tmp_path / "out").labels == ["ant", "bee", "cat", "dog", "elk"]


def test_convert_refuses_labels_that_do_not_fit_the_head(reference, tmp_path: Path, capsys) -> None:
    reference[0].save_pretrained(tmp_path / "hf")
    (tmp_path / "labels.txt").write_text("ant\nbee\n")
    assert convert([str(tmp_path / "hf"), str(tmp_path / "out"), "--labels", str(tmp_path / "labels.txt")]) == 1
    last = capsys.readouterr().err.splitlines()[-1]  # after transformers' save_pretrained progress bar
    assert last.startswith("vit-convert: ") and last.endswith("2 labels for a model with 5 classes")
    assert not (tmp_path / "out").exists()
