"""Write the drawn flat-lay test garments as PNG files: `python scripts/make_garments.py OUT_DIR`."""

import sys
from pathlib import Path

from PIL import Image

from pexir_tryon.samples import GARMENT_SAMPLES, garment_sample


def main(out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in GARMENT_SAMPLES:
        Image.fromarray(garment_sample(name)).save(out / f"{name}.png")
        print(out / f"{name}.png")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out/garments")
