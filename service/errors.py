"""The service's errors (docs/API.md, Errors): one hierarchy, each with its status, type and rejection reason."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class ServiceError(Exception):
    status = 500
    type = "internal"
    reason = "internal"  # the `reason` label of vit_rejected_total

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidRequest(ServiceError):
    status, type, reason = 400, "invalid_request", "invalid_input"


class InvalidImage(ServiceError):
    status, type, reason = 400, "invalid_image", "invalid_input"


class Unauthorized(ServiceError):
    status, type, reason = 401, "unauthorized", "unauthorized"

    def __init__(self) -> None:  # one message whatever failed: missing header, scheme or key
        super().__init__("a valid API key is required", {"WWW-Authenticate": "Bearer"})


class RequestTimeout(ServiceError):
    """The request (its head, or its body) did not arrive in time."""

    status, type, reason = 408, "request_timeout", "request_timeout"


class HeadersTooLarge(ServiceError):
    """A request head over VIT_MAX_HEADER_BYTES or VIT_MAX_HEADERS (answered by the HTTP server)."""

    status, type, reason = 431, "request_header_fields_too_large", "too_large"


class PayloadTooLarge(ServiceError):
    status, type, reason = 413, "payload_too_large", "too_large"


class UnsupportedMediaType(ServiceError):
    status, type, reason = 415, "unsupported_media_type", "unsupported_media_type"


class InvalidParameter(ServiceError):
    status, type, reason = 422, "invalid_parameter", "invalid_parameter"


class Overloaded(ServiceError):
    status, type, reason = 503, "overloaded", "queue_full"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, {"Retry-After": str(retry_after_s)})


class NotReady(ServiceError):
    status, type, reason = 503, "not_ready", "not_ready"


class DeadlineExceeded(ServiceError):
    status, type, reason = 504, "deadline_exceeded", "deadline"


class InferenceFailed(ServiceError):
    """The forward pass raised; the message stays generic, the log has the details."""

    status, type, reason = 500, "internal", "internal"


class ClientDisconnected(ServiceError):
    """The client left first. Nobody reads this answer; it exists for the request metrics and
    the log (nginx's 499)."""

    status, type, reason = 499, "client_closed_request", "client_gone"


class NotFound(ServiceError):
    status, type, reason = 404, "not_found", "not_found"


class MethodNotAllowed(ServiceError):
    status, type, reason = 405, "method_not_allowed", "method_not_allowed"


def first_error(errors: Sequence[Mapping[str, Any]]) -> str:
    """pydantic's validation errors as one line naming the first: "where: what"."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid parameter"}
    where = ".".join(str(p) for p in first["loc"] if p not in ("query", "body", "header"))
    where = where[:100]  # it may hold a client's (unknown) key
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def invalid_parameter(errors: Sequence[Mapping[str, Any]]) -> InvalidParameter:
    """pydantic's validation errors (of query, header or body parameters) as one 422 naming the first."""
    return InvalidParameter(first_error(errors))


# The errors an engine process sends its front-ends, by name; anything else it sends is a failure.
_WIRE: dict[str, type[ServiceError]] = {kind.__name__: kind for kind in (Overloaded, DeadlineExceeded, NotReady)}


def to_wire(error: BaseException) -> list[str]:
    """An engine-side error as it crosses to a front-end: [kind, message]. The batcher's refusals
    keep their kind; anything else (a failed pass, a cancelled item) is InferenceFailed."""
    if type(error) in _WIRE.values():
        return [type(error).__name__, str(error)]
    return ["InferenceFailed", str(error) if isinstance(error, InferenceFailed) else "inference failed"]


def from_wire(outcome: Sequence[str]) -> ServiceError:
    """The error a front-end raises for an engine's [kind, message]."""
    kind, message = outcome
    return _WIRE.get(kind, InferenceFailed)(message)
