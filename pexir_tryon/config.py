"""Every knob in one place: typed settings with defaults and one line of documentation each.

Each setting can be set from the environment with the prefix ``PEXIR_`` and ``__`` between
nested sections (``PEXIR_STORE__UPLOAD_TTL_S=3600``), or from the ``settings:`` block that
``serve_config.yaml`` hands to the application builder. Secrets are ``SecretStr``: they never
print, log or reach the OpenAPI page.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DAY_S = 24 * 3600


class ImageSettings(BaseModel):
    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0, description="Largest accepted image file, in bytes.")
    max_request_bytes: int = Field(45 * 1024 * 1024, gt=0, description="Largest accepted HTTP request body, refused before it is read whole.")
    max_pixels: int = Field(40_000_000, gt=0, description="Largest accepted width*height, checked from the header before decoding (decompression bombs).")
    max_side: int = Field(8192, gt=0, description="Largest accepted width or height, in pixels.")
    min_side: int = Field(64, gt=0, description="Smallest accepted width or height, in pixels.")
    max_aspect_ratio: float = Field(8.0, gt=1, description="Largest accepted ratio of the long side to the short side.")
    working_max_side: int = Field(1024, ge=256, description="Images are processed with their longest side at most this; output is scaled back to the input size.")


class GeometrySettings(BaseModel):
    min_visibility: float = Field(0.5, ge=0, le=1, description="Pose landmarks below this visibility are not trusted.")
    min_detection_confidence: float = Field(0.5, ge=0, le=1, description="MediaPipe detection confidence for pose and face.")
    fallback_detection_confidence: float = Field(0.1, ge=0, le=1, description="Second-pass pose detection threshold, used only when segmentation clearly sees a person.")
    fallback_min_person_fraction: float = Field(0.05, ge=0, le=1, description="Segmented person area (fraction of the photo) that allows the second pose pass.")
    second_face_min_confidence: float = Field(0.75, ge=0, le=1, description="A second face this confident (and not tiny) means several people.")
    second_face_min_relative_area: float = Field(0.15, ge=0, le=1, description="A second face smaller than this fraction of the main face's area is ignored (posters, crowds far behind).")
    min_shoulder_fraction: float = Field(0.06, ge=0, le=1, description="A person whose shoulder width is below this fraction of the image's longest side is too small.")
    mask_max_side: int = Field(256, ge=32, description="The person mask handed between stages is kept at most this size (geometry stays small).")


class GarmentSettings(BaseModel):
    background_tolerance: float = Field(18.0, gt=0, description="Lab colour distance from the background colour below which a pixel is background.")
    max_border_noise: float = Field(14.0, gt=0, description="Border pixels spread (Lab std) above this means the background is not plain.")
    min_area_fraction: float = Field(0.04, gt=0, lt=1, description="A garment mask smaller than this fraction of the photo means no garment.")
    max_area_fraction: float = Field(0.92, gt=0, lt=1, description="A garment mask larger than this fraction of the photo means no separable garment.")
    person_margin_px: int = Field(6, ge=0, description="The garment may extend this far (at working size) beyond the person mask.")
    edge_feather_px: float = Field(1.5, ge=0, description="Softness of the garment's edge in the composite.")
    shading_strength: float = Field(0.35, ge=0, le=1, description="How much of the person's shading (folds, light) is carried onto the flat garment.")
    grid_max_side: int = Field(256, ge=32, description="The warp's thin-plate spline is evaluated on a grid this size and interpolated (it is smooth).")
    refine_seam_px: int = Field(9, ge=0, description="The refine mask extends this far past the garment's edge so seams are repainted.")


class RefinerSettings(BaseModel):
    model_dir: Path | None = Field(None, description="Local directory of a diffusers inpainting pipeline; unset runs the pipeline without stage 3.")
    verify_checksums: bool = Field(True, description="Check the weight files against the manifest's sha256 when loading.")
    steps: int = Field(20, ge=1, le=100, description="Default denoising steps.")
    max_steps: int = Field(50, ge=1, le=200, description="Largest 'steps' a request may ask for.")
    strength: float = Field(0.55, gt=0, le=1, description="How far the refiner may move from the composite (moderate keeps garment colours).")
    guidance_scale: float = Field(1.0, ge=0, description="Classifier-free guidance; 1.0 disables the unconditional pass.")
    colour_lock: float = Field(1.0, ge=0, le=1, description="How far the refined garment region's broad colour and light are moved back to the composite's (fine detail stays); 0 = off.")
    prompt: str = Field("a photo of a person wearing the garment, natural light, detailed fabric", description="Text conditioning, encoded once at load time.")
    resolution: int = Field(512, ge=64, description="The refiner works with the crop's longest side scaled to this (a multiple of 8).")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field("auto", description="auto: bf16 on CUDA, fp32 on CPU.")
    compile: bool = Field(False, description="torch.compile the UNet (slower start, faster steady state on GPU).")
    max_batch_size: int = Field(4, ge=1, description="Largest batch the refiner denoises at once (@serve.batch).")
    batch_wait_timeout_s: float = Field(0.05, ge=0, description="How long the refiner waits to fill a batch.")


class StoreSettings(BaseModel):
    database_url: str = Field("sqlite:///{data_dir}/pexir.db", description="SQLAlchemy URL for metadata; '{data_dir}' expands. PostgreSQL works the same.")
    blob_url: str = Field("{data_dir}/blobs", description="Directory or fsspec URL (e.g. s3://bucket/prefix) for encrypted image bytes.")
    encryption_key: SecretStr | None = Field(None, description="Base64 32-byte AES-GCM key for blobs at rest; unset: a key file outside the blob directory is made once.")
    key_file: Path = Field(Path("~/.config/pexir-tryon/blob.key"), description="Where the generated blob key lives when encryption_key is unset.")
    upload_ttl_s: int = Field(DAY_S - 600, gt=0, le=DAY_S, description="Uploaded person photos become unreadable this many seconds after upload; TTL + sweep interval may not exceed 24 h.")
    result_ttl_s: int = Field(DAY_S - 600, gt=0, le=DAY_S, description="Unsaved results become unreadable this many seconds after processing; TTL + sweep interval may not exceed 24 h.")
    sweep_interval_s: float = Field(300.0, gt=0, le=3600, description="How often the sweeper deletes what has expired (bytes are gone by TTL + this).")

    @model_validator(mode="after")
    def _deleted_within_a_day(self) -> "StoreSettings":
        # The promise is "deleted", not just "unreadable", within 24 h: the last sweep must fall inside it.
        for name in ("upload_ttl_s", "result_ttl_s"):
            if getattr(self, name) + self.sweep_interval_s > DAY_S:
                raise ValueError(f"{name} + sweep_interval_s must be at most 24 h ({DAY_S} s) so expired photos are deleted within a day")
        return self


class AlibabaSettings(BaseModel):
    api_key: SecretStr | None = Field(None, description="DashScope API key (Beijing region); from the environment or a secrets file only.")
    api_key_file: Path | None = Field(None, description="File holding the DashScope API key, if not given directly.")
    base_url: str = Field("https://dashscope.aliyuncs.com/api/v1", description="DashScope API base URL.")
    model: Literal["aitryon", "aitryon-plus"] = Field("aitryon-plus", description="Try-on model.")
    use_refiner: bool = Field(False, description="Run aitryon-refiner after the try-on (needs a known gender; see docs).")
    refiner_gender: Literal["woman", "man"] | None = Field(None, description="Gender parameter the refiner requires; only used when use_refiner is on.")
    poll_interval_s: float = Field(3.0, gt=0, description="First poll interval; grows with backoff up to poll_max_interval_s.")
    poll_max_interval_s: float = Field(5.0, gt=0, description="Longest poll interval.")
    deadline_s: float = Field(300.0, gt=0, description="Give up on a try-on after this many seconds (the task is cancelled if still pending).")
    http_timeout_s: float = Field(30.0, gt=0, description="Timeout of one HTTP call to the provider.")
    retry_base_s: float = Field(1.0, gt=0, description="First jittered backoff after a 429, 5xx or network error.")
    retry_max_s: float = Field(10.0, gt=0, description="Longest backoff between retries (retries stop at the deadline).")
    cancel_timeout_s: float = Field(5.0, gt=0, description="How long one cancel call may take while cleaning up.")
    purge_wait_s: float = Field(10.0, gt=0, description="How long a user purge waits for that user's jobs to clean up.")
    max_submits_per_s: float = Field(10.0, gt=0, description="Account-wide submit rate limit, shared by all replicas.")
    max_concurrent_tasks: int = Field(5, ge=1, description="Account-wide running-task limit, shared by all replicas.")
    oss_endpoint: str | None = Field(None, description="OSS endpoint of the operator's bucket (mainland China, public).")
    oss_region: str = Field("cn-beijing", description="OSS region of the bucket.")
    oss_bucket: str | None = Field(None, description="The operator's OSS bucket that inputs are uploaded to and deleted from.")
    oss_access_key_id: SecretStr | None = Field(None, description="OSS access key id.")
    oss_access_key_secret: SecretStr | None = Field(None, description="OSS access key secret.")
    oss_prefix: str = Field("pexir-tryon/tmp/", description="Key prefix for uploaded inputs.")
    presign_ttl_s: int = Field(3600, gt=0, le=DAY_S, description="Lifetime of the presigned GET URLs handed to the provider.")
    allow_dashscope_temp_storage_kept_48h: bool = Field(False, description="Opt-in: upload via DashScope temporary storage, which keeps files 48 h and cannot delete them (breaks the 24 h rule).")


class ServeSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Address the HTTP proxy binds; any non-loopback address needs API keys.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    ray_address: str | None = Field(None, description="Ray cluster to join; unset starts a local Ray.")
    ray_auth_mode: Literal["disabled", "token"] = Field("disabled", description="Ray's own token auth (RAY_AUTH_MODE); 'token' for shared clusters.")
    object_spilling: bool = Field(False, description="Ray object spilling; off so geometry never reaches disk.")
    request_timeout_s: float = Field(120.0, gt=0, description="Whole-request deadline in the ingress.")
    stage_timeout_s: float = Field(60.0, gt=0, description="Deadline of one call to a pipeline stage; a dead replica answers 503 instead of hanging.")
    max_header_bytes: int = Field(16 * 1024, gt=0, description="Requests whose headers are longer are refused with 431.")
    body_read_timeout_s: float = Field(30.0, gt=0, description="A request body still arriving after this is refused (slow clients).")
    max_ongoing_requests: int = Field(4, ge=1, description="Try-ons one ingress replica runs at once; more wait in its queue.")
    max_queued_requests: int = Field(16, ge=0, description="Try-ons waiting per ingress replica before answering 503 overloaded.")
    geometry_batch_size: int = Field(8, ge=1, description="Largest batch of the geometry deployment (@serve.batch).")
    warp_batch_size: int = Field(8, ge=1, description="Largest batch of the warp deployment (@serve.batch).")
    batch_wait_timeout_s: float = Field(0.01, ge=0, description="How long geometry/warp deployments wait to fill a batch.")
    retry_after_s: int = Field(2, ge=1, description="Retry-After sent with 503 overloaded.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PEXIR_", env_nested_delimiter="__", extra="forbid")

    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N' for every stage; auto uses the CPU when there is no GPU.")
    backend: Literal["local", "alibaba"] = Field("local", description="Which backend serves try-ons.")
    request_backends: list[Literal["local", "alibaba"]] = Field(default_factory=list, description="Backends a request may name; empty: requests cannot choose.")
    data_dir: Path = Field(Path("~/.local/share/pexir-tryon"), description="Where the embedded store keeps its database and blobs.")
    log_level: str = Field("INFO", description="Log level of the structured JSON logs.")
    default_seed: int = Field(0, ge=0, description="Seed used when a request gives none.")
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Accepted bearer keys (PEXIR_API_KEYS, comma-separated); empty: loopback clients only, no key needed.",
    )
    images: ImageSettings = ImageSettings()
    geometry: GeometrySettings = GeometrySettings()
    garment: GarmentSettings = GarmentSettings()
    refiner: RefinerSettings = RefinerSettings()
    store: StoreSettings = StoreSettings()
    alibaba: AlibabaSettings = AlibabaSettings()
    serve: ServeSettings = ServeSettings()

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda") and not (value.startswith("cuda:") and value[5:].isdigit()):
            raise ValueError("device must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value):
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()


def resolve_device(device: str) -> str:
    """'auto' → 'cuda' when a GPU is visible, else 'cpu'."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
