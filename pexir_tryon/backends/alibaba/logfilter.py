"""Keep signed URLs out of logs.

httpx logs every request URL at INFO. Presigned input URLs and the provider's result URLs carry
signatures that grant read access to a person photo or a try-on result, so their query strings
are replaced before a record is written. Only signed URLs are touched.
"""

from __future__ import annotations

import logging
import re

_SIGNED_QUERY_RE = re.compile(
    r"(?P<base>(?:https?|oss)://[^\s?\"'<>]+)\?(?P<query>[^\s\"'<>]*)", re.IGNORECASE
)
_SIGNED_MARKERS = ("signature", "ossaccesskeyid", "x-oss-credential", "security-token", "expires")


def redact_signed_urls(text: str) -> str:
    def _sub(match: re.Match) -> str:
        query = match.group("query").lower()
        if any(marker in query for marker in _SIGNED_MARKERS):
            return match.group("base") + "?<signed query redacted>"
        return match.group(0)

    return _SIGNED_QUERY_RE.sub(_sub, text)


def _clean(value: object) -> object:
    text = str(value) if not isinstance(value, (int, float)) else ""
    return redact_signed_urls(text) if "://" in text else value


class SignedUrlFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict):
            record.args = {k: _clean(v) for k, v in record.args.items()}
        elif isinstance(record.args, tuple) and record.args:
            record.args = tuple(_clean(a) for a in record.args)
        if isinstance(record.msg, str) and "://" in record.msg:
            record.msg = redact_signed_urls(record.msg)
        return True


_FILTER = SignedUrlFilter()


def install_signed_url_filter(logger_names: tuple[str, ...] = ("httpx",)) -> None:
    """Attach the filter once to the loggers that print request URLs."""
    for name in logger_names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
