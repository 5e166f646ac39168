"""Logging: every line carries the id of the request it belongs to (`-` outside requests)."""

from __future__ import annotations

import contextvars
import logging
import logging.config
from typing import Any

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def configure_logging(level: str, process: str = "") -> dict[str, Any]:
    """Log lines carry the request id, and the `process` that wrote them ("engine",
    "front-end 2") in a process group; returned as a dictConfig for uvicorn too."""
    where = f" ({process})" if process else ""
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"plain": {"format": f"%(asctime)s %(levelname)s %(name)s{where} [%(request_id)s] %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["request_id"]}},
        "loggers": {
            "": {"handlers": ["stderr"], "level": level.upper()},
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
        },
    }
    logging.config.dictConfig(config)
    return config
