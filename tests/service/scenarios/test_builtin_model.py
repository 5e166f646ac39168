"""The built-in `vit-mnist`, served by default, measured over HTTP on the 1,000 held-out digits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from model.train import load_digits, split_indices
from service.settings import Settings
from tests.images import encode
from tests.service.servers import live_server

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "digits"
PER_REQUEST = 20


def test_held_out_accuracy_over_http() -> None:
    images, labels = load_digits()
    _, held_out = split_indices(len(images), validate=False)
    assert len(held_out) == 1000 and np.bincount(labels[held_out]).tolist() == [100] * 10
    pngs = [encode(Image.fromarray(images[i], mode="L"), "PNG") for i in held_out]

    with live_server(Settings(_env_file=None)) as (url, _):  # no VIT_CHECKPOINT: the built-in model

        async def classify_all() -> list[int]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                model = (await client.get("/v1/models")).json()["data"][0]
                assert model["id"] == "vit-mnist" and model["checkpoint"]["format"] == "builtin"
                limit = asyncio.Semaphore(4)

                async def one(chunk: list[bytes]) -> list[int]:
                    async with limit:
                        files = [("image", (f"{i}.png", d, "image/png")) for i, d in enumerate(chunk)]
                        r = await client.post("/v1/classify?top_k=1", files=files)
                        assert r.status_code == 200, r.text
                        return [int(res["predictions"][0]["label"]) for res in r.json()["results"]]

                chunks = [pngs[i : i + PER_REQUEST] for i in range(0, len(pngs), PER_REQUEST)]
                return [p for part in await asyncio.gather(*(one(c) for c in chunks)) for p in part]

        predicted = asyncio.run(classify_all())
    accuracy = float(np.mean(np.array(predicted) == labels[held_out]))
    print(f"held-out accuracy over HTTP: {accuracy:.4f}")
    assert accuracy >= 0.97


def test_examples_and_a_larger_scan_are_read_correctly() -> None:
    examples = sorted(EXAMPLES.glob("*.png"))
    assert len(examples) >= 5
    with live_server(Settings(_env_file=None)) as (url, _), httpx.Client(base_url=url, timeout=30) as client:
        for path in examples:
            data = path.read_bytes()
            digit = path.stem.split("-")[1]  # digit-7-1234.png
            r = client.post("/v1/classify", content=data, headers={"content-type": "image/png"})
            assert r.json()["results"][0]["predictions"][0]["label"] == digit, path.name
            scan = Image.open(path).resize((280, 280), Image.Resampling.BICUBIC).convert("RGB")
            r = client.post(
                "/v1/classify", content=encode(scan, "JPEG", quality=90), headers={"content-type": "image/jpeg"}
            )
            assert r.json()["results"][0]["predictions"][0]["label"] == digit, f"{path.name} at 280×280"
