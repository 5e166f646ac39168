"""model/weights.py: the ground every checkpoint format stands on: the readers, the q/k/v fusion
and the strict copy that checks every key and shape before it touches the model."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from model.config import preset
from model.vit import VisionTransformer
from model.weights import CheckpointError, fuse_qkv, load_strict, read_json, read_weights, sha256_of


@pytest.fixture
def tiny() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(preset("vit_test_tiny"))


def test_a_state_that_fits_is_copied_whole(tiny: VisionTransformer) -> None:
    other = VisionTransformer(tiny.cfg)
    load_strict(other, tiny.state_dict(), "test")
    assert all(torch.equal(tiny.state_dict()[k], v) for k, v in other.state_dict().items())


def test_a_state_that_does_not_fit_names_everything_and_copies_nothing(tiny: VisionTransformer) -> None:
    target = VisionTransformer(tiny.cfg)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    state = dict(tiny.state_dict())
    del state["cls_token"]
    state["head.weight"] = torch.zeros(3, 3)
    state["extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_strict(target, state, "a file", unused=["npz/leftover"])
    message = str(err.value)
    assert message.startswith("a file does not fit the model (D=48, depth=2, heads=3, patch=8, image=32, classes=10)")
    assert "missing keys (1): cls_token" in message
    assert "unexpected keys (2): extra, npz/leftover" in message
    assert "head.weight: checkpoint (3, 3) vs model (10, 48)" in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_position_embeddings_for_another_grid_are_resampled(tiny: VisionTransformer) -> None:
    bigger = VisionTransformer(tiny.cfg.with_changes(image_size=48))  # a 6×6 grid instead of 4×4
    load_strict(bigger, tiny.state_dict(), "test")
    assert bigger.state_dict()["pos_embed"].shape == (1, 37, 48)
    torch.testing.assert_close(bigger.state_dict()["pos_embed"][:, 0], tiny.state_dict()["pos_embed"][:, 0])


def test_separate_q_k_v_are_fused_and_a_partial_set_is_refused() -> None:
    q, k, v = (torch.full((4, 4), float(i)) for i in range(3))
    fused = fuse_qkv({"blocks.0.attn.q.weight": q, "blocks.0.attn.k.weight": k, "blocks.0.attn.v.weight": v}, 1)
    assert list(fused) == ["blocks.0.attn.qkv.weight"] and torch.equal(fused["blocks.0.attn.qkv.weight"][8:], v)
    with pytest.raises(CheckpointError, match="block 0: found 2 of the q, k, v bias tensors"):
        fuse_qkv({"blocks.0.attn.q.bias": q[0], "blocks.0.attn.k.bias": k[0]}, 1)


def test_weights_are_read_from_safetensors_and_from_training_envelopes(tmp_path: Path) -> None:
    tensors = {"cls_token": torch.ones(1, 1, 4)}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    torch.save({"model": {"module.cls_token": tensors["cls_token"]}}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        read = read_weights(tmp_path / name)
        assert list(read) == ["cls_token"] and torch.equal(read["cls_token"], tensors["cls_token"])


class _RunsCode:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        import os

        return (os.system, ("touch PWNED",))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"cls_token": _RunsCode()}))
    with pytest.raises(CheckpointError, match=r"refused|not a readable"):
        read_weights(tmp_path / "evil.pth")
    assert not (tmp_path / "PWNED").exists()


def test_json_must_be_an_object_and_the_digest_is_the_files(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected a JSON object"):
        read_json(tmp_path / "list.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CheckpointError, match="not readable JSON"):
        read_json(tmp_path / "bad.json")
    assert sha256_of(tmp_path / "bad.json") == hashlib.sha256(b"{").hexdigest()
