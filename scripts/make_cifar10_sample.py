"""Draw the bundled CIFAR-10 sample (src/resnet_repro/sample/cifar10_sample.npz).

    python scripts/make_cifar10_sample.py ../shared/data/cifar10/cifar10_lossless.npz

Takes a class-balanced random subset (seed 0): 100 training and 50 test images per class from
the pixel-exact lossless copy, and stores raw uint8 pixels (lossless) with labels and the
original CIFAR-10 file names.
"""

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

PER_CLASS = {"train": 100, "test": 50}
OUT = Path(__file__).resolve().parents[1] / "src/resnet_repro/sample/cifar10_sample.npz"


def main(npz_path: str) -> None:
    z = np.load(npz_path, allow_pickle=False)
    buf, off = z["image_bytes"].tobytes(), z["offsets"]
    labels, split, names = z["labels"], z["split"], z["filenames"]
    rng = np.random.default_rng(0)
    out = {}
    for split_id, split_name in enumerate(["train", "test"]):
        chosen = np.concatenate([
            np.sort(rng.choice(np.flatnonzero((split == split_id) & (labels == c)), PER_CLASS[split_name], replace=False))
            for c in range(10)
        ])
        images = np.stack([
            np.asarray(Image.open(io.BytesIO(buf[off[i]:off[i + 1]])).convert("RGB")).transpose(2, 0, 1)
            for i in chosen
        ])
        out[f"{split_name}_images"] = images  # uint8 (N, 3, 32, 32)
        out[f"{split_name}_labels"] = labels[chosen].astype(np.int64)
        out[f"{split_name}_filenames"] = names[chosen]
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main(sys.argv[1])
