"""Small ImageFolder trees of real JPEG files for the ImageNet-pipeline tests.

Images have varied sizes and aspect ratios (landscape, portrait, square) and a class-dependent
colour, so a net can tell the classes apart; a few are grey-scale or CMYK, as some ImageNet files are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# (height, width): shorter sides 40..72 px, aspect ratios 3:4 to 2:1
SIZES = [(48, 64), (64, 48), (56, 56), (40, 80), (72, 54), (45, 60)]


def write_image_folder(root: Path, classes: int = 3, train_per_class: int = 6, val_per_class: int = 2,
                       sizes: list[tuple[int, int]] = SIZES, seed: int = 0) -> Path:
    """Write root/train/<class>/*.JPEG and root/val/<class>/*.JPEG; returns root."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    k = 0
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array([255 * (c % 3 == 0), 255 * (c % 3 == 1), 255 * (c % 3 == 2)], dtype=np.float64)
            for i in range(per_class):
                h, w = sizes[k % len(sizes)]
                k += 1
                noise = rng.normal(0, 40, (h, w, 3))
                pixels = np.clip(0.6 * colour + 50 + noise, 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels)
                if k % 7 == 0:  # ImageNet holds some grey-scale and CMYK JPEGs; the reader must make them RGB
                    image = image.convert("L")
                elif k % 11 == 0:
                    image = image.convert("CMYK")
                image.save(folder / f"{split}_{c}_{i}.JPEG", quality=90)
    return root
