"""Randomly initialised inpainting pipelines written in the real on-disk layout.

Tests and benchmarks need a refiner without downloading weights. These builders make a Stable
Diffusion 1.5-inpainting shaped pipeline (9-channel UNet, x8 VAE, CLIP text encoder, DDIM
scheduler) with random weights and write it with ``save_pretrained``, so loading goes through
exactly the code path used for the real model (``model_index.json``, one folder per component,
safetensors weights in the ``fp16`` variant, a ``pexir-manifest.json`` with real sha256s).

* ``tiny``: a few hundred thousand parameters; a 512x384 refine takes well under a second on a CPU.
* ``full``: the SD-1.5-inpainting architecture (same layer shapes, so the same FLOPs and memory),
  ~1.07 B parameters, ~2.1 GB on disk in fp16. For GPU benchmarks only.

The tokenizer is a byte-level CLIP BPE tokenizer with no merges (each character is a token),
written as ``vocab.json``/``merges.txt``/``tokenizer_config.json``/``special_tokens_map.json``
like the real SD-1.5 tokenizer folder. It needs no download and tokenizes any prompt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

Size = Literal["tiny", "full"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# model_index.json entries the real SD-1.5-inpainting repository has; we do not ship these
# components (the loader passes =None for them), exactly as with the real download.
_REAL_OPTIONAL_ENTRIES = {
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
}


def _bytes_to_unicode() -> dict[int, str]:
    """The byte → printable character table of CLIP/GPT-2 byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def tokenizer_vocab() -> dict[str, int]:
    """512 byte tokens (plain and end-of-word) plus the two special tokens, as in CLIP's vocab order."""
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return vocab


def write_tokenizer(folder: Path) -> int:
    """Write the tokenizer in the SD-1.5 layout; returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / stale).unlink(missing_ok=True)
    vocab = tokenizer_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")

    def added(content: str) -> dict:
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}

    config = {
        "add_prefix_space": False,
        "bos_token": added(BOS),
        "do_lower_case": True,
        "eos_token": added(EOS),
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": EOS,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": added(EOS),
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return len(vocab)


def _components(size: Size, vocab_size: int, seed: int):
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    if size == "tiny":
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=9,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=(2, 4),
            norm_num_groups=32,
        )
        # four blocks keep the real x8 latent downsampling; 8-16 channels keep it cheap
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(8, 8, 16, 16),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=512,
            scaling_factor=0.18215,
        )
        text_config = CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            projection_dim=32,
            hidden_act="quick_gelu",
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    elif size == "full":
        # stable-diffusion-v1-5/stable-diffusion-inpainting unet/config.json
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=9,
            out_channels=4,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=768,
            attention_head_dim=8,
            norm_num_groups=32,
            downsample_padding=1,
            flip_sin_to_cos=True,
            freq_shift=0,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=512,
            scaling_factor=0.18215,
        )
        # CLIP ViT-L/14 text tower; the real vocabulary size keeps the embedding table's memory,
        # although this tokenizer only produces the first 514 ids.
        text_config = CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            max_position_embeddings=77,
            projection_dim=768,
            hidden_act="quick_gelu",
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    else:
        raise ValueError(f"unknown size {size!r}")
    text_encoder = CLIPTextModel(text_config)
    # stable-diffusion-v1-5/stable-diffusion-inpainting scheduler/scheduler_config.json
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return unet, vae, text_encoder, scheduler


def build_random_refiner(out_dir: Path, size: Size = "tiny", *, seed: int = 0, variant: str | None = "fp16") -> Path:
    """Build a random-weight SD-1.5-inpainting-shaped pipeline into ``out_dir`` and write its manifest.

    Weights are stored in fp16 (``*.fp16.safetensors``, the variant the real manifest uses);
    the loader casts them to the run dtype. Returns ``out_dir``.
    """
    import torch
    from diffusers import StableDiffusionInpaintPipeline
    from transformers import CLIPTokenizer

    from pexir_tryon.refine.manifest import write_local_manifest

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tokenizer(out_dir / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(out_dir / "tokenizer")
    unet, vae, text_encoder, scheduler = _components(size, vocab_size, seed)
    if variant == "fp16":
        for module in (unet, vae, text_encoder):
            torch.nn.Module.to(module, torch.float16)  # plain cast; no module here must stay fp32
    pipe = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True, variant=variant)
    # save_pretrained wrote the tokenizer as tokenizer.json; put back the SD-1.5 layout
    write_tokenizer(out_dir / "tokenizer")

    index_path = out_dir / "model_index.json"
    index = json.loads(index_path.read_text())
    index.update(_REAL_OPTIONAL_ENTRIES)
    index.pop("image_encoder", None)
    index["requires_safety_checker"] = True
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    write_local_manifest(
        out_dir,
        name=f"{size}-random-sd15-inpainting",
        source={"built_by": f"scripts/make_{'tiny' if size == 'tiny' else 'full_size'}_refiner.py", "seed": seed},
        licence="Apache-2.0 (random weights, no upstream model)",
        variant=variant,
    )
    return out_dir
