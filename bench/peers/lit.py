"""LitServe serving the same model, with its max_batch_size and batch_timeout set to vit-serve's.

python -m bench.peers.lit --port 8001 --model vit_small_patch16_224 --max-batch-size 32 --batch-timeout 0.002
"""

from __future__ import annotations

import argparse
import base64
from typing import Any

import litserve as ls
import torch

from model.config import preset
from model.preprocess import PreprocessConfig
from model.tensors import load_image, normalize
from model.vit import VisionTransformer

CFG = PreprocessConfig()


class ViTAPI(ls.LitAPI):
    def __init__(self, model_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name

    def setup(self, device: str) -> None:
        self.model = VisionTransformer(preset(self.model_name)).eval()

    def decode_request(self, request: dict) -> list[torch.Tensor]:
        size = self.model.cfg.image_size
        return [load_image(base64.b64decode(b), size, CFG) for b in request["images"]]

    def batch(self, inputs: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
        return inputs  # requests carry several images each: flattened in predict

    def predict(self, batch: list[list[torch.Tensor]]) -> list[list[int]]:
        counts = [len(images) for images in batch]
        with torch.inference_mode():
            pixels = normalize(torch.stack([i for images in batch for i in images]), CFG.mean, CFG.std)
            labels = self.model(pixels).logits.argmax(-1).tolist()
        out, start = [], 0
        for n in counts:
            out.append(labels[start : start + n])
            start += n
        return out

    def unbatch(self, output: list[list[int]]) -> list[list[int]]:
        return output

    def encode_response(self, output: list[int]) -> dict:
        return {"labels": output}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="vit_test_tiny")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout", type=float, default=0.002)
    args = parser.parse_args()
    api = ViTAPI(args.model, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu" if not torch.cuda.is_available() else "cuda", devices=1)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
