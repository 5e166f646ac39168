"""A full CLIP, SigLIP or SigLIP2 checkpoint served over real HTTP (uvicorn on 127.0.0.1): text
embeddings equal transformers' `get_text_features`, zero-shot scores equal its
zero-shot-image-classification pipeline, the `openai` client embeds texts unchanged, the label
cache encodes a label once and says so in /metrics, Weaviate's multi2vec-clip reads texts, and
bad texts get a clear 4xx (docs/API.md, Texts and zero-shot labels)."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import torch
import transformers as T

from tests.families import PAIRS, save_pair
from tests.images import encode, photo
from tests.service.servers import live_server, server_process, tiny_settings

TEXTS = ["a photo of a cat", "dog", "A Lazy DOG, jumping!", "the quick brown fox " * 40]  # the last is truncated
LABELS = ["cat", "dog", "plane", "a photo of a lazy dog!"]
IMAGE = photo()
PNG = {"content-type": "image/png"}


@pytest.fixture(scope="module", params=PAIRS)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    path: Path = tmp_path_factory.mktemp(request.param)
    model = save_pair(request.param, path)
    settings = tiny_settings(checkpoint=str(path), max_images_per_request=8, max_queue_size=8)
    with live_server(settings) as (url, _):
        yield request.param, path, model, url


def text_features(family: str, path: Path, model: Any, texts: list[str]) -> tuple[torch.Tensor, list[int]]:
    """transformers' text embeddings, tokenized as its zero-shot pipeline tokenizes (SigLIP: to 64)."""
    tokenizer = T.AutoTokenizer.from_pretrained(path)
    # (the test's CLIP tokenizer has no length of its own: the tower's 77 positions bound it)
    padding = {"padding": "max_length", "max_length": 64} if family != "clip" else {"padding": True, "max_length": 77}
    tokens = tokenizer(texts, truncation=True, return_tensors="pt", **padding)
    with torch.no_grad():
        out = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    return getattr(out, "pooler_output", out), tokens["attention_mask"].sum(1).tolist()


