"""Logging in logfmt or JSON, one line per event."""

from __future__ import annotations

import json
import logging
import sys
import time

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}


def _logfmt_value(value: str) -> str:
    if value and not any(ch in value for ch in ' "=\\\n\t'):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _level(record: logging.LogRecord) -> str:
    # Prometheus' own log level names: warn, not warning.
    return "warn" if record.levelno == logging.WARNING else record.levelname.lower()


class LogfmtFormatter(logging.Formatter):
    """`ts=... level=info logger=exporter.daemon msg="..."`"""

    def format(self, record: logging.LogRecord) -> str:
        """One logfmt line."""
        parts = [
            f"ts={_timestamp(record)}",
            f"level={_level(record)}",
            f"logger={record.name}",
            f"msg={_logfmt_value(record.getMessage())}",
        ]
        if record.exc_info:
            parts.append(f"error={_logfmt_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON line."""
        event = {"ts": _timestamp(record), "level": _level(record), "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            event["error"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False)


def setup_logging(level: str, fmt: str) -> None:
    """Configure the root logger for the daemon (stderr, so journald and kubectl logs see it)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    # aiohttp's access log is noisy at scrape rate; keep it at warning unless debugging.
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
