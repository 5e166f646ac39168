"""Every checkpoint format against Hugging Face's own model, and every way a checkpoint can be bad."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import ViTModel

from model.checkpoints import detect_format, load_checkpoint, save_native
from model.vit import VisionTransformer
from model.weights import CheckpointError, load_strict
from tests.model.reference import (
    DEPTH,
    PRESET,
    assert_matches,
    hf_classifier,
    hf_tensors,
    hub_layout,
    npz_layout,
    save_npz,
    timm_layout,
)


def test_hf_directory_as_transformers_writes_it(reference, tmp_path: Path) -> None:
    reference[0].save_pretrained(tmp_path)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.format == "huggingface" and detect_format(tmp_path) == "huggingface"
    assert ckpt.config.num_classes == 5 and ckpt.config.ln_eps == 1e-6
    assert_matches(ckpt.model, reference)
    assert ckpt.labels is None  # HF's LABEL_i placeholders are not real labels


def test_hf_directory_in_the_hub_layout_with_labels_and_processor(reference, tmp_path: Path) -> None:
    """Checkpoints on the Hub use `encoder.layer.{i}.attention.attention.query` names."""
    reference[0].save_pretrained(tmp_path)
    save_file(hub_layout(hf_tensors(reference[0])), str(tmp_path / "model.safetensors"))
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["id2label"] = {str(i): name for i, name in enumerate("abcde")}
    (tmp_path / "config.json").write_text(json.dumps(meta))
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"resample": 3, "image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6], "size": 32})
    )
    ckpt = load_checkpoint(tmp_path)
    assert_matches(ckpt.model, reference)
    assert ckpt.labels == list("abcde")
    assert ckpt.preprocess.interpolation == "bicubic" and ckpt.preprocess.mean == (0.1, 0.2, 0.3)


def test_hf_vitmodel_embeddings_match_last_hidden_state(tmp_path: Path) -> None:
    torch.manual_seed(3)
    hf = hf_classifier()
    base = ViTModel(hf.config).eval()  # with its pooler, which y does not use
    base.load_state_dict(
        {k.removeprefix("vit."): v for k, v in hf.state_dict().items() if k.startswith("vit.")}, strict=False
    )
    base.save_pretrained(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.config.num_classes == 0
    with torch.inference_mode():
        expected = base(pixel_values=x).last_hidden_state[:, 0]
        out = ckpt.model(x)
    assert out.logits is None
    assert (out.embedding - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_timm_state_dict(reference, tmp_path: Path, suffix: str) -> None:
    """timm's VisionTransformer names (`blocks.{i}.attn.qkv` = concat(q, k, v))."""
    state = timm_layout(hf_tensors(reference[0]), DEPTH)
    path = tmp_path / f"vit{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    ckpt = load_checkpoint(path, PRESET)
    assert ckpt.format == "timm" and ckpt.preprocess.resize_mode == "crop"
    assert_matches(ckpt.model, reference)


def test_timm_checkpoint_in_a_training_envelope(reference, tmp_path: Path) -> None:
    torch.save({"state_dict": timm_layout(hf_tensors(reference[0]), DEPTH), "epoch": 3}, tmp_path / "ckpt.pth")
    assert_matches(load_checkpoint(tmp_path / "ckpt.pth", PRESET).model, reference)


def test_google_npz_original_layout(reference, tmp_path: Path) -> None:
    """google-research/vision_transformer names: Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/…"""
    path = save_npz(tmp_path / "ViT.npz", npz_layout(hf_tensors(reference[0]), DEPTH))
    ckpt = load_checkpoint(path, PRESET)
    assert ckpt.format == "npz" and ckpt.preprocess.resize_mode == "squash"
    assert_matches(ckpt.model, reference)


def test_google_npz_big_vision_layout(tmp_path: Path) -> None:
    """big_vision: params/…, MultiHeadDotProductAttention_0, MlpBlock_0, and no position row for [class]."""
    model = hf_classifier(seed=5)
    with torch.no_grad():
        model.vit.embeddings.position_embeddings[:, 0] = 0  # what big_vision's layout implies
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(pixel_values=x).logits
    path = save_npz(tmp_path / "bv.npz", npz_layout(hf_tensors(model), DEPTH, big_vision=True))
    with torch.inference_mode():
        out = load_checkpoint(path, PRESET).model.eval()(x)
    assert (out.logits - expected).abs().max() <= 1e-5


