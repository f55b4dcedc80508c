"""Structured log lines: one JSON object per line, with the service name and debug level."""

from __future__ import annotations

import json
import logging
import sys

from backend.core.config import Settings


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, sort_keys=True)


def configure(settings: Settings) -> logging.Logger:
    logger = logging.getLogger("shopfront")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if settings.debug else logging.INFO)
    return logger
