"""Who may call: bearer keys from the config, and the user the request acts for."""

from __future__ import annotations

import hmac
import ipaddress
import re
from dataclasses import dataclass

from ..errors import TryOnError

USER_ID_PATTERN = re.compile(r"^[A-Za-z0-9._@:-]{1,128}$")
LOCAL_USER = "local"


@dataclass(frozen=True)
class Caller:
    user_id: str


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def authenticate(authorization: str | None, user_id: str | None, client_host: str | None, keys: list[str]) -> Caller:
    """The caller, or TryOnError('unauthorized'). With no keys configured only loopback clients are served."""
    if keys:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token or not any(hmac.compare_digest(token.encode(), key.encode()) for key in keys):
            raise TryOnError("unauthorized", "Missing or invalid API key; send 'Authorization: Bearer <key>'.")
        if not user_id:
            raise TryOnError("unauthorized", "Send the user this request acts for in the 'X-User-Id' header.")
    else:
        if not is_loopback(client_host):
            raise TryOnError("unauthorized", "This server has no API keys configured and serves loopback clients only.")
        user_id = user_id or LOCAL_USER
    if not USER_ID_PATTERN.match(user_id):
        raise TryOnError("invalid_request", "X-User-Id must be 1-128 characters of letters, digits and . _ @ : -")
    return Caller(user_id=user_id)
