"""The one way medexpo talks HTTP: a session with a mandatory timeout, our User-Agent, and a
retry schedule (exponential backoff with jitter) for the callers that retry.

Clients of external APIs build their session here; retrying is the client's decision because
only the client knows which answers are worth another try.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterator
from typing import Any

import requests

USER_AGENT = "medexpo (responsible-disclosure service for healthcare)"

# Credentials travel as query parameters in some APIs (Shodan's ?key=): they must not leak
# through exception messages that quote the URL.
_SECRET_PARAM = re.compile(r"((?:api_?)?key|token|password)=[^&\s'\"]*", re.IGNORECASE)


class Session(requests.Session):
    """A requests session that never waits forever and remembers the last answer's status."""

    def __init__(self, *, timeout: float, user_agent: str = USER_AGENT) -> None:
        super().__init__()
        if not timeout or timeout <= 0:
            raise ValueError("an HTTP session needs a positive timeout")
        self.timeout = timeout
        self.headers["User-Agent"] = user_agent
        self.last_status: int | None = None
        self.last_headers: dict[str, str] = {}

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self.timeout)
        self.last_status = None
        self.last_headers = {}
        response = super().request(method, url, **kwargs)
        self.last_status = response.status_code
        self.last_headers = dict(response.headers)
        return response


def backoff_delays(*, retries: int, base: float, cap: float = 60.0) -> Iterator[float]:
    """Seconds to wait before each retry: base, 2*base, 4*base, ... capped, with +-20 % jitter
    so that several workers that failed together do not retry together."""
    for attempt in range(retries):
        delay = min(cap, base * (2**attempt))
        yield delay * random.uniform(0.8, 1.2)


def scrub(text: str, *secrets: str) -> str:
    """`text` without the given secrets and without any key=... URL parameter."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _SECRET_PARAM.sub(lambda m: f"{m.group(1)}=***", text)


class ScrubSecrets(logging.Filter):
    """Rewrite log records so that no key=... URL parameter reaches a handler. urllib3 logs every
    request line at DEBUG, query string included."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "=" in message:
            record.msg, record.args = scrub(message), ()
        return True


def protect_logs(*logger_names: str) -> None:
    """Install ScrubSecrets on the named loggers (once each)."""
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ScrubSecrets) for f in logger.filters):
            logger.addFilter(ScrubSecrets())
