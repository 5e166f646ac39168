"""Tiny random-weight transformers models of every family vit-serve serves (model/hf.py), saved
with `save_pretrained` and their image processors, and what transformers itself computes from
them: the oracle for parity tests of the loader (tests/model/test_hf.py) and of the service over
HTTP (tests/service/scenarios/test_families.py). Nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers as T
from safetensors.torch import load_file, save_file

IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
_SHAPE = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "patch_size": 8}


@dataclass(frozen=True)
class Case:
    """One family and class: how to build it, its processor, and its expected /v1/models facts."""

    name: str
    family: str  # as /v1/models reports it
    build: Callable[[], Any]  # a transformers model, eval mode, random weights
    processor: Callable[[], Any]  # its image processor (the PIL one)
    prefix_tokens: int
    embedding_dim: int  # 0: the model has no pooled embedding (SigLIP without its head)
    old_keys: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None  # 4.x names


def _scrambled(model: Any, seed: int) -> Any:
    """Every parameter moved off its initial value (zero biases, unit norms and LayerScale would
    hide a wrong mapping), deterministically."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    return model.eval()


def _vision(**extra: Any) -> dict[str, Any]:
    return {**_SHAPE, "intermediate_size": 64, "image_size": 32, **extra}


def _text() -> dict[str, Any]:
    return {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}


def _prefixed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 4.x names of a vision tower: everything under `vision_model.`."""
    return {k if k.startswith("vision_model.") else f"vision_model.{k}": v for k, v in state.items()}


def _packed_swiglu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 4.x names of DINOv2's SwiGLU: `weights_in` = [gate; up], `weights_out`."""
    out = {}
    for key, value in state.items():
        if ".mlp.gate_proj." in key:
            out[key.replace("gate_proj", "weights_in")] = torch.cat([value, state[key.replace("gate", "up")]])
        elif ".mlp.down_proj." in key:
            out[key.replace("down_proj", "weights_out")] = value
        elif ".mlp.up_proj." not in key:
            out[key] = value
    return out


def _clip_processor() -> Any:
    return T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def _siglip_processor() -> Any:
    return T.SiglipImageProcessor(size={"height": 32, "width": 32})


def _bit_processor() -> Any:  # DINOv2's: served at 32 although config.image_size is 64
    return T.BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}, **IMAGENET)


def _deit_processor() -> Any:
    return T.DeiTImageProcessor(size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32})


