"""`ModelCard`: what the HTTP side knows of the served model (its id, shapes, labels,
preprocessing, device and dtype, and its text tower's `TextCard`), and nothing that computes.

Routes validate requests and shape answers from the card alone, so they run the same beside an
in-process engine and in a front-end process (VIT_WORKERS > 1) that was sent the card by the
engine process once, as JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from model.config import ViTConfig
from model.preprocess import PreprocessConfig


@dataclass(frozen=True)
class TextCard:
    """The text tower of a CLIP or SigLIP pair, as routes know it: how its front-end tokenizes
    (model/tokenizer.py reads the same checkpoint directory), and how the pair scores."""

    tokenizer: str  # the file it was read from: "tokenizer.json" or "spiece.model"
    max_tokens: int  # a text's tokens are truncated to this, special tokens included
    pad_to: int | None  # SigLIP reads every text padded to its full length; CLIP to the batch's longest
    dim: int  # the text embedding's size: the image embedding's
    similarity: str  # "softmax" over labels (CLIP) or "sigmoid" of each (SigLIP)
    scale: float  # exp(logit_scale)
    bias: float  # SigLIP's logit_bias; 0 for CLIP


@dataclass(frozen=True)
class ModelCard:
    model_id: str
    cfg: ViTConfig
    labels: tuple[str, ...]
    preprocess: PreprocessConfig
    device: str  # "cpu", "cuda:0"
    dtype: str  # "float32", "bfloat16", …: as settings, metrics and /v1/models spell it
    dtype_reason: str  # why this dtype (engine/precision.py)
    checkpoint_format: str  # "native", "huggingface", "timm", "npz", "builtin", "random"
    checkpoint_path: str | None
    checkpoint_sha256: str | None
    compiled_buckets: tuple[int, ...] = ()  # the batch sizes compiled at warm-up; () uncompiled
    text: TextCard | None = None  # the pair's text tower, where the checkpoint has one (and its tokenizer)

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @property
    def embedding_meaning(self) -> str:
        """What /v1/embeddings returns for this model, in transformers' terms."""
        cfg = self.cfg
        if cfg.pool == "none":
            return "none: this tower has no pooling head; read /v1/features"
        if cfg.pool == "map":
            return "the attention-pool head's output (pooler_output)"
        if cfg.proj_dim:
            return "the projected, final-normed class token (image_embeds), before L2 normalisation"
        return "the final-normed class token (pooler_output; y = LN(z_L⁰))"

    @property
    def device_type(self) -> str:
        """ "cpu" or "cuda", as `Settings.resolve` takes it."""
        return self.device.partition(":")[0]

    def to_json(self) -> str:
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        text = asdict(self.text) if self.text is not None else None
        return json.dumps(fields | {"cfg": self.cfg.to_dict(), "preprocess": self.preprocess.to_dict(), "text": text})

    @classmethod
    def from_json(cls, message: str) -> ModelCard:
        fields = json.loads(message)
        cfg, preprocess = ViTConfig.from_dict(fields.pop("cfg")), PreprocessConfig.from_dict(fields.pop("preprocess"))
        tuples = {"labels": tuple(fields["labels"]), "compiled_buckets": tuple(fields["compiled_buckets"])}
        text = TextCard(**fields.pop("text")) if fields.get("text") is not None else None
        return cls(cfg=cfg, preprocess=preprocess, **fields | tuples | {"text": text})
