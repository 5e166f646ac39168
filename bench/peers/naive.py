"""What users write first: FastAPI, one forward pass per request, no batching across requests.

BENCH_MODEL=vit_small_patch16_224 uvicorn bench.peers.naive:app
"""

from __future__ import annotations

import base64
import os
import threading

import torch
from fastapi import FastAPI, Request

from model.config import preset
from model.preprocess import PreprocessConfig
from model.tensors import load_image, normalize
from model.vit import VisionTransformer

CFG = PreprocessConfig()
model = VisionTransformer(preset(os.environ.get("BENCH_MODEL", "vit_test_tiny"))).eval()
lock = threading.Lock()
app = FastAPI()


@app.post("/predict")
def predict(body: dict) -> dict:  # a sync route: FastAPI runs it on its thread pool
    images = [load_image(base64.b64decode(b), model.cfg.image_size, CFG) for b in body["images"]]
    with lock, torch.inference_mode():
        out = model(normalize(torch.stack(images), CFG.mean, CFG.std))
    return {"labels": out.logits.argmax(-1).tolist()}


@app.get("/health")
async def health(request: Request) -> dict:
    return {"status": "ok"}
