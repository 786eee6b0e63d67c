"""Typed errors: each has an HTTP status and a stable machine-readable code.

The same codes come out of the HTTP API (`{"error": {"code", "message"}}`), the CLI
(`error[<code>]: <message>`) and the batch job's results manifest. Messages say what to fix and
never carry image bytes, landmarks or secrets.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorKind:
    code: str
    http_status: int
    what_to_do: str


# The one table of error codes. docs/errors.md is generated from it (scripts/error_table.py --write);
# a test fails when the two differ. Codes are stable: add new ones, never rename or remove one.
ERROR_KINDS: dict[str, ErrorKind] = {
    k.code: k
    for k in [
        ErrorKind("invalid_request", 422, "Fix the named field: it is missing, of the wrong type or out of range."),
        ErrorKind("invalid_image", 400, "Send a complete JPEG, PNG, WebP, HEIC, BMP or GIF file; this one is empty, truncated or not an image."),
        ErrorKind("unsupported_image", 415, "Send one still JPEG, PNG, WebP, HEIC, BMP or GIF image; animated images and other formats (TIFF, AVIF, SVG, PSD, ...) are not accepted."),
        ErrorKind("image_too_large", 413, "Send a smaller image: a smaller file, fewer pixels, a shorter longest side or a less elongated shape (the limits are in the message)."),
        ErrorKind("image_too_small", 422, "Send a larger image: each side at least the minimum in the message, and not a thin strip."),
        ErrorKind("payload_too_large", 413, "The request body is over the size limit; send smaller files."),
        ErrorKind("no_person_detected", 422, "Send a photo with one person clearly visible, facing the camera."),
        ErrorKind("multiple_people", 422, "Send a photo with exactly one person in it."),
        ErrorKind("person_too_small", 422, "Move closer or crop the photo so the person fills more of the frame."),
        ErrorKind("person_facing_away", 422, "Send a photo of the person facing the camera."),
        ErrorKind("person_cropped", 422, "Send a photo that shows the head and both shoulders."),
        ErrorKind("body_region_not_visible", 422, "The garment needs a body region this photo does not show (e.g. hips and legs for trousers); send a photo that shows it."),
        ErrorKind("garment_not_found", 422, "Send a flat-lay product photo of one garment on a plain background, or a cut-out PNG."),
        ErrorKind("garment_background_not_plain", 422, "Photograph the garment on a plain, evenly coloured background, or send a cut-out PNG with transparency."),
        ErrorKind("garment_photo_has_person", 422, "Send a product photo of the garment alone, not worn by a person."),
        ErrorKind("category_mismatch", 422, "The garment's shape contradicts the category you gave; fix the category or use 'auto'."),
        ErrorKind("unsupported_category", 422, "Use one of: upper, lower, dress, auto."),
        ErrorKind("content_rejected", 422, "The provider's content moderation rejected an image; send different images."),
        ErrorKind("unauthorized", 401, "Send 'Authorization: Bearer <key>' with a valid key and an 'X-User-Id' header."),
        ErrorKind("backend_not_allowed", 403, "This server does not let requests choose that backend; omit the field or use an allowed one."),
        ErrorKind("not_found", 404, "The id does not exist, has expired, or belongs to another user."),
        ErrorKind("request_timeout", 408, "The request body arrived too slowly; retry on a faster connection."),
        ErrorKind("header_too_large", 431, "Send shorter headers."),
        ErrorKind("overloaded", 503, "The service is at capacity; retry after the number of seconds in Retry-After."),
        ErrorKind("deadline_exceeded", 504, "The try-on took longer than the configured deadline; retry later."),
        ErrorKind("provider_error", 502, "The cloud try-on provider failed; retry later."),
        ErrorKind("backend_misconfigured", 503, "The server's backend configuration is invalid (operators: check the logs); retry later."),
        ErrorKind("stage_unavailable", 503, "A pipeline stage is restarting; retry in a few seconds."),
        ErrorKind("model_not_available", 503, "Operators: the model files are missing or corrupt; see the server log."),
        ErrorKind("method_not_allowed", 405, "Use the method the route documents (see /docs); the Allow header lists them."),
        ErrorKind("not_acceptable", 406, "Accept image/png, image/jpeg or application/json (or leave Accept out for PNG)."),
        ErrorKind("internal_error", 500, "An unexpected server error; retry, and report the request id if it persists."),
    ]
}


class TryOnError(Exception):
    """An error with a stable code, an HTTP status and a message that says what to fix."""

    def __init__(self, code: str, message: str, *, retry_after_s: int | None = None):
        if code not in ERROR_KINDS:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s

    @property
    def http_status(self) -> int:
        return ERROR_KINDS[self.code].http_status

    def to_body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}

    def cli_line(self) -> str:
        return f"error[{self.code}]: {self.message}"

    def __reduce__(self):  # survives pickling across Ray processes
        return (_rebuild, (self.code, self.message, self.retry_after_s))

    def __repr__(self) -> str:
        return f"TryOnError(code={self.code!r}, message={self.message!r})"


def _rebuild(code: str, message: str, retry_after_s: int | None) -> TryOnError:
    return TryOnError(code, message, retry_after_s=retry_after_s)


def error_table_markdown() -> str:
    """Every error code, its HTTP status and what the user should do, as a markdown table."""
    lines = ["| code | HTTP | what to do |", "|---|---|---|"]
    for kind in ERROR_KINDS.values():
        what_to_do = kind.what_to_do.replace("|", "\\|")
        lines.append(f"| `{kind.code}` | {kind.http_status} | {what_to_do} |")
    return "\n".join(lines)
