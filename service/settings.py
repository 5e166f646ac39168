"""All service settings (docs/API.md, Settings): `VIT_*` environment variables, a `.env` file, or
CLI flags; and `Resolved`, every default that depends on the hardware, decided in one place."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from dotenv import dotenv_values
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

BUILTIN_MODEL = "vit-mnist"
MiB = 1 << 20
PREFIX = "VIT_"


RENAMED = {"VIT_DECODE_THREADS": "VIT_DECODE_PROCESSES"}  # decoding moved from threads to processes in 0.2


class UnknownSetting(ValueError):
    """A VIT_* variable (environment or .env) that names no setting: a typo, or a setting of
    another version. Refused, since a server that ignored it would not do what was asked."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, env_file=".env", extra="ignore", frozen=True)

    model: str = Field(BUILTIN_MODEL, description="built-in model id or preset name")
    checkpoint: Path | None = Field(None, description="weights: HF directory, timm file, .npz, or vit-serve directory")
    labels: Path | None = Field(None, description="labels file: one a line, or a JSON list")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    compile: bool | None = Field(None, description="torch.compile the model (default: on for CUDA and for int8)")
    compile_cache_dir: Path | None = Field(
        None,
        description="where compiled graphs are kept between starts (a volume): a start that finds them skips most of"
        " compiling; default: torch's own, under the temp directory",
    )
    quantize: Literal["none", "int8"] = Field(
        "none", description="int8: the encoder blocks' Linear layers in dynamic int8 (torchao), compiled; CPU only"
    )
    max_batch_size: int | None = Field(
        None, ge=1, le=4096, description="images per forward pass (default: 32 CPU, 256 CUDA)"
    )
    max_wait_ms: float = Field(2.0, ge=0, le=10_000, description="how long a batch's first image may wait for company")
    max_queue_size: int | None = Field(None, ge=1, description="images waiting before 503 (default: 16 × batch size)")
    request_timeout_s: float = Field(30.0, gt=0, le=3600)
    shutdown_timeout_s: float = Field(30.0, gt=0, le=3600)
    max_body_bytes: int = Field(20 * MiB, ge=1024)
    max_images_per_request: int = Field(64, ge=1, le=4096)
    max_image_pixels: int = Field(40_000_000, ge=1, le=178_956_970)  # Pillow's own bomb limit is above
    max_labels: int = Field(1000, ge=1, le=100_000, description="zero-shot labels in one /v1/classify request")
    label_cache_size: int = Field(
        10_000, ge=0, description="zero-shot label embeddings kept (least recently used out first); 0: none"
    )
    workers: int = Field(
        1, ge=1, le=256, description="front-end processes (HTTP, decoding); above 1 the model gets a process of its own"
    )
    engine_process: bool | None = Field(
        None, description="the model in a process of its own behind the front-ends (default: when VIT_WORKERS > 1)"
    )
    decode_processes: int | None = Field(
        None, ge=1, le=256, description="image decoding processes per front-end (default: cores / workers, at least 2)"
    )
    decode_timeout_s: float = Field(
        5.0,
        gt=0,
        le=600,
        description="the longest one image's decode may take (less for a cheap one); then its process is killed",
    )
    decode_memory_bytes: int = Field(
        1024 * MiB, ge=64 * MiB, description="address space one decode process may add to its start-up size"
    )
    jpeg_draft: bool = Field(
        True, description="decode JPEGs ≥ 2× the needed size at 1/2…1/8 scale (DCT scaling); false: full decode"
    )
    gpu_decode: bool = Field(
        False,
        description="decode plain JPEGs on the GPU (nvJPEG, via torchvision) where the model is on CUDA in this"
        " process; everything else on the CPU",
    )
    max_json_values: int = Field(
        262_144, ge=1024, description="values in one JSON body, counted before parsing: bounds its time and memory"
    )
    max_header_bytes: int = Field(32 * 1024, ge=1024, le=1 << 24, description="request line and headers, in bytes")
    max_headers: int = Field(100, ge=8, le=10_000, description="header fields in one request")
    header_timeout_s: float = Field(
        10.0, gt=0, le=600, description="from connecting, or from a request's first byte, to its complete head"
    )
    # Longer than the idle timeout of the pools in front (nginx and AWS ALB: 60 s): a server that
    # closes first races a request sent on the closing connection, which is reset (a 502 at a proxy).
    keep_alive_s: float = Field(
        75.0, gt=0, le=3600, description="how long a connection may idle after a response before it is closed"
    )
    max_connections: int = Field(
        2048, ge=1, description="open connections; past it, only health probes are answered (others 503)"
    )
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, description="comma-separated bearer keys")
    # A container's server must listen on all interfaces; set VIT_HOST=127.0.0.1 on a shared host.
    host: str = "0.0.0.0"  # nosec B104
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    resize_mode: Literal["squash", "crop"] | None = None
    crop_pct: float | None = Field(None, gt=0, le=1)
    interpolation: Literal["bilinear", "bicubic"] | None = None
    mean: Annotated[tuple[float, float, float] | None, NoDecode] = None
    std: Annotated[tuple[float, float, float] | None, NoDecode] = None

    def __init__(self, **values: Any) -> None:
        env_files = values.get("_env_file", ".env")
        paths = env_files if isinstance(env_files, list | tuple) else [env_files]
        dotenv = {k: v for path in paths if path and Path(path).is_file() for k, v in dotenv_values(path).items()}
        check_known({**dotenv, **os.environ})
        super().__init__(**values)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _split_floats(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",")]
            if len(parts) != 3:
                raise ValueError("expected three comma-separated numbers (R,G,B)")
            return tuple(parts)
        return value

    @field_validator("std")
    @classmethod
    def _positive_std(cls, value: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if value is not None and min(value) <= 0:
            raise ValueError("every std value must be positive")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError("expected auto, cpu, cuda or cuda:N")
        return value

    @field_validator("checkpoint", "labels")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.exists():
            raise ValueError(f"{value} does not exist")
        return value

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> Settings:
        if self.max_queue_size is not None and self.max_queue_size < self.max_images_per_request:
            raise ValueError(
                f"VIT_MAX_QUEUE_SIZE ({self.max_queue_size}) is below VIT_MAX_IMAGES_PER_REQUEST "
                f"({self.max_images_per_request}): the largest requests could never be admitted"
            )
        return self

    @model_validator(mode="after")
    def _front_ends_share_an_engine_process(self) -> Settings:
        if self.workers > 1 and self.engine_process is False:
            raise ValueError("VIT_WORKERS > 1 needs VIT_ENGINE_PROCESS: front-ends share the model through it")
        return self

    @property
    def grouped(self) -> bool:
        """Whether the service is a supervised group (front-ends and an engine process), not one process."""
        return self.workers > 1 if self.engine_process is None else self.engine_process

    @model_validator(mode="after")
    def _int8_is_compiled_float32(self) -> Settings:
        if self.quantize == "int8" and self.compile is False:
            raise ValueError(
                "VIT_QUANTIZE=int8 needs VIT_COMPILE: uncompiled, torchao's int8 is no faster than float32"
            )
        if self.quantize == "int8" and self.dtype not in ("auto", "float32"):
            raise ValueError(f"VIT_QUANTIZE=int8 keeps float32 outside the blocks' matrix products; not {self.dtype}")
        return self

    def resolve(self, device_type: str, cores: int | None = None) -> Resolved:
        """The defaults left open above, for a model on `device_type` ("cpu", "cuda") on a host
        of `cores` cores (default: this one's)."""
        cuda = device_type == "cuda"
        cores = cores or os.cpu_count() or 1
        max_batch_size = self.max_batch_size or (256 if cuda else 32)
        return Resolved(
            max_batch_size=max_batch_size,
            max_queue_size=self.max_queue_size or 16 * max_batch_size,
            decode_processes=self.decode_processes or max(2, -(-cores // self.workers)),
            compile=(cuda or self.quantize == "int8") if self.compile is None else self.compile,
            engine_threads=max(1, cores - self.workers) if self.grouped else cores,
        )


@dataclass(frozen=True)
class Resolved:
    """The settings whose defaults depend on the device and the host, resolved."""

    max_batch_size: int  # 32 on the CPU, 256 on CUDA
    max_queue_size: int  # 16 batches
    decode_processes: int  # a front-end's share of the cores, at least two, so one request never holds them all
    compile: bool  # torch.compile: by default on CUDA, and for int8
    # torch's threads: with front-end processes beside the engine, the cores they leave (an idle
    # OpenMP team spin-waits on its cores, which front-ends then lack: docs/BENCHMARKS.md)
    engine_threads: int


def check_known(variables: Mapping[str, str | None]) -> None:
    """UnknownSetting for the first VIT_* variable that is not a setting, with the closest one."""
    known = [PREFIX + name.upper() for name in Settings.model_fields]
    for name in sorted(variables):
        upper = name.upper()
        if upper.startswith(PREFIX) and upper not in known:
            if upper in RENAMED:
                raise UnknownSetting(f"unknown setting {name}: it is now {RENAMED[upper]}")
            close = difflib.get_close_matches(upper, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UnknownSetting(f"unknown setting {name}{hint}")


def describe_error(error: ValidationError) -> str:
    """One line naming the setting (as its environment variable) and what is wrong."""
    first = error.errors()[0]
    name = "_".join(str(p) for p in first["loc"] if isinstance(p, str)).upper()
    message = first["msg"].removeprefix("Value error, ")
    if not name:  # a check across settings names them in its message
        return f"invalid settings: {message}"
    where = f"VIT_{name}"
    value = first.get("input")
    shown = f" (got {value!r})" if name and isinstance(value, str | int | float) else ""
    return f"invalid setting {where}: {message}{shown}"
