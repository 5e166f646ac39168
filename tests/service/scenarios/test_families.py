"""Every family of transformers checkpoint served over real HTTP (uvicorn on 127.0.0.1) gives what
transformers gives on the same weights, through its own image processor: embeddings, hidden
states of any layer (-2 for LLaVA, `final` for PaliGemma-style code), DeiT's classification,
and the facts /v1/models reports (docs/API.md, Model families)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.families import CASES, Case, reference, save
from tests.images import encode, photo
from tests.service.servers import live_server, server_process, tiny_settings

SERVED = photo().crop((200, 60, 232, 92))  # 32×32: the served size of every case
OTHER = photo().resize((57, 41))  # another aspect ratio, through the processor's resize and crop


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    case: Case = request.param
    path: Path = tmp_path_factory.mktemp(case.name)
    model = save(case, path)
    with live_server(tiny_settings(checkpoint=str(path))) as (url, _):
        yield case, model, url


def expected(case: Case, model, image: Image.Image):
    pixels = case.processor()(images=image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)
    return reference(model, pixels)


def features(url: str, image: Image.Image, **query) -> np.ndarray:
    r = httpx.post(f"{url}/v1/features", params=query, content=encode(image), headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    item = r.json()["data"][0]
    return np.frombuffer(base64.b64decode(item["features"]), "<f4").reshape(item["shape"])


def close(got: np.ndarray, want: torch.Tensor, atol: float = 1e-4) -> bool:
    return bool(np.abs(got - want.numpy()).max() <= atol)


def test_models_reports_the_family(served) -> None:
    case, _, url = served
    info = httpx.get(f"{url}/v1/models").json()["data"][0]
    assert (info["family"], info["image_size"], info["prefix_tokens"], info["embedding_dim"]) == (
        case.family,
        32,
        case.prefix_tokens,
        case.embedding_dim,
    )
    assert info["hidden_size"] == 32 and info["embedding"]


@pytest.mark.parametrize("image", [SERVED, OTHER], ids=["served-size", "other-aspect-ratio"])
def test_features_match_transformers_at_every_named_layer(served, image: Image.Image) -> None:
    case, model, url = served
    want = expected(case, model, image)
    assert close(features(url, image, layer=-2), want.hidden_states[-2][0])
    assert close(features(url, image, layer=0), want.hidden_states[0][0])
    assert close(features(url, image, layer="final"), want.last_hidden_state[0])
    patches = features(url, image, layer=-1, tokens="patch")
    assert close(patches, want.hidden_states[-1][0, case.prefix_tokens :])
    assert patches.shape == (16, 32)


@pytest.mark.parametrize("image", [SERVED, OTHER], ids=["served-size", "other-aspect-ratio"])
def test_embeddings_match_transformers(served, image: Image.Image) -> None:
    case, model, url = served
    r = httpx.post(f"{url}/v1/embeddings", content=encode(image), headers={"content-type": "image/png"})
    if not case.embedding_dim:
        assert r.status_code == 422 and "/v1/features" in r.json()["error"]["message"]
        return
    got = np.array(r.json()["data"][0]["embedding"], dtype=np.float32)
    want = expected(case, model, image).embedding[0]
    assert close(got, want)
    assert float(got @ want.numpy()) / (np.linalg.norm(got) * float(want.norm())) >= 0.999


def test_openai_usage_counts_every_token_the_encoder_read(served) -> None:
    case, _, url = served
    image = "data:image/png;base64," + base64.b64encode(encode(SERVED)).decode()
    model_id = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
    r = httpx.post(f"{url}/v1/embeddings", json={"model": model_id, "input": [image, image]})
    if case.embedding_dim:
        assert r.json()["usage"]["prompt_tokens"] == 2 * (16 + case.prefix_tokens)
    else:
        assert r.status_code == 422


def test_only_deit_classifies_with_the_mean_of_its_two_heads(served) -> None:
    case, model, url = served
    r = httpx.post(f"{url}/v1/classify?top_k=5", content=encode(OTHER), headers={"content-type": "image/png"})
    if not case.name.startswith("DeiTForImageClassification"):
        assert r.status_code == 422 and "no classification head" in r.json()["error"]["message"]
        return
    want = expected(case, model, OTHER).probs[0]
    got = torch.zeros(5)
    for p in r.json()["results"][0]["predictions"]:
        got[p["index"]] = p["score"]
        assert p["label"] == f"class-{p['index']}"
    assert (got - want).abs().max() <= 1e-5


def test_v2_lists_the_outputs_the_model_has(served) -> None:
    case, _, url = served
    model_id = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
    outputs = [o["name"] for o in httpx.get(f"{url}/v2/models/{model_id}").json()["outputs"]]
    classes = case.name.startswith("DeiTForImageClassification")
    assert outputs == ["probabilities"] * classes + ["embedding"] * bool(case.embedding_dim)
    pixels = {"name": "pixels", "datatype": "UINT8", "shape": [1, 3, 32, 32], "data": [0] * 3072}
    r = httpx.post(f"{url}/v2/models/{model_id}/infer", json={"inputs": [pixels]})
    assert r.status_code == (200 if outputs else 422)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "name", ["CLIPVisionModelWithProjection", "SiglipVisionModel-without-head", "Dinov2WithRegistersModel"]
)
def test_a_server_process_serves_the_family(name: str, tmp_path: Path) -> None:
    """`python -m service` (and, in the VIT_WORKERS=2 pass, its front-ends and engine process,
    whose shared-memory results hold an embedding narrower than D, or none, and prefix tokens)."""
    case = next(c for c in CASES if c.name == name)
    model = save(case, tmp_path)
    want = expected(case, model, OTHER)
    with server_process(VIT_CHECKPOINT=str(tmp_path), VIT_DTYPE="float32") as server:
        assert close(features(server.url, OTHER, layer="final"), want.last_hidden_state[0])
        assert close(
            features(server.url, OTHER, layer=1, tokens="patch"), want.hidden_states[1][0, case.prefix_tokens :]
        )
        r = httpx.post(f"{server.url}/v1/embeddings", content=encode(OTHER), headers={"content-type": "image/png"})
        if case.embedding_dim:
            assert close(np.array(r.json()["data"][0]["embedding"], dtype=np.float32), want.embedding[0])
        else:
            assert r.status_code == 422
