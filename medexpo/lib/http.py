"""The one way medexpo talks HTTP: a session with a mandatory timeout, our User-Agent, and a
retry schedule (exponential backoff with jitter) for the callers that retry.

Clients of external APIs build their session here; retrying is the client's decision because
only the client knows which answers are worth another try.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC
from typing import Any

import requests
from requests.structures import CaseInsensitiveDict

USER_AGENT = "medexpo (responsible-disclosure service for healthcare)"

# Credentials travel as query parameters in some APIs (Shodan's ?key=): they must not leak
# through exception messages that quote the URL.
_SECRET_PARAM = re.compile(r"((?:api_?)?key|token|password)=[^&\s'\"]*", re.IGNORECASE)
RETRY_AFTER_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)


class Session(requests.Session):
    """A requests session that never waits forever and remembers the last answer's status: from
    the moment its headers arrive, so that an answer whose body was cut short still has one."""

    def __init__(self, *, timeout: float, user_agent: str = USER_AGENT) -> None:
        super().__init__()
        if not timeout or timeout <= 0:
            raise ValueError("an HTTP session needs a positive timeout")
        self.timeout = timeout
        self.headers["User-Agent"] = user_agent
        self.last_status: int | None = None
        self.last_headers: CaseInsensitiveDict[str] = CaseInsensitiveDict()
        # Response hooks run before requests reads the body.
        self.hooks["response"].append(self._remember)

    def _remember(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.last_status = response.status_code
        self.last_headers = CaseInsensitiveDict(response.headers)  # names in any case, as HTTP has them

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self.timeout)
        self.last_status = None
        self.last_headers = CaseInsensitiveDict()
        return super().request(method, url, **kwargs)


def backoff_delays(*, retries: int, base: float, cap: float = 60.0) -> Iterator[float]:
    """Seconds to wait before each retry: base, 2*base, 4*base, ... capped, with +-20 % jitter
    so that several workers that failed together do not retry together."""
    for attempt in range(retries):
        delay = min(cap, base * (2**attempt))
        yield delay * random.uniform(0.8, 1.2)


def retry_after_seconds(value: str) -> float | None:
    """The seconds a Retry-After header asks to wait (seconds, or an HTTP date), or None for a
    value we cannot use: then the caller's normal backoff applies."""
    value = value.strip()
    if RETRY_AFTER_SECONDS.fullmatch(value):
        return float(value)
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:  # "-0000": the date is in UTC
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp() - time.time()


def scrub(text: str, *secrets: str) -> str:
    """`text` without the given secrets and without any key=... URL parameter."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _SECRET_PARAM.sub(lambda m: f"{m.group(1)}=***", text)


class _ScrubbingRecordFactory:
    """Makes log records as the factory it wraps does; in those of the protected loggers and their
    children it scrubs key=... URL parameters from the message and the traceback."""

    def __init__(self, wrapped: Callable[..., logging.LogRecord]) -> None:
        self.wrapped = wrapped
        self.prefixes: set[str] = set()

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.wrapped(*args, **kwargs)
        if any(record.name == p or record.name.startswith(p + ".") for p in self.prefixes):
            _scrub_record(record)
        return record


def _scrub_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except (TypeError, ValueError):  # a bad format: the handler would print msg and args as they are
        message = f"{record.msg} {record.args!r}"
    if "=" in message:
        record.msg, record.args = scrub(message), ()
    if record.exc_info:
        # Formatters print exc_text when there is one; the exception itself may quote the URL.
        record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        record.exc_info = None


def protect_logs(*logger_names: str) -> None:
    """Keep key=... URL parameters out of every record of the named loggers and of their
    children, present or future, whatever handler receives them. urllib3 quotes request URLs
    at DEBUG and in warnings (urllib3.connection: "Failed to parse headers (url=...)").

    A filter on a logger would not do: it never sees the records of its children, which reach
    the handlers by propagation. Filters on handlers would miss handlers added later (Django's
    logging setup, pytest's). So the records are scrubbed where they are made."""
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _ScrubbingRecordFactory):
        factory = _ScrubbingRecordFactory(factory)
        logging.setLogRecordFactory(factory)
    factory.prefixes.update(logger_names)