CASES = [
    Case(
        "CLIPVisionModel",
        "clip",
        lambda: _scrambled(T.CLIPVisionModel(T.CLIPVisionConfig(**_vision())), 1),
        _clip_processor,
        1,
        32,
        _prefixed,
    ),
    Case(
        "CLIPVisionModelWithProjection",
        "clip",
        lambda: _scrambled(T.CLIPVisionModelWithProjection(T.CLIPVisionConfig(**_vision(projection_dim=16))), 2),
        _clip_processor,
        1,
        16,
    ),
    Case(
        "CLIPModel",
        "clip",
        lambda: _scrambled(
            T.CLIPModel(
                T.CLIPConfig(
                    text_config={**_text(), "vocab_size": 99, "bos_token_id": 0, "eos_token_id": 1},
                    vision_config=_vision(hidden_act="gelu"),
                    projection_dim=24,
                )
            ),
            3,
        ),
        _clip_processor,
        1,
        24,
    ),
    Case(
        "SiglipVisionModel",
        "siglip",
        lambda: _scrambled(T.SiglipVisionModel(T.SiglipVisionConfig(**_vision())), 4),
        _siglip_processor,
        0,
        32,
        _prefixed,
    ),
    Case(
        "SiglipModel",
        "siglip",
        lambda: _scrambled(
            T.SiglipModel(T.SiglipConfig(text_config={**_text(), "vocab_size": 99}, vision_config=_vision())), 5
        ),
        _siglip_processor,
        0,
        32,
    ),
    Case(
        "SiglipVisionModel-without-head",
        "siglip",
        lambda: _scrambled(T.SiglipVisionModel(T.SiglipVisionConfig(**_vision(vision_use_head=False))), 6),
        _siglip_processor,
        0,
        0,
    ),
    Case(
        "Dinov2Model",
        "dinov2",
        lambda: _scrambled(T.Dinov2Model(T.Dinov2Config(**_SHAPE, mlp_ratio=2, image_size=64)), 7),
        _bit_processor,
        1,
        32,
    ),
    Case(
        "Dinov2Model-SwiGLU",
        "dinov2",
        lambda: _scrambled(T.Dinov2Model(T.Dinov2Config(**_SHAPE, image_size=64, use_swiglu_ffn=True)), 8),
        _bit_processor,
        1,
        32,
        _packed_swiglu,
    ),
    Case(
        "Dinov2WithRegistersModel",
        "dinov2",
        lambda: _scrambled(
            T.Dinov2WithRegistersModel(
                T.Dinov2WithRegistersConfig(**_SHAPE, mlp_ratio=2, image_size=64, num_register_tokens=4)
            ),
            9,
        ),
        _bit_processor,
        5,
        32,
    ),
    Case(
        "DeiTModel",
        "deit",
        lambda: _scrambled(T.DeiTModel(T.DeiTConfig(**_vision())), 11),  # with its tanh pooler, unused
        _deit_processor,
        2,
        32,
    ),
    Case(
        "DeiTForImageClassificationWithTeacher",
        "deit",
        lambda: _scrambled(
            T.DeiTForImageClassificationWithTeacher(
                T.DeiTConfig(**_vision(), num_labels=5, id2label={i: f"class-{i}" for i in range(5)})
            ),
            10,
        ),
        _deit_processor,
        2,
        32,
    ),
]


def save(case: Case, path: Path, old_keys: bool = False) -> Any:
    """Save `case`'s model and processor to `path` (in 4.x key names with `old_keys`); returns the model."""
    model = case.build()
    model.save_pretrained(path)
    case.processor().save_pretrained(path)
    if old_keys:
        assert case.old_keys is not None
        save_file(case.old_keys(load_file(str(path / "model.safetensors"))), str(path / "model.safetensors"))
    return model


@dataclass
class Reference:
    """What transformers computes for a batch of pixels."""

    embedding: torch.Tensor | None  # the family's /v1/embeddings vector
    hidden_states: tuple[torch.Tensor, ...]  # transformers' hidden_states: 0 = the encoder's input
    last_hidden_state: torch.Tensor  # /v1/features?layer=final
    probs: torch.Tensor | None  # softmax of the logits, for classifiers


@torch.no_grad()
def reference(model: Any, pixels: torch.Tensor) -> Reference:
    """The family's outputs as its transformers classes define them (docs/API.md, Model families)."""
    if isinstance(model, T.CLIPModel | T.SiglipModel):
        tower = model.vision_model(pixel_values=pixels, output_hidden_states=True)
        features = model.get_image_features(pixel_values=pixels)
        embedding = features if isinstance(features, torch.Tensor) else features.pooler_output
        return Reference(embedding, tower.hidden_states, tower.last_hidden_state, None)
    out = model(pixel_values=pixels, output_hidden_states=True)
    if isinstance(model, T.DeiTForImageClassificationWithTeacher):
        last = model.deit.layernorm(out.hidden_states[-1])
        return Reference(last[:, 0], out.hidden_states, last, out.logits.softmax(-1))
    if isinstance(model, T.DeiTModel):  # its pooler_output is a tanh layer's, not the embedding
        return Reference(out.last_hidden_state[:, 0], out.hidden_states, out.last_hidden_state, None)
    if isinstance(model, T.CLIPVisionModelWithProjection):
        return Reference(out.image_embeds, out.hidden_states, out.last_hidden_state, None)
    return Reference(getattr(out, "pooler_output", None), out.hidden_states, out.last_hidden_state, None)


