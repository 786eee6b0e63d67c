"""The `alibaba` backend: Alibaba Cloud Model Studio OutfitAnyone over plain HTTP.

See `backend.py` for the job flow, `client.py` for the task API, `uploaders.py` for how inputs
reach the provider, `limiter.py` for the account-wide limits and `prepare.py` for fitting images
inside the provider's limits. Importing this package does not import Ray or the OSS SDK.
"""

from .backend import AlibabaCloudBackend, make_uploader
from .client import DashScopeClient, RetryPolicy
from .limiter import AccountLimiter, InProcessAccountLimiter, RayAccountLimiter, default_limiter
from .provider_errors import map_provider_error
from .uploaders import DashScopeTempUploader, InputUploader, OssUploader, UploadedInput

__all__ = [
    "AccountLimiter",
    "AlibabaCloudBackend",
    "DashScopeClient",
    "DashScopeTempUploader",
    "InProcessAccountLimiter",
    "InputUploader",
    "OssUploader",
    "RayAccountLimiter",
    "RetryPolicy",
    "UploadedInput",
    "default_limiter",
    "make_uploader",
    "map_provider_error",
]
