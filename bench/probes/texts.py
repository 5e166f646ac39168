"""`python -m bench.probes.texts`: a CLIP pair's text embeddings and zero-shot classification,
through vit-serve against transformers on the same machine and weights.

One `CLIPModel` with transformers' default shape (ViT-B/32 image tower, a 12-block text tower of
width 512) and random weights, with a CLIP BPE tokenizer trained here on the benchmark's captions
(nothing is downloaded), is saved once. Each round, interleaved:

- text embeddings/s: vit-serve `/v1/embeddings` with `{"texts": [32 captions]}` a request at
  concurrency 4 (bench.load's closed loop), against transformers' `get_text_features` on the same
  32 captions a call, in this process (the bare model: no HTTP, no batching across callers);
- zero-shot requests/s: vit-serve `/v1/classify?labels=…` (one 224×224 JPEG, 10 labels, the label
  cache warm after the warm-up) at concurrency 4, against transformers' zero-shot-image-classification
  pipeline on the same JPEG and labels, one call at a time (it encodes the labels at every call).

Both sides run float32 (`VIT_DTYPE=float32`), on every core. Printed: each figure per round, the
ratios and their medians, the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from bench.harness import machine, vit_serve
from bench.load import closed_loop
from bench.workload import jpeg

NOUNS = ["cat", "dog", "plane", "car", "bird", "horse", "ship", "truck", "frog", "deer"]
ADJECTIVES = ["small", "large", "red", "blue", "sleepy", "fast", "old", "shiny"]
CAPTIONS = [f"a photo of a {a} {n} on a sunny day" for a in ADJECTIVES for n in NOUNS][:32]


def save_pair(path: Path, small: bool) -> None:
    """A CLIPModel of transformers' default shape (`small`: a tiny one, for a smoke run) with random
    weights, its processor and a CLIP tokenizer whose BPE is trained here on the captions."""
    import transformers as T
    from tokenizers import trainers

    base: Any = T.CLIPTokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        end_of_word_suffix="</w>",
        initial_alphabet=[chr(c) for c in range(33, 127)],
    )
    base._tokenizer.train_from_iterator([*CAPTIONS, *NOUNS, "this is a photo of ."] * 20, trainer=trainer)
    model = json.loads(base._tokenizer.to_str())["model"]
    merges: Any = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in model["merges"]]
    tokenizer = T.CLIPTokenizer(vocab=model["vocab"], merges=merges, model_max_length=77)
    special = {f"{k}_token_id": getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "pad")}
    torch.manual_seed(0)
    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {"vocab_size": len(tokenizer), **special, **(tiny if small else {})}
    vision = {**tiny, "patch_size": 32} if small else {}
    config = T.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16 if small else 512)
    for part in (T.CLIPModel(config).eval(), T.CLIPImageProcessor(), tokenizer):
        part.save_pretrained(path)


def rate(call: Callable[[], Any], per_call: int, duration_s: float, warmup_s: float) -> float:
    """Items per second of `call` (each `per_call` items), repeated for `duration_s` after a warm-up."""
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        call()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < duration_s:
        call()
        calls += 1
    return calls * per_call / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.probes.texts", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--small", action="store_true", help="a tiny pair: a smoke run, no figures")
    args = parser.parse_args(argv)
    import transformers as T

    print(f"{datetime.date.today()}, {machine()}, torch {torch.__version__}, transformers {T.__version__}")
    photo = jpeg("224", 0)
    labels = NOUNS
    figures: dict[str, list[float]] = {
        name: [] for name in ("serve texts", "hf texts", "serve zero-shot", "hf zero-shot")
    }
    with tempfile.TemporaryDirectory() as tmp:
        save_pair(Path(tmp), args.small)
        model = T.CLIPModel.from_pretrained(tmp).eval()
        tokenizer = T.AutoTokenizer.from_pretrained(tmp)
        pipeline = T.pipeline("zero-shot-image-classification", model=tmp, dtype=torch.float32)
        image = Image.open(io.BytesIO(photo)).convert("RGB")
        tokens = tokenizer(CAPTIONS, padding=True, return_tensors="pt")

        def hf_texts() -> None:
            with torch.inference_mode():
                model.get_text_features(**tokens)

        env = {"VIT_CHECKPOINT": tmp, "VIT_DTYPE": "float32", "VIT_DEVICE": "cpu", "VIT_LOG_LEVEL": "warning"}
        query = "&".join(f"labels={label}" for label in labels)
        texts_body = json.dumps({"texts": CAPTIONS}).encode()
        for round_ in range(args.rounds):
            with vit_serve(env) as server:
                load = closed_loop(
                    f"{server.url}/v1/embeddings",
                    texts_body,
                    len(CAPTIONS),
                    args.concurrency,
                    warmup_s=args.warmup,
                    duration_s=args.duration,
                )
                figures["serve texts"].append(load.images_per_s)
                load = closed_loop(
                    f"{server.url}/v1/classify?{query}",
                    photo,
                    1,
                    args.concurrency,
                    warmup_s=args.warmup,
                    duration_s=args.duration,
                    content_type="image/jpeg",
                )
                figures["serve zero-shot"].append(load.images_per_s)
            figures["hf texts"].append(rate(hf_texts, len(CAPTIONS), args.duration, args.warmup))
            figures["hf zero-shot"].append(
                rate(lambda: pipeline(image, candidate_labels=labels), 1, args.duration, args.warmup)
            )
            shown = ", ".join(f"{name} {values[-1]:.1f}/s" for name, values in figures.items())
            print(f"round {round_ + 1}: {shown}")
    for kind in ("texts", "zero-shot"):
        ratios = [s / h for s, h in zip(figures[f"serve {kind}"], figures[f"hf {kind}"], strict=True)]
        print(
            f"{kind}: vit-serve ÷ transformers per round {', '.join(f'{r:.2f}' for r in ratios)};"
            f" median {statistics.median(ratios):.2f}"
        )


if __name__ == "__main__":
    main()
