"""Log lines that may repeat at network speed, rate-limited.

A replayed frame, a server with a wrong clock or a port scanner can make the same
warning happen once per frame or per connection. :class:`RateLimitedLog` writes the
first one, then at most one per ``period`` for the same key, saying how many it held
back, so a log shows every kind of trouble without being flooded by any.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, Final

__all__ = ["JsonFormatter", "RateLimitedLog"]

_MAX_KEYS: Final = 64  # distinct keys remembered; the oldest is forgotten first


class RateLimitedLog:
    """At most one line per ``period`` seconds per key, with a count of the rest."""

    __slots__ = ("_clock", "_logger", "_period", "_seen")

    def __init__(
        self,
        logger: logging.Logger,
        period: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._period = period
        self._clock = clock
        self._seen: dict[str, list[float]] = {}  # key -> [last written, held back]

    def log(self, level: int, key: str, msg: str, *args: Any, exc_info: bool = False) -> bool:
        """Write ``msg % args`` unless ``key`` was written within the period; say if written.

        ``exc_info``: with the traceback of the exception being handled.
        """
        now = self._clock()
        entry = self._seen.get(key)
        if entry is not None:
            if now - entry[0] < self._period:
                entry[1] += 1
                return False
            if entry[1]:
                msg += " (%d more like it in the last %.0f s)"
                args = (*args, int(entry[1]), now - entry[0])
        self._logger.log(level, msg, *args, exc_info=exc_info)
        self._seen.pop(key, None)
        if len(self._seen) >= _MAX_KEYS:
            del self._seen[next(iter(self._seen))]
        self._seen[key] = [now, 0]
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors.

    ``{"time": "2026-01-02T03:04:05.678Z", "level": "INFO", "logger": "arraycrypto.server",
    "message": "...", "worker": 0}``: ``worker`` only in a worker of ``serve --workers``,
    ``exception`` (the traceback, as text) only when there is one.
    """

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        """Return ``record`` as one line of JSON."""
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc: dict[str, Any] = {
            "time": f"{seconds}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._worker is not None:
            doc["worker"] = self._worker
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)
