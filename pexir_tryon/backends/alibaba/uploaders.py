"""Getting input images to the provider, which only fetches them from URLs (contract §9, §10).

`OssUploader` (production): the operator's own OSS bucket through the official
`alibabacloud_oss_v2` SDK; a presigned GET URL is handed to the provider and the object is
deleted as soon as the task is final. Operators should also put a lifecycle rule on the prefix
(expire after 1 day) as a safety net for a process killed between upload and delete.

`DashScopeTempUploader` (opt-in only): DashScope's free temporary storage. It keeps files
48 h and cannot delete them, which breaks the 24 h rule, so it refuses to exist unless
`allow_dashscope_temp_storage_kept_48h` is set.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import httpx

from pexir_tryon.config import AlibabaSettings
from pexir_tryon.errors import TryOnError

from .provider_errors import map_provider_error, safe_code, scrub
from .secrets import resolve_api_key, secret_values

log = logging.getLogger("pexir_tryon.backends.alibaba")


@dataclass
class UploadedInput:
    """One uploaded input: the URL the provider fetches, and what deleting it needs.

    The URL is a credential (a presigned URL grants read access to a person photo): it is
    never part of the repr.
    """

    url: str = field(repr=False)
    key: str
    model: str | None = None
    deleted: bool = False

    def __repr__(self) -> str:
        return f"UploadedInput(key={self.key!r}, deleted={self.deleted})"


@runtime_checkable
class InputUploader(Protocol):
    #: inputs are `oss://` URLs: requests need `X-DashScope-OssResourceResolve: enable`
    needs_oss_resolve: bool
    #: an upload is usable by the model it was made for only (upload again per model)
    bound_to_model: bool
    #: `delete` really removes the object
    can_delete: bool

    async def upload(self, data: bytes, *, name: str, content_type: str, model: str) -> UploadedInput: ...

    async def delete(self, item: UploadedInput) -> bool:
        """Remove the object; True when it is gone. Must not raise."""
        ...

    async def close(self) -> None: ...


class OssUploader:
    """Upload to, presign from and delete in the operator's OSS bucket (alibabacloud_oss_v2)."""

    needs_oss_resolve = False
    bound_to_model = False
    can_delete = True

    def __init__(self, settings: AlibabaSettings, *, client=None):
        if not settings.oss_bucket:
            raise TryOnError("backend_misconfigured", "No OSS bucket is configured for the Alibaba backend; operators: set PEXIR_ALIBABA__OSS_BUCKET.")
        self.bucket = settings.oss_bucket
        self.prefix = settings.oss_prefix
        self.presign_ttl_s = settings.presign_ttl_s
        self.endpoint = settings.oss_endpoint
        self._client = client if client is not None else self._make_client(settings)
        self._reapers: set[asyncio.Task] = set()

    def __repr__(self) -> str:
        return f"OssUploader(bucket={self.bucket!r}, endpoint={self.endpoint!r}, prefix={self.prefix!r})"

    @staticmethod
    def _make_client(settings: AlibabaSettings):
        if settings.oss_access_key_id is None or settings.oss_access_key_secret is None:
            raise TryOnError(
                "backend_misconfigured",
                "OSS credentials are not configured; operators: set PEXIR_ALIBABA__OSS_ACCESS_KEY_ID and PEXIR_ALIBABA__OSS_ACCESS_KEY_SECRET.",
            )
        import alibabacloud_oss_v2 as oss

        cfg = oss.config.load_default()
        cfg.credentials_provider = oss.credentials.StaticCredentialsProvider(
            settings.oss_access_key_id.get_secret_value(), settings.oss_access_key_secret.get_secret_value()
        )
        cfg.region = settings.oss_region
        if settings.oss_endpoint:
            cfg.endpoint = settings.oss_endpoint
        cfg.connect_timeout = settings.http_timeout_s
        cfg.readwrite_timeout = settings.http_timeout_s
        return oss.Client(cfg)

    def _put_and_presign(self, key: str, data: bytes, content_type: str) -> str:
        import alibabacloud_oss_v2 as oss

        self._client.put_object(oss.PutObjectRequest(bucket=self.bucket, key=key, body=data, content_type=content_type))
        signed = self._client.presign(
            oss.GetObjectRequest(bucket=self.bucket, key=key), expires=datetime.timedelta(seconds=self.presign_ttl_s)
        )
        return signed.url

    def _delete(self, key: str) -> None:
        import alibabacloud_oss_v2 as oss

        self._client.delete_object(oss.DeleteObjectRequest(bucket=self.bucket, key=key))

    async def upload(self, data: bytes, *, name: str, content_type: str, model: str) -> UploadedInput:
        key = f"{self.prefix}{uuid.uuid4().hex}/{name}"
        put = asyncio.ensure_future(asyncio.to_thread(self._put_and_presign, key, data, content_type))
        try:
            url = await asyncio.shield(put)
        except asyncio.CancelledError:
            # The PUT runs on in its thread and may still land after we stop waiting: remove the
            # object once it has finished, and wait for that (a second cancel stops only the wait).
            reaper = asyncio.ensure_future(self._reap(put, key))
            self._reapers.add(reaper)
            reaper.add_done_callback(self._reapers.discard)
            await asyncio.shield(reaper)
            raise
        except Exception as exc:
            # SDK messages can carry request details; log the kind and codes only.
            log.error("alibaba: OSS upload failed", extra={"event": "alibaba_oss_upload_failed", "error": _describe_oss_error(exc)})
            # The PUT may have landed before the failure: try to remove it.
            await self.delete(UploadedInput(url="", key=key))
            raise TryOnError("provider_error", "Uploading the images for the Alibaba Cloud backend failed; retry later.", retry_after_s=5) from None
        return UploadedInput(url=url, key=key, model=model)

    async def delete(self, item: UploadedInput) -> bool:
        if item.deleted:
            return True
        for attempt in range(3):
            try:
                await asyncio.to_thread(self._delete, item.key)
            except Exception as exc:
                log.warning("alibaba: OSS delete failed", extra={"event": "alibaba_oss_delete_retry", "attempt": attempt + 1, "key": item.key, "error": _describe_oss_error(exc)})
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            item.deleted = True
            return True
        log.error("alibaba: could not delete an OSS object; the bucket lifecycle rule must expire it", extra={"event": "alibaba_oss_delete_failed", "key": item.key})
        return False

    async def _reap(self, put: asyncio.Future, key: str) -> None:
        try:
            await put
        except Exception:
            pass  # failed PUT: delete anyway, deleting a missing object is harmless
        await self.delete(UploadedInput(url="", key=key))

    async def close(self) -> None:
        if self._reapers:
            await asyncio.wait(list(self._reapers), timeout=30)


