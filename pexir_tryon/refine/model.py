"""Loading the refiner: verified files, one copy of the weights, text conditioning computed once.

``load_refiner_model`` is called once per process (per Ray Serve replica). It checks the model
directory against its manifest, loads the diffusers inpainting pipeline that ``model_index.json``
names (through ``AutoPipelineForInpainting``, so SD-1.5/2.x and SDXL inpainting checkpoints, and
plain text-to-image checkpoints of those families, load without code changes), casts it to
bf16 on CUDA / fp32 on the CPU, makes sure attention runs through PyTorch SDPA, optionally
``torch.compile``s the UNet, encodes the prompt (and the empty negative prompt) once, and then
drops the text encoders and tokenizers: requests never encode text.
"""

from __future__ import annotations

import gc
import inspect
import json
import logging
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pexir_tryon.config import RefinerSettings, resolve_device
from pexir_tryon.errors import TryOnError
from pexir_tryon.refine.manifest import verify_model_dir

log = logging.getLogger(__name__)

# Components we never load: the NSFW checker (and its image processor) and IP-Adapter image encoder.
_UNUSED_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")
_TEXT_COMPONENTS = ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3")
# encode_prompt results, by how many tensors a family returns
_CONDITIONING_NAMES = {
    2: ("prompt_embeds", "negative_prompt_embeds"),  # SD 1.x / 2.x
    4: ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"),  # SDXL, SD3
}


@dataclass(eq=False)
class RefinerModel:
    """A loaded refiner: the pipeline (weights on ``device``) and the precomputed text conditioning."""

    pipe: Any
    device: Any  # torch.device
    dtype: Any  # torch.dtype
    conditioning: dict[str, Any]  # name -> tensor with batch dimension 1, on device, in dtype
    prompt: str
    name: str
    model_dir: Path
    vae_scale_factor: int
    info: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def conditioning_for(self, batch_size: int) -> dict[str, Any]:
        return {key: value.repeat(batch_size, *([1] * (value.dim() - 1))) for key, value in self.conditioning.items()}


def resolve_dtype(setting: str, device: str):
    import torch

    if setting == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[setting]


def load_refiner_model(model_dir: Path, device: str, settings: RefinerSettings) -> RefinerModel:
    """Verify, load and prepare the refiner in ``model_dir``; raises TryOnError("model_not_available")."""
    started = time.perf_counter()
    model_dir = Path(model_dir).expanduser()
    manifest = verify_model_dir(model_dir, check_sha256=settings.verify_checksums)
    verified_s = time.perf_counter() - started

    import torch

    device = resolve_device(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TryOnError("model_not_available", f"refiner device {device!r} requested but no CUDA GPU is visible")
    dtype = resolve_dtype(settings.dtype, device)
    pipe = _load_pipeline(model_dir, dtype, manifest.get("variant"))
    try:
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        attention = _use_sdpa(pipe)
        if getattr(pipe, "vae", None) is not None and hasattr(pipe.vae, "enable_slicing"):
            pipe.vae.enable_slicing()  # decode one image at a time: lower peak memory, batch-independent
        conditioning = _encode_prompt(pipe, settings.prompt, torch.device(device))
    except TryOnError:
        raise
    except Exception as exc:  # noqa: BLE001 — any failure here means the model cannot serve
        raise TryOnError("model_not_available", f"refiner in {model_dir} could not be prepared: {type(exc).__name__}: {exc}") from exc
    for name in _TEXT_COMPONENTS:
        if getattr(pipe, name, None) is not None:
            setattr(pipe, name, None)
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    if settings.compile:
        pipe.unet.compile()  # in place: the pipeline keeps its UNet object and config
    info = {
        "pipeline": type(pipe).__name__,
        "unet_in_channels": int(pipe.unet.config.in_channels),
        "dtype": str(dtype).removeprefix("torch."),
        "device": device,
        "attention": attention,
        "compile": settings.compile,
        "variant": manifest.get("variant"),
        "verify_seconds": round(verified_s, 3),
        "load_seconds": round(time.perf_counter() - started, 3),
        "parameters": sum(p.numel() for m in (pipe.unet, pipe.vae) for p in m.parameters()),
    }
    log.info("refiner loaded", extra={"refiner": manifest["name"], **info})
    return RefinerModel(
        pipe=pipe,
        device=torch.device(device),
        dtype=dtype,
        conditioning=conditioning,
        prompt=settings.prompt,
        name=manifest["name"],
        model_dir=model_dir,
        vae_scale_factor=int(getattr(pipe, "vae_scale_factor", 8)),
        info=info,
    )


def _load_pipeline(model_dir: Path, dtype, variant: str | None):
    from diffusers import AutoPipelineForInpainting

    try:
        index = json.loads((model_dir / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TryOnError("model_not_available", f"refiner in {model_dir}: model_index.json is unreadable ({type(exc).__name__})") from None
    kwargs: dict[str, Any] = {name: None for name in _UNUSED_COMPONENTS if name in index}
    if "safety_checker" in index:
        kwargs["requires_safety_checker"] = False
    try:
        with warnings.catch_warnings():
            # diffusers >= 0.36 renamed torch_dtype to dtype; 0.35 knows only torch_dtype
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = AutoPipelineForInpainting.from_pretrained(
                str(model_dir),
                torch_dtype=dtype,
                variant=variant,
                use_safetensors=True,
                local_files_only=True,
                **kwargs,
            )
    except Exception as exc:  # noqa: BLE001 — diffusers raises many types for a broken directory
        raise TryOnError(
            "model_not_available", f"refiner in {model_dir} could not be loaded ({index.get('_class_name')}): {type(exc).__name__}: {exc}"
        ) from exc
    if getattr(pipe, "unet", None) is None or getattr(pipe, "vae", None) is None:
        raise TryOnError("model_not_available", f"refiner in {model_dir}: {type(pipe).__name__} is not a UNet+VAE inpainting pipeline")
    return pipe


def _use_sdpa(pipe) -> str:
    """Make sure UNet and VAE attention runs through torch's scaled_dot_product_attention."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    names = set()
    for module in (pipe.unet, pipe.vae):
        processors = getattr(module, "attn_processors", {})
        if any(type(p).__name__ == "AttnProcessor" for p in processors.values()):
            module.set_attn_processor(AttnProcessor2_0())
            processors = module.attn_processors
        names.update(type(p).__name__ for p in processors.values())
    return ",".join(sorted(names)) or "none"


def _encode_prompt(pipe, prompt: str, device) -> dict[str, Any]:
    """The prompt's and the empty negative prompt's embeddings, batch 1, computed once."""
    import torch

    if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
        raise TryOnError("model_not_available", f"{type(pipe).__name__}: the model has no text encoder/tokenizer to encode the prompt")
    params = inspect.signature(pipe.encode_prompt).parameters
    wanted = {"prompt": prompt, "device": device, "num_images_per_prompt": 1, "do_classifier_free_guidance": True, "negative_prompt": ""}
    with torch.no_grad():
        result = pipe.encode_prompt(**{key: value for key, value in wanted.items() if key in params})
    names = _CONDITIONING_NAMES.get(len(result))
    call_params = inspect.signature(pipe.__call__).parameters
    if names is None or any(name not in call_params for name in names):
        raise TryOnError("model_not_available", f"{type(pipe).__name__}: unsupported text conditioning ({len(result)} tensors)")
    dtype = pipe.unet.dtype
    return {name: tensor.detach().to(device=device, dtype=dtype) for name, tensor in zip(names, result)}
