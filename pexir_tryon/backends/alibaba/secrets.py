"""The DashScope API key and OSS credentials: from settings (environment) or a secrets file only.

Values stay in `SecretStr` until the moment a request header or signer needs them; nothing here
formats them into messages.
"""

from __future__ import annotations

from pydantic import SecretStr

from pexir_tryon.config import AlibabaSettings
from pexir_tryon.errors import TryOnError


def resolve_api_key(settings: AlibabaSettings) -> SecretStr:
    """`api_key`, else the first line of `api_key_file`; a missing key is a configuration error."""
    if settings.api_key is not None and settings.api_key.get_secret_value().strip():
        return SecretStr(settings.api_key.get_secret_value().strip())
    if settings.api_key_file is not None:
        path = settings.api_key_file.expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TryOnError(
                "backend_misconfigured",
                f"The DashScope API key file cannot be read ({type(exc).__name__}); operators: check PEXIR_ALIBABA__API_KEY_FILE.",
            ) from None
        key = text.strip().splitlines()[0].strip() if text.strip() else ""
        if key:
            return SecretStr(key)
    raise TryOnError(
        "backend_misconfigured",
        "No DashScope API key is configured; operators: set PEXIR_ALIBABA__API_KEY or PEXIR_ALIBABA__API_KEY_FILE.",
    )


def secret_values(settings: AlibabaSettings, *extra: SecretStr | None) -> tuple[str, ...]:
    """Every secret this backend knows, for scrubbing provider text (never for printing)."""
    values = []
    for secret in (settings.api_key, settings.oss_access_key_id, settings.oss_access_key_secret, *extra):
        if secret is not None:
            value = secret.get_secret_value()
            if len(value) >= 6:
                values.append(value)
    return tuple(values)