def _describe_oss_error(exc: BaseException) -> str:
    """Class name, HTTP status and OSS error code of an SDK error; never its message."""
    parts = [type(exc).__name__]
    inner = getattr(exc, "unwrap", lambda: None)() or exc
    for attr in ("status_code", "code"):
        value = getattr(inner, attr, None)
        if value is not None:
            parts.append(f"{attr}={safe_code(value)}")
    return " ".join(parts)


class DashScopeTempUploader:
    """DashScope temporary storage (contract §10a): getPolicy, multipart POST, `oss://` URLs.

    Files live 48 h and cannot be deleted: allowed only with the explicit opt-in setting.
    """

    needs_oss_resolve = True
    bound_to_model = True
    can_delete = False

    def __init__(self, settings: AlibabaSettings, *, http: httpx.AsyncClient | None = None, policy_margin_s: float = 30.0):
        if not settings.allow_dashscope_temp_storage_kept_48h:
            raise TryOnError(
                "backend_misconfigured",
                "DashScope temporary storage keeps files 48 h and cannot delete them, which breaks the 24 h retention rule; "
                "operators: configure an OSS bucket, or set PEXIR_ALIBABA__ALLOW_DASHSCOPE_TEMP_STORAGE_KEPT_48H=true to accept that.",
            )
        self._api_key = resolve_api_key(settings)
        self._secrets = secret_values(settings, self._api_key)
        self.base_url = settings.base_url.rstrip("/")
        from .client import shared_ssl_context

        self._http = http or httpx.AsyncClient(timeout=settings.http_timeout_s, follow_redirects=False, verify=shared_ssl_context())
        self._own_http = http is None
        self._policy_margin_s = policy_margin_s
        self._policies: dict[str, tuple[float, dict]] = {}
        log.warning(
            "alibaba: DashScope temporary storage is in use: uploaded person and garment photos stay on Alibaba Cloud "
            "for 48 h and cannot be deleted (this breaks the 24 h retention rule; opted in by "
            "allow_dashscope_temp_storage_kept_48h)"
        )

    def __repr__(self) -> str:
        return f"DashScopeTempUploader(base_url={self.base_url!r})"

    async def _policy(self, model: str) -> dict:
        cached = self._policies.get(model)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        headers = {"Authorization": f"Bearer {self._api_key.get_secret_value()}", "Content-Type": "application/json"}
        try:
            resp = await self._http.get(f"{self.base_url}/uploads", params={"action": "getPolicy", "model": model}, headers=headers)
        except httpx.HTTPError as exc:
            log.error("alibaba: getPolicy failed: %s", type(exc).__name__)
            raise TryOnError("provider_error", "Uploading the images for the Alibaba Cloud backend failed; retry later.", retry_after_s=5) from None
        if resp.status_code != 200:
            code, message = _error_fields(resp)
            log.error("alibaba: getPolicy answered HTTP %d %s: %s", resp.status_code, code, scrub(message, self._secrets))
            raise map_provider_error(code, message, resp.status_code)
        data = resp.json().get("data") or {}
        ttl = float(data.get("expire_in_seconds") or 300)
        self._policies[model] = (time.monotonic() + max(1.0, ttl - self._policy_margin_s), data)
        return data

    async def upload(self, data: bytes, *, name: str, content_type: str, model: str) -> UploadedInput:
        policy = await self._policy(model)
        key = f"{policy['upload_dir']}/{uuid.uuid4().hex}-{name}"
        fields = {
            "OSSAccessKeyId": str(policy["oss_access_key_id"]),
            "Signature": str(policy["signature"]),
            "policy": str(policy["policy"]),
            "key": key,
            "x-oss-object-acl": str(policy.get("x_oss_object_acl", "private")),
            "x-oss-forbid-overwrite": str(policy.get("x_oss_forbid_overwrite", "true")),
            "success_action_status": "200",
            "x-oss-content-type": content_type,
        }
        try:
            # httpx writes data fields before files: the file part goes last, as OSS requires.
            resp = await self._http.post(str(policy["upload_host"]), data=fields, files={"file": (name, data, content_type)})
        except httpx.HTTPError as exc:
            log.error("alibaba: temporary upload failed: %s", type(exc).__name__)
            raise TryOnError("provider_error", "Uploading the images for the Alibaba Cloud backend failed; retry later.", retry_after_s=5) from None
        if resp.status_code not in (200, 204):
            self._policies.pop(model, None)
            log.error("alibaba: temporary upload answered HTTP %d", resp.status_code)
            raise TryOnError("provider_error", "Uploading the images for the Alibaba Cloud backend failed; retry later.", retry_after_s=5)
        return UploadedInput(url=f"oss://{key}", key=key, model=model)

    async def delete(self, item: UploadedInput) -> bool:
        return False  # DashScope deletes it after 48 h; nothing can remove it sooner

    async def close(self) -> None:
        if self._own_http:
            await self._http.aclose()


def _error_fields(resp: httpx.Response) -> tuple[str | None, str | None]:
    """`code`/`message` of a DashScope error body, top-level or nested under `output`."""
    try:
        body = resp.json()
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    nested = body.get("output") if isinstance(body.get("output"), dict) else {}
    code = body.get("code") or nested.get("code")
    message = body.get("message") or nested.get("message")
    return code, message