def clip_tokenizer(**config: Any) -> Any:
    """A CLIP tokenizer of a few hundred tokens, its BPE trained here on a handful of captions
    (transformers' CLIPTokenizer builds the rest: normalizer, pre-tokenizer, special tokens)."""
    from tokenizers import trainers

    base = T.CLIPTokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        end_of_word_suffix="</w>",
        initial_alphabet=[chr(c) for c in range(33, 127)],
    )
    captions = ["a photo of a cat", "a photo of a dog", "this is a photo of {}.", "a quick brown fox"] * 20
    base._tokenizer.train_from_iterator(captions, trainer=trainer)
    model = json.loads(base._tokenizer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in model["merges"]]
    return T.CLIPTokenizer(vocab=model["vocab"], merges=merges, **config)


def siglip_tokenizer(directory: Path) -> Any:
    """A SigLIP tokenizer of 40 pieces: a SentencePiece unigram model trained here on a handful of
    captions, with SigLIP's special ids (pad 0, </s> 1, <unk> 2), saved in `directory`."""
    import io

    import sentencepiece

    captions = ["a photo of a cat", "a photo of a dog", "this is a photo of a plane", "the quick brown fox jumps"]
    captions += ["over the lazy dog", "vision transformers embed images", "x y z"]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(captions * 40),
        model_writer=model,
        vocab_size=40,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        add_dummy_prefix=False,
        minloglevel=2,
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "spiece.model").write_bytes(model.getvalue())
    T.SiglipTokenizer(vocab_file=str(directory / "spiece.model")).save_pretrained(directory)
    return T.AutoTokenizer.from_pretrained(directory)


def siglip2_tokenizer(directory: Path) -> Any:
    """A SigLIP2 tokenizer (Gemma's: tokenizer.json, a byte-fallback BPE, `<eos>` added, padded on
    the left as transformers' GemmaTokenizer pads), built by transformers' own class from a BPE
    trained here, so that its file holds the pipeline that class defines; saved in `directory`."""
    from tokenizers import Tokenizer, models, trainers

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    captions = ["a photo of a cat", "a photo of a dog", "This is a photo of a plane.", "the quick brown fox"]
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"])
    bpe.train_from_iterator([c.replace(" ", "▁") for c in captions] * 30, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in model["merges"]]
    special = {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>"}
    tokenizer = T.GemmaTokenizer(
        vocab=model["vocab"], merges=merges, add_bos_token=False, add_eos_token=True, **special
    )
    tokenizer.save_pretrained(directory)
    return T.AutoTokenizer.from_pretrained(directory)


PAIRS = ("clip", "siglip", "siglip2")  # SigLIP2 at a fixed resolution: a SiglipModel with Gemma's tokenizer


def save_pair(family: str, directory: Path) -> Any:
    """A full CLIP, SigLIP or SigLIP2 checkpoint (both towers, scrambled, with a logit scale and
    bias that give scores of a few tenths), its image processor and its tokenizer, trained here,
    saved in `directory` as `save_pretrained` saves them; returns the model."""
    if family == "clip":
        tokenizer, processor = clip_tokenizer(), _clip_processor()
        special = {f"{k}_token_id": getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "pad")}
        text_config = {**_text(), "vocab_size": len(tokenizer), **special}
        model = T.CLIPModel(T.CLIPConfig(text_config=text_config, vision_config=_vision(), projection_dim=16))
    else:
        make = siglip_tokenizer if family == "siglip" else siglip2_tokenizer
        tokenizer, processor = make(directory), _siglip_processor()
        text_config = {**_text(), "vocab_size": len(tokenizer)}
        model = T.SiglipModel(T.SiglipConfig(text_config=text_config, vision_config=_vision()))
    model = _scrambled(model, 31)
    with torch.no_grad():  # scores of a few tenths, not SigLIP's initial sigmoid(-10)
        model.logit_scale.fill_(1.6)
        if family != "clip":
            model.logit_bias.fill_(0.2)
    for part in (model, processor, tokenizer):
        part.save_pretrained(directory)
    return model
