"""service/errors.py: the one mapping by which an engine process's errors reach its front-ends."""

from __future__ import annotations

import asyncio

import pytest

from service.errors import (
    DeadlineExceeded,
    InferenceFailed,
    InvalidImage,
    NotReady,
    Overloaded,
    ServiceError,
    from_wire,
    to_wire,
)


@pytest.mark.parametrize("kind", [Overloaded, DeadlineExceeded, NotReady, InferenceFailed])
def test_the_engines_refusals_cross_the_wire_as_they_are(kind: type[ServiceError]) -> None:
    wire = to_wire(kind("a message"))
    assert wire == [kind.__name__, "a message"]
    crossed = from_wire(wire)
    assert type(crossed) is kind and str(crossed) == "a message"


@pytest.mark.parametrize(
    "error", [RuntimeError("CUDA error: an illegal memory access"), asyncio.CancelledError(), InvalidImage("bad")]
)
def test_anything_else_is_an_inference_failure_that_says_nothing_of_the_engines_insides(error: BaseException) -> None:
    crossed = from_wire(to_wire(error))
    assert type(crossed) is InferenceFailed and str(crossed) == "inference failed"


def test_an_unknown_kind_from_the_wire_is_an_inference_failure() -> None:
    crossed = from_wire(["SomethingNew", "from a newer engine"])
    assert type(crossed) is InferenceFailed and str(crossed) == "from a newer engine"
