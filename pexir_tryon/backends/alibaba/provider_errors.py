"""Map DashScope error codes (contract §8) to our stable error codes, and scrub provider text.

Provider messages are never shown to users as they are: they can quote input URLs (presigned
URLs grant read access to a person photo) and are not written for our users. Users get our own
message plus the provider's code; operators get the scrubbed provider message in the log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pexir_tryon.errors import TryOnError

_URL_RE = re.compile(r"(?:https?|oss)://\S+", re.IGNORECASE)
_CODE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

# Codes that mean our side (key, account, bucket wiring, request format) is wrong.
_MISCONFIGURED = {
    "InvalidApiKey",
    "AccessDenied",
    "AccessDenied.Unpurchased",
    "Arrearage",
    "AllocationQuota.FreeTierOnly",
    "ModelNotFound",
    "Model.AccessDenied",
    "Workspace.AccessDenied",
    "InvalidParameter.DataInspection",  # oss:// input sent without the resolve header
    "invalid_parameter_error",
}
_RETRYABLE_HTTP = {429, 500, 502, 503, 504}


def scrub(text: object, secrets: Iterable[str] = (), limit: int = 300) -> str:
    """Provider text made safe for logs: no URLs, no secrets, bounded length, one line."""
    out = _URL_RE.sub("<url>", str(text or ""))
    for secret in secrets:
        if secret:
            out = out.replace(secret, "<redacted>")
    out = " ".join(out.split())
    return out[:limit]


def safe_code(code: object) -> str:
    code = str(code or "")
    return code if _CODE_RE.match(code) else "Unknown"


def is_retryable_status(status: int) -> bool:
    return status in _RETRYABLE_HTTP


def map_provider_error(code: str | None, message: str | None, http_status: int | None = None) -> TryOnError:
    """One provider failure (HTTP error body or FAILED task) as a TryOnError."""
    code = safe_code(code)
    text = (message or "").lower()
    tag = f" (provider code {code})"

    if code in _MISCONFIGURED or code.startswith(("InvalidApiKey", "AccessDenied", "Arrearage", "AllocationQuota")):
        return TryOnError("backend_misconfigured", "The Alibaba Cloud backend rejected the server's credentials or account" + tag + "; operators: see the server log.")
    if http_status in (401, 403):
        return TryOnError("backend_misconfigured", "The Alibaba Cloud backend refused access" + tag + "; operators: see the server log.")
    if code == "InvalidPerson":
        says_none = any(w in text for w in ("no human", "no person", "not detect", "no body", "未检测"))
        says_many = any(w in text for w in ("multi", "more than one", "several", "多人"))
        if says_many and not says_none:
            return TryOnError("multiple_people", "The provider found more than one person in the photo; send a photo with exactly one person" + tag + ".")
        if says_none and not says_many:
            return TryOnError("no_person_detected", "The provider found no complete person in the photo" + tag + ".")
        return TryOnError("no_person_detected", "The provider found no complete person, or more than one, in the photo; send a full-body, front-facing photo of exactly one person" + tag + ".")
    if code == "InvalidGarment":
        return TryOnError("garment_not_found", "The provider found no usable garment image" + tag + ".")
    if code == "DataInspectionFailed" or "inappropriate content" in text:
        return TryOnError("content_rejected", "The provider's content moderation rejected an image" + tag + ".")
    if code == "InvalidURL":
        return TryOnError("invalid_image", "The provider could not read an image in a supported format" + tag + ".")
    if code == "InvalidInputLength":
        if any(w in text for w in ("too large", "too big", "exceed", "larger than 5", "more than 5")):
            return TryOnError("image_too_large", "An image is over the provider's limits (5 MB, 4096 px per side)" + tag + ".")
        if any(w in text for w in ("too small", "less than 5", "smaller than 150", "below")):
            return TryOnError("image_too_small", "An image is under the provider's limits (5 KB, 150 px per side)" + tag + ".")
        return TryOnError("invalid_image", "An image is outside the provider's limits (5 KB–5 MB, 150–4096 px per side)" + tag + ".")
    if code == "InvalidParameter" and "model not exist" in text:
        return TryOnError("backend_misconfigured", "The configured Alibaba Cloud model does not exist" + tag + "; operators: see the server log.")
    if code.startswith("Throttling") or http_status == 429:
        return TryOnError("provider_error", "The provider kept throttling requests" + tag + "; retry later.", retry_after_s=5)
    if http_status is not None and http_status >= 500:
        return TryOnError("provider_error", f"The provider failed with HTTP {http_status}" + tag + "; retry later.", retry_after_s=5)
    if code.startswith(("InternalError", "SystemError")):
        return TryOnError("provider_error", "The provider failed internally" + tag + "; retry later.", retry_after_s=5)
    if code == "InvalidParameter" and ("download" in text or "media resource" in text):
        return TryOnError("provider_error", "The provider could not fetch the uploaded images" + tag + "; retry later.", retry_after_s=5)
    return TryOnError("provider_error", "The provider rejected the try-on" + tag + ".")
