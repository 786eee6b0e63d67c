"""Write a full-size SD-1.5-inpainting refiner with random weights to OUT_DIR (GPU benchmarks).

Same architecture as stable-diffusion-v1-5/stable-diffusion-inpainting (9-channel UNet of
~860 M parameters, the x8 VAE, the CLIP ViT-L/14 text tower), so the same FLOPs and memory;
random weights, so its images are noise. ~1.07 B parameters, ~2.1 GB on disk (fp16 variant),
about a minute and ~9 GB of RAM to build. Never downloads anything.

    python scripts/make_full_size_refiner.py OUT_DIR [--seed 0] [--check]

--check only constructs the modules and prints their parameter counts (writes nothing).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pexir_tryon.refine.synthetic import build_random_refiner, tokenizer_vocab


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, nargs="?")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--check", action="store_true", help="construct the modules, print sizes, write nothing")
    args = parser.parse_args(argv)
    if args.check:
        from pexir_tryon.refine.synthetic import _components

        for module in _components("full", len(tokenizer_vocab()), args.seed)[:3]:
            print(f"{type(module).__name__}: {sum(p.numel() for p in module.parameters()) / 1e6:.1f} M parameters")
        return
    if args.out_dir is None:
        parser.error("OUT_DIR is required unless --check")
    out = build_random_refiner(args.out_dir, "full", seed=args.seed)
    print(f"full-size random refiner written to {out}")


if __name__ == "__main__":
    main()