def post_texts(url: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/embeddings", json=body, timeout=30)


def test_text_embeddings_and_token_counts_are_transformers(served) -> None:
    family, path, model, url = served
    want, counts = text_features(family, path, model, TEXTS)
    r = post_texts(url, texts=TEXTS)
    assert r.status_code == 200, r.text
    body = r.json()
    got = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
    assert np.abs(got - want.numpy()).max() <= 1e-4
    assert body["usage"]["prompt_tokens"] == sum(counts) and max(counts) == (77 if family == "clip" else 64)
    unit = post_texts(url, texts=TEXTS[:1], normalize=True, encoding_format="base64").json()["data"][0]
    vector = np.frombuffer(base64.b64decode(unit["embedding"]), "<f4")
    assert np.allclose(vector, got[0] / np.linalg.norm(got[0]), atol=1e-6)


def test_the_openai_client_embeds_texts_and_images_in_one_call(served) -> None:
    family, path, model, url = served
    image = "data:image/png;base64," + base64.b64encode(encode(IMAGE)).decode()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-local", max_retries=0)
    model_id = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
    answer = client.embeddings.create(input=["a photo of a cat", image, "dog"], model=model_id)
    want, counts = text_features(family, path, model, ["a photo of a cat", "dog"])
    got = np.array([answer.data[i].embedding for i in (0, 2)], dtype=np.float32)
    assert np.abs(got - want.numpy()).max() <= 1e-4
    native = httpx.post(f"{url}/v1/embeddings", content=encode(IMAGE), headers={"content-type": "image/png"})
    assert np.allclose(answer.data[1].embedding, native.json()["data"][0]["embedding"], atol=1e-6)
    image_tokens = httpx.get(f"{url}/v1/models").json()["data"][0]["prefix_tokens"] + 16  # 32×32 in 8×8 patches
    assert answer.usage.prompt_tokens == sum(counts) + image_tokens


def pipeline_scores(path: Path, labels: list[str], template: str = "This is a photo of {}.") -> dict[str, float]:
    pipeline = T.pipeline("zero-shot-image-classification", model=str(path))
    answers = pipeline(IMAGE, candidate_labels=labels, hypothesis_template=template)
    return {answer["label"]: answer["score"] for answer in answers}


def test_zero_shot_scores_are_the_pipelines_with_labels_in_the_query_or_the_body(served) -> None:
    _, path, _, url = served
    want = pipeline_scores(path, LABELS)
    headers = {"content-type": "image/png"}
    by_query = httpx.post(f"{url}/v1/classify", params={"labels": LABELS}, content=encode(IMAGE), headers=headers)
    assert by_query.status_code == 200, by_query.text
    image = base64.b64encode(encode(IMAGE)).decode()
    by_body = httpx.post(f"{url}/v1/classify", json={"images": [image, image], "labels": LABELS, "top_k": 2})
    answers = [by_query.json()["results"][0], *by_body.json()["results"]]
    for predictions in (answer["predictions"] for answer in answers):
        assert [p["label"] for p in predictions] == sorted(want, key=want.__getitem__, reverse=True)[: len(predictions)]
        for p in predictions:
            assert p["score"] == pytest.approx(want[p["label"]], abs=1e-5) and LABELS[p["index"]] == p["label"]
    assert len(by_query.json()["results"][0]["predictions"]) == len(LABELS)  # every label unless top_k
    assert [len(r["predictions"]) for r in by_body.json()["results"]] == [2, 2]
    template = "a blurry picture of {}, maybe"
    want = pipeline_scores(path, LABELS[:2], template)
    r = httpx.post(f"{url}/v1/classify", json={"images": [image], "labels": LABELS[:2], "template": template})
    for p in r.json()["results"][0]["predictions"]:
        assert p["score"] == pytest.approx(want[p["label"]], abs=1e-5)


def cache_counts(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    found = re.findall(r'^vit_label_cache_lookups_total\{result="(\w+)"\} (\S+)$', text, re.MULTILINE)
    ratio = re.search(r"^vit_label_cache_hit_ratio (\S+)$", text, re.MULTILINE)
    return {result: float(value) for result, value in found} | {"ratio": float(ratio[1]) if ratio else -1.0}


def test_labels_are_encoded_once_and_the_hit_rate_is_in_metrics(served) -> None:
    _, _, _, url = served
    labels = ["a cached label", "another cached label"]
    image = base64.b64encode(encode(IMAGE)).decode()
    before = cache_counts(url)
    first = httpx.post(f"{url}/v1/classify", json={"images": [image], "labels": labels}).json()
    middle = cache_counts(url)
    second = httpx.post(f"{url}/v1/classify", json={"images": [image], "labels": labels}).json()
    after = cache_counts(url)
    assert middle.get("miss", 0) - before.get("miss", 0) == 2 and after.get("hit", 0) - middle.get("hit", 0) == 2
    assert after["miss"] == middle["miss"] and first == second
    assert after["ratio"] == pytest.approx(after["hit"] / (after["hit"] + after["miss"]))


def test_weaviate_multi2vec_clip_vectorizes_texts_and_images(served) -> None:
    family, path, model, url = served
    image = base64.b64encode(encode(IMAGE)).decode()
    r = httpx.post(f"{url}/weaviate/vectorize", json={"texts": ["a photo of a cat", "dog"], "images": [image]})
    assert r.status_code == 200, r.text
    body = r.json()
    want, _ = text_features(family, path, model, ["a photo of a cat", "dog"])
    want = torch.nn.functional.normalize(want, dim=-1).numpy()
    assert len(body["textVectors"]) == 2 and len(body["imageVectors"]) == 1
    assert np.abs(np.array(body["textVectors"]) - want).max() <= 1e-4
    for vector in [*body["textVectors"], *body["imageVectors"]]:
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)  # as the reference container returns them
    only_texts = httpx.post(f"{url}/weaviate/vectorize", json={"texts": ["dog"], "images": None}).json()
    assert only_texts["imageVectors"] == [] and np.allclose(only_texts["textVectors"][0], want[1], atol=1e-4)


def test_models_reports_the_text_tower(served) -> None:
    family, _, _, url = served
    text = httpx.get(f"{url}/v1/models").json()["data"][0]["text"]
    assert text == {
        "tokenizer": "spiece.model" if family == "siglip" else "tokenizer.json",
        "max_tokens": 77 if family == "clip" else 64,
        "padding": "longest" if family == "clip" else "max_length",
        "dim": 16 if family == "clip" else 32,
        "similarity": "softmax" if family == "clip" else "sigmoid",
    }


BAD = [
    ({"texts": [""]}, 422, r"texts\[0\] is empty"),
    ({"texts": ["ok", 3]}, 400, "must be a list of strings"),
    ({"texts": ["x" * 16_385]}, 413, r"texts\[0\] is 16385 characters; the limit is 16384"),
    ({"texts": ["a"] * 9}, 413, "9 inputs in one request; the limit is 8"),
    ({"texts": []}, 400, "holds no image"),
    ({"images": ["aGk="], "texts": ["a"]}, 422, "texts"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD, ids=[m for *_, m in BAD])
def test_bad_texts_get_a_clear_4xx(served, body: dict, status: int, message: str) -> None:
    r = post_texts(served[3], **body)
    assert r.status_code == status and re.search(message, r.json()["error"]["message"]), r.text


def test_bad_labels_get_a_clear_4xx_before_any_image_is_decoded(served) -> None:
    url = served[3]
    image = base64.b64encode(encode(IMAGE)).decode()
    cases = [
        ({"labels": ["cat"] * 10_000}, 413, "10000 labels; the limit is 1000"),
        ({"labels": []}, 422, "labels"),
        ({"labels": ["cat", ""]}, 422, "labels"),
        ({"labels": ["cat"], "template": "no placeholder"}, 422, "template"),
        ({"labels": ["cat"], "template": "{} and {}"}, 422, "template"),
        ({"labels": ["cat"], "template": "{0.__class__}"}, 422, "template"),
    ]
    for fields, status, message in cases:
        r = httpx.post(f"{url}/v1/classify", json={"images": [image], **fields})
        assert r.status_code == status and message in r.json()["error"]["message"], (fields, r.text)


@pytest.fixture(scope="module")
def vision_only() -> Iterator[str]:
    with live_server(tiny_settings()) as (url, _):
        yield url


def test_a_model_without_a_text_tower_says_so(vision_only: str) -> None:
    image = base64.b64encode(encode(IMAGE)).decode()
    r = post_texts(vision_only, texts=["a cat"])
    assert r.status_code == 422 and "no text tower" in r.json()["error"]["message"]
    r = post_texts(vision_only, input=["a cat"], model="vit_test_tiny")
    assert r.status_code == 422 and "no text tower" in r.json()["error"]["message"]
    r = httpx.post(f"{vision_only}/v1/classify", json={"images": [image], "labels": ["cat"]})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("labels:")
    r = httpx.post(f"{vision_only}/weaviate/vectorize", json={"texts": ["a cat"], "images": []})
    assert r.status_code == 422 and "no text tower" in r.json()["error"]
    assert httpx.get(f"{vision_only}/v1/models").json()["data"][0]["text"] is None


@pytest.mark.e2e
def test_a_server_process_embeds_texts_and_scores_labels(tmp_path: Path) -> None:
    """`python -m service` (and, in the VIT_WORKERS=2 pass, its front-ends and engine process,
    whose wire carries the texts' token ids) serves the text tower with the same parity."""
    model = save_pair("siglip", tmp_path)
    want, _ = text_features("siglip", tmp_path, model, TEXTS)
    scores = pipeline_scores(tmp_path, LABELS)
    with server_process(VIT_CHECKPOINT=str(tmp_path), VIT_DTYPE="float32") as server:
        body = post_texts(server.url, texts=TEXTS).json()
        got = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
        assert np.abs(got - want.numpy()).max() <= 1e-4
        r = httpx.post(
            f"{server.url}/v1/classify",
            params={"labels": LABELS},
            content=encode(IMAGE),
            headers={"content-type": "image/png"},
        )
        for p in r.json()["results"][0]["predictions"]:
            assert p["score"] == pytest.approx(scores[p["label"]], abs=1e-5)


def test_more_labels_than_a_request_may_hold_inputs_are_embedded_in_turns(served) -> None:
    """20 labels not yet cached, where a request holds at most 8 inputs and the queue 8: embedded 8
    at a time (all at once, the queue would refuse them)."""
    _, path, _, url = served
    labels = [f"a {word} number {i}" for i, word in enumerate(["red", "big", "odd", "new"] * 5)]
    texts_before = texts_embedded(url)
    r = httpx.post(f"{url}/v1/classify", params={"labels": labels}, content=encode(IMAGE), headers=PNG)
    assert r.status_code == 200, r.text
    want = pipeline_scores(path, labels)
    for p in r.json()["results"][0]["predictions"]:
        assert p["score"] == pytest.approx(want[p["label"]], abs=1e-5)
    assert texts_embedded(url) - texts_before == 20


def texts_embedded(url: str) -> float:
    found = re.search(r'^vit_texts_total\{endpoint="/v1/classify"\} (\S+)$', httpx.get(f"{url}/metrics").text, re.M)
    return float(found[1]) if found else 0.0
