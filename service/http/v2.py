"""Open Inference Protocol v2 (KServe, Triton, Seldon): health, metadata, and inference through
the same batcher as /v1, so those clients work unchanged; every path also with /versions/1.

One input tensor per request. Metadata lists the one a generic client sends, `image` (BYTES:
encoded image files, as base64 strings or data URLs in JSON, raw in binary), and under its
`parameters.alternatives` the two that may replace it: `pixels` (UINT8 [B, 3, S, S]: already
resized pixels, normalised here) and `pixel_values` (FP32 [B, 3, S, S]: already normalised).
Outputs `probabilities` (FP32 [B, classes], when the model has a head) and `embedding` (FP32
[B, D], y = LN(z_L⁰)). Errors are the protocol's `{"error": message}` (service/http/
error_handlers.py). Triton's binary tensor data extension is supported both ways, as
`tritonclient` uses it by default. docs/API.md says what the specification leaves open.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from service import __version__, schemas
from service.engine import ModelCard
from service.errors import InvalidParameter, InvalidRequest, NotFound, UnsupportedMediaType
from service.http.access import SECURED, admit, error_responses, require_model, state_of
from service.http.inputs import (
    check_image_count,
    client_gone,
    decode_base64,
    load_model,
    parse_off_loop,
    peer,
    read_body,
)
from service.http.params import deadline_of, openapi_parameters, parse_count
from service.pipeline import Serving, compute

INPUTS = {"BYTES": "image", "UINT8": "pixels", "FP32": "pixel_values"}  # the first is the one metadata lists
VERSION = "1"  # one model, one version: every path is served with and without /versions/1

router = APIRouter(
    prefix="/v2",
    tags=["Open Inference Protocol v2"],
    responses=error_responses(schemas.V2Error, (400, 401, 404, 408, 413, 415, 422, 500, 503, 504)),
)


_STRICT = ConfigDict(strict=True)  # shapes are JSON integers, flags JSON booleans: see service/http/params.py


class InferInput(BaseModel):
    model_config = _STRICT
    name: str
    shape: list[int] = Field(max_length=8)  # lists are bounded where pydantic stops at the bound
    datatype: Literal["BYTES", "UINT8", "FP32"]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None  # absent when the tensor is sent as binary data


class RequestedOutput(BaseModel):
    model_config = _STRICT
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput] = Field(max_length=16)
    outputs: list[RequestedOutput] | None = Field(None, max_length=8)


@router.get("")
@router.get("/", include_in_schema=False)  # the specification's own spelling of the path
async def server_metadata() -> dict[str, Any]:
    return {"name": "vit-serve", "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get("/health/live")
async def live() -> dict[str, bool]:
    """The process answers HTTP: like /healthz."""
    return {"live": True}


@router.get("/health/ready")
async def ready(request: Request) -> JSONResponse:
    """The model is loaded, warmed up and its batch loop runs: like /readyz."""
    is_ready = state_of(request).readiness == "ready"
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@router.get("/models/{name}/ready")
async def model_ready(name: str, request: Request) -> JSONResponse:
    """As /v2/health/ready, for the served model, with its name."""
    state = state_of(request)
    if state.card is not None:
        require_model(state.card, name)
    is_ready = state.readiness == "ready"
    return JSONResponse({"name": name, "ready": is_ready}, status_code=200 if is_ready else 503)


@router.get("/models/{name}/versions/{version}/ready")
async def model_version_ready(name: str, version: str, request: Request) -> JSONResponse:
    require_version(name, version)
    return await model_ready(name, request)


@router.get("/models/{name}", openapi_extra=SECURED)
async def model_metadata(name: str, request: Request) -> dict[str, Any]:
    """What a client must send (`inputs`: one image tensor; its alternatives in its `parameters`)
    and what comes back."""
    async with admit(request) as serving:
        card = serving.card
    require_model(card, name)
    size = card.image_size
    tensors = [
        {"name": input_name, "datatype": datatype, "shape": [-1] if datatype == "BYTES" else [-1, 3, size, size]}
        for datatype, input_name in INPUTS.items()
    ]
    image, *alternatives = tensors
    return {
        "name": card.model_id,
        "versions": [VERSION],
        "platform": "pytorch",
        "inputs": [image | {"parameters": {"alternatives": alternatives}}],
        "outputs": _outputs(card),
    }


@router.get("/models/{name}/versions/{version}", openapi_extra=SECURED)
async def model_version_metadata(name: str, version: str, request: Request) -> dict[str, Any]:
    require_version(name, version)
    return await model_metadata(name, request)


def require_version(name: str, version: str) -> None:
    """404 for a version other than the one served (the model's name is checked as unversioned)."""
    if version != VERSION:
        raise NotFound(f"model {name[:100]!r} has no version {version[:100]!r}; its versions: [{VERSION!r}]")


def _outputs(card: ModelCard) -> list[dict[str, Any]]:
    """The model's output tensors: class probabilities when it has a head, and the embedding
    when it has one (a SigLIP tower without its attention pool has neither)."""
    cfg = card.cfg
    outputs = [{"name": "embedding", "datatype": "FP32", "shape": [-1, cfg.embedding_dim]}] if cfg.embedding_dim else []
    if cfg.num_classes:
        outputs.insert(0, {"name": "probabilities", "datatype": "FP32", "shape": [-1, cfg.num_classes]})
    return outputs


@router.post("/models/{name}/infer", openapi_extra={"parameters": openapi_parameters(None), **SECURED})
async def infer(name: str, request: Request) -> Response:
    """Probabilities and embeddings of a batch of images, computed in the shared batches."""
    async with admit(request) as serving:
        return await _infer(name, request, serving)


@router.post(
    "/models/{name}/versions/{version}/infer", openapi_extra={"parameters": openapi_parameters(None), **SECURED}
)
async def infer_version(name: str, version: str, request: Request) -> Response:
    require_version(name, version)
    return await infer(name, request)


async def _infer(name: str, request: Request, serving: Serving) -> Response:
    card = serving.card
    require_model(card, name)
    deadline = deadline_of(request.headers, serving.settings)
    body, binary = await _request(request, serving, deadline)
    if len(body.inputs) != 1:
        raise InvalidRequest(f"expected one input tensor (image, pixels or pixel_values), got {len(body.inputs)}")
    tensor = body.inputs[0]
    available = [output["name"] for output in _outputs(card)]
    if not available:
        raise InvalidParameter("this model has no pooled output (no head, no embedding): use /v1/features")
    requested = body.outputs or [RequestedOutput(name=n) for n in available]
    names = [o.name for o in requested]
    if unknown := [n for n in names if n not in available]:
        raise InvalidRequest(f"unknown output {unknown[0][:100]!r}; this model has {available}")
    if len(set(names)) < len(names):
        raise InvalidRequest("an output is requested more than once")
    all_binary = _flag(body.parameters, "binary_data_output")
    images = _images(serving, tensor, _input_bytes(tensor, binary))
    results = await compute(
        serving, "/v2/models/{name}/infer", images, deadline, None, client_gone(request), peer(request)
    )
    outputs, chunks = [], []
    for output in requested:
        rows = [r.probs if output.name == "probabilities" else r.embedding for r in results]
        stacked = np.stack(rows).astype("<f4")  # type: ignore[arg-type]
        entry: dict[str, Any] = {"name": output.name, "datatype": "FP32", "shape": list(stacked.shape)}
        if _flag(output.parameters, "binary_data", all_binary):
            chunks.append(stacked.tobytes())
            entry["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            entry["data"] = stacked.ravel().tolist()
        outputs.append(entry)
    response: dict[str, Any] = {"model_name": card.model_id, "model_version": VERSION, "outputs": outputs}
    if body.id is not None:
        response["id"] = body.id
    if not chunks:
        return JSONResponse(response)
    header = json.dumps(response, separators=(",", ":")).encode()
    return Response(
        header + b"".join(chunks),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


async def _request(request: Request, serving: Serving, deadline: float) -> tuple[InferRequest, bytes]:
    """The JSON inference request, and the binary tensor data after it (empty without)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    header_length = request.headers.get("inference-header-content-length")
    if media_type not in ("application/json", "application/octet-stream", ""):
        raise UnsupportedMediaType(f"Content-Type {media_type[:100]} is not accepted; send application/json")
    raw = await read_body(request, serving.settings.max_body_bytes, deadline)
    split = len(raw)
    if header_length is not None:
        length = parse_count(header_length)
        if length is None or not 0 < length <= len(raw):
            raise InvalidRequest("Inference-Header-Content-Length must be the JSON header's length in bytes")
        split = length
    header = raw[:split]
    max_values = serving.settings.max_json_values
    parse = lambda: load_model(InferRequest, header, max_values, "inference request")  # noqa: E731
    return await parse_off_loop(parse, split), raw[split:]


def _flag(parameters: dict[str, Any] | None, name: str, default: bool = False) -> bool:
    """A boolean request parameter: JSON true or false, nothing else."""
    value = (parameters or {}).get(name, default)
    if not isinstance(value, bool):
        raise InvalidRequest(f"parameter {name} must be true or false")
    return value


def _input_bytes(tensor: InferInput, binary: bytes) -> bytes | None:
    """The tensor's binary data (the one input's, so all of it), or None when it came as JSON."""
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
        raise InvalidRequest(f"input {tensor.name!r}: binary_data_size must be an integer")
    if size is None:
        if binary:
            raise InvalidRequest("binary data follows the JSON header, but no input declares binary_data_size")
        if tensor.data is None:
            raise InvalidRequest(f"input {tensor.name!r} has neither data nor binary_data_size")
        return None
    if size != len(binary):
        raise InvalidRequest(f"input {tensor.name!r}: binary_data_size is {size}, but {len(binary)} bytes follow")
    return binary


def _shape_batch(serving: Serving, tensor: InferInput) -> int:
    """The batch size, once the shape is one this input can have: checked before any value is
    read, so that a huge shape or count costs nothing."""
    shape, shown = tensor.shape, str(tensor.shape)[:100]
    if not shape or min(shape) < 1:
        raise InvalidRequest(f"input {tensor.name!r}: shape {shown} holds no values")
    batch = shape[0]
    check_image_count(batch, serving.settings.max_images_per_request)
    if tensor.datatype == "BYTES":
        if shape not in ([batch], [batch, 1]):
            raise InvalidRequest("input 'image': one image file per row, shape [B] or [B, 1]")
        return batch
    size = serving.card.image_size
    if shape != [batch, 3, size, size]:
        raise InvalidRequest(f"input {tensor.name!r}: shape must be [B, 3, {size}, {size}], not {shown}")
    return batch


def _values(tensor: InferInput, binary: bytes | None, count: int) -> np.ndarray:
    """The tensor's `count` elements, flat: from JSON (flat or nested lists) or from binary data."""
    if binary is None:
        try:
            values = np.asarray(tensor.data, dtype=object if tensor.datatype == "BYTES" else None).ravel()
        except (ValueError, RecursionError):
            raise InvalidRequest(f"input {tensor.name!r}: data is not a regular (nested) list") from None
    elif tensor.datatype == "UINT8":
        values = np.frombuffer(binary, dtype=np.uint8)
    elif tensor.datatype == "FP32":
        if len(binary) % 4:
            raise InvalidRequest(f"input {tensor.name!r}: FP32 binary data is not a whole number of values")
        values = np.frombuffer(binary, dtype="<f4")
    else:
        values = _bytes_elements(tensor.name, binary, count)
    if values.size != count:
        raise InvalidRequest(f"input {tensor.name!r}: {values.size} values do not fill shape {str(tensor.shape)[:100]}")
    return values


def _bytes_elements(name: str, binary: bytes, count: int) -> np.ndarray:
    """Binary BYTES data: each element a 4-byte little-endian length, then its bytes. Reading stops
    past `count` elements, so millions of empty ones cost no more than the shape allows."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(binary) and len(elements) <= count:
        if offset + 4 > len(binary):
            raise InvalidRequest(f"input {name!r}: truncated BYTES element length")
        length = int.from_bytes(binary[offset : offset + 4], "little")
        offset += 4
        if offset + length > len(binary):
            raise InvalidRequest(f"input {name!r}: a BYTES element runs past the data")
        elements.append(binary[offset : offset + length])
        offset += length
    values = np.empty(len(elements), dtype=object)
    values[:] = elements
    return values


def pixel_value_range(card: ModelCard) -> tuple[float, float]:
    """The FP32 values accepted as normalised pixels: the range 0 … 255 normalises to, widened by
    its own width on each side (other statistics fit; unnormalised 0 … 255, or 3e38, do not)."""
    mean, std = np.array(card.preprocess.mean), np.array(card.preprocess.std)
    low, high = float(((0 - mean) / std).min()), float(((1 - mean) / std).max())
    width = high - low
    return low - width, high + width


def _images(serving: Serving, tensor: InferInput, binary: bytes | None) -> list[bytes | np.ndarray]:
    """The input tensor as one image per row: encoded files (decoded later), pixels (seen as
    (S, S, 3), as decoded images lie) or normalised (3, S, S) values."""
    expected = INPUTS[tensor.datatype]
    if tensor.name != expected:
        raise InvalidRequest(f"a {tensor.datatype} input must be named {expected!r}, not {tensor.name[:100]!r}")
    batch = _shape_batch(serving, tensor)
    values = _values(tensor, binary, math.prod(tensor.shape))
    if tensor.datatype == "BYTES":
        if binary is not None:  # the raw files
            return list(values)
        if not all(isinstance(v, str) for v in values):
            raise InvalidRequest("input 'image': JSON data holds one base64 string (or data URL) per image")
        return [decode_base64(v, i, "image") for i, v in enumerate(values)]
    if tensor.datatype == "UINT8":
        if values.dtype.kind not in "iu" or values.min() < 0 or values.max() > 255:
            raise InvalidRequest(f"input {tensor.name!r}: UINT8 data must be integers in 0 … 255")
        array = values.astype(np.uint8)
    else:
        low, high = pixel_value_range(serving.card)
        with np.errstate(over="ignore"):  # 1e39 becomes inf here, refused just below
            array = values.astype(np.float32) if values.dtype.kind in "iuf" else values
        if array.dtype != np.float32 or not (np.isfinite(array).all() and low <= array.min() and array.max() <= high):
            raise InvalidRequest(
                f"input {tensor.name!r}: FP32 data must be finite normalised pixels, within [{low:.3g}, {high:.3g}]"
            )
    rows = array.reshape(batch, *tensor.shape[1:])
    return list(rows.transpose(0, 2, 3, 1) if rows.dtype == np.uint8 else rows)