def test_position_embeddings_are_resampled_for_a_larger_preset(reference, tmp_path: Path) -> None:
    state = timm_layout(hf_tensors(reference[0]), DEPTH)
    save_file(state, str(tmp_path / "v.safetensors"))
    from model.config import PRESETS

    PRESETS["vit_test_tiny_48"] = PRESETS[PRESET].with_changes(image_size=48)
    try:
        ckpt = load_checkpoint(tmp_path / "v.safetensors", "vit_test_tiny_48")
    finally:
        del PRESETS["vit_test_tiny_48"]
    assert ckpt.model.pos_embed.shape == (1, 1 + 6 * 6, 48)
    assert torch.equal(ckpt.model.pos_embed[0, 0], state["pos_embed"][0, 0])
    with torch.inference_mode():
        out = ckpt.model.eval()(torch.randn(1, 3, 48, 48))
    assert torch.isfinite(out.logits).all()


# ------------------------------------------------------------------------------ bad checkpoints


def test_truncated_safetensors(reference, tmp_path: Path) -> None:
    path = tmp_path / "v.safetensors"
    save_file(timm_layout(hf_tensors(reference[0]), DEPTH), str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(path, PRESET)


def test_truncated_npz_and_pth(reference, tmp_path: Path) -> None:
    npz = save_npz(tmp_path / "g.npz", npz_layout(hf_tensors(reference[0]), DEPTH))
    npz.write_bytes(npz.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"not a readable \.npz"):
        load_checkpoint(npz, PRESET)
    pth = tmp_path / "t.pth"
    torch.save(timm_layout(hf_tensors(reference[0]), DEPTH), pth)
    pth.write_bytes(pth.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable PyTorch"):
        load_checkpoint(pth, PRESET)


def test_preset_that_does_not_fit_names_every_problem(reference, tmp_path: Path) -> None:
    path = tmp_path / "v.safetensors"
    state = timm_layout(hf_tensors(reference[0]), DEPTH)
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, "vit_tiny_patch16_224")
    message = str(err.value)
    assert "missing keys (120)" in message and "blocks.11.mlp.fc2.bias" in message  # 12 tensors × blocks 2..11
    assert "unexpected keys (1): extra.weight" in message
    assert "patch_embed.proj.weight: checkpoint (48, 3, 8, 8) vs model (192, 3, 16, 16)" in message


def test_failed_load_leaves_the_model_untouched(reference) -> None:
    model = VisionTransformer(load_checkpoint.__globals__["preset"](PRESET).with_changes(num_classes=5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = timm_layout(hf_tensors(reference[0]), DEPTH)
    state["blocks.1.mlp.fc2.weight"] = torch.zeros(3, 3)  # the last tensor is the bad one
    with pytest.raises(CheckpointError, match=r"blocks\.1\.mlp\.fc2\.weight"):
        load_strict(model, state, "test")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_pickle_that_would_run_code_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"cls_token": _RunsCode()}))  # a plain pickle, as torch.load reads
    torch.save({"cls_token": _RunsCode()}, tmp_path / "evil2.bin")
    for p in (path, tmp_path / "evil2.bin"):
        with pytest.raises(CheckpointError, match=r"refused|not a readable"):
            load_checkpoint(p, PRESET)
    assert not (tmp_path / "PWNED").exists()


def test_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "obj.npz"
    np.savez(path, cls=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match=r"not a readable \.npz"):
        load_checkpoint(path, PRESET)


@pytest.mark.parametrize(
    ("files", "message"),
    [({}, "neither vit.json"), ({"weights.onnx": b"x"}, "unknown checkpoint type")],
)
def test_undetectable_checkpoints(tmp_path: Path, files: dict[str, bytes], message: str) -> None:
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    target = tmp_path / next(iter(files)) if files else tmp_path
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(target, PRESET)


def test_timm_file_without_a_preset(reference, tmp_path: Path) -> None:
    save_file(timm_layout(hf_tensors(reference[0]), DEPTH), str(tmp_path / "v.safetensors"))
    with pytest.raises(CheckpointError, match="name a preset"):
        load_checkpoint(tmp_path / "v.safetensors")


def test_native_save_writes_config_labels_and_preprocessing(reference, tmp_path: Path) -> None:
    ckpt = load_checkpoint(_saved_hf(reference, tmp_path))
    save_native(tmp_path / "n", ckpt.model, ["a", "b", "c", "d", "e"], ckpt.preprocess)
    meta = json.loads((tmp_path / "n" / "vit.json").read_text())
    assert meta["format"] == "vit-serve" and meta["config"]["embed_dim"] == 48
    assert meta["labels"] == ["a", "b", "c", "d", "e"] and meta["preprocess"]["resize_mode"] == "squash"


def _saved_hf(reference, tmp_path: Path) -> Path:
    reference[0].save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def test_hf_directory_with_pytorch_model_bin(reference, tmp_path: Path) -> None:
    reference[0].save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(hub_layout(hf_tensors(reference[0])), tmp_path / "pytorch_model.bin")
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.path == tmp_path and ckpt.sha256 is not None
    assert_matches(ckpt.model, reference)
