"""Write a tiny randomly initialised SD-1.5-inpainting-shaped refiner to OUT_DIR.

Same on-disk layout as the real model (model_index.json, unet/ vae/ text_encoder/ tokenizer/
scheduler/, fp16 safetensors) plus pexir-manifest.json with real sha256s, so tests load it
through the production code path. Takes a few seconds on a CPU; a few MB on disk.

    python scripts/make_tiny_refiner.py OUT_DIR [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pexir_tryon.refine.synthetic import build_random_refiner


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    out = build_random_refiner(args.out_dir, "tiny", seed=args.seed)
    print(f"tiny refiner written to {out}")


if __name__ == "__main__":
    main()
