"""CIFAR-10 as one in-memory tensor (Sec. 4.2): per-pixel mean subtraction, pad-4 random crop and
horizontal flip done on whole batches on the training device, in the spirit of airbench.

The folder reader takes any valid `cifar-10-batches-py/` (no checksum gate), or the real sample that
ships in the package; `TensorImageLoader` follows the protocol of data.py.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from omegaconf import DictConfig

from .config import DATA_ENV, check_batch_fits, data_root
from .data import Data, epoch_generator
from .errors import UserError
from .results import DataId

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


@dataclass
class ImageArrays:
    """uint8 images (N, 3, H, W) and int64 labels for a train and a test split."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    test_split: str = "test"  # or "val" when the 45k/5k split is used


def _find_cifar_folder(root: Path) -> Path | None:
    for candidate in (root, root / CIFAR_FOLDER):
        if (candidate / "data_batch_1").is_file() and (candidate / "test_batch").is_file():
            return candidate
    return None


def _read_batches(folder: Path, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for name in names:
        try:
            with open(folder / name, "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch["labels"], dtype=np.int64))
        except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
            raise UserError(f"cannot read CIFAR-10 batch {folder / name} ({e}); delete the folder and fetch it again")
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def read_cifar10_folder(folder: Path) -> ImageArrays:
    """Read the standard python-pickle batches. No md5 gate: any valid folder loads."""
    train_x, train_y = _read_batches(folder, [f"data_batch_{i}" for i in range(1, 6)])
    test_x, test_y = _read_batches(folder, ["test_batch"])
    return ImageArrays(train_x, train_y, test_x, test_y)


def read_bundled_sample() -> ImageArrays:
    """The small real CIFAR-10 sample shipped in the package (see sample/README.md)."""
    with resources.files("resnet_repro.sample").joinpath("cifar10_sample.npz").open("rb") as f:
        z = np.load(f)
        arrays = {k: torch.from_numpy(z[k]) for k in ("train_images", "train_labels", "test_images", "test_labels")}
    return ImageArrays(**arrays)


def load_cifar10(root: Path | None, download: bool) -> ImageArrays:
    if root is None:
        raise UserError(
            f"no CIFAR-10 data folder given: pass --data-dir DIR or set {DATA_ENV}=DIR "
            f"(DIR holds {CIFAR_FOLDER}/; with network access add data.download=true to fetch it)"
        )
    folder = _find_cifar_folder(root)
    if folder is None and download:
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(CIFAR_URL, str(root))
        except Exception as e:  # network errors come in many types; all mean the same to the user
            raise UserError(f"could not download CIFAR-10 into {root} ({type(e).__name__}); put {CIFAR_FOLDER}/ there by hand")
        folder = _find_cifar_folder(root)
    if folder is None:
        raise UserError(
            f"CIFAR-10 not found in {root}: put {CIFAR_FOLDER}/ there (or point --data-dir / {DATA_ENV} at it), "
            f"or add data.download=true to fetch it"
        )
    return read_cifar10_folder(folder)


def hold_out_validation(arrays: ImageArrays, size: int, seed: int = 0) -> ImageArrays:
    """The paper's 45k/5k train/val split (used to choose the schedule): the last `size` of a
    fixed shuffle become the evaluation set."""
    if not 0 < size < len(arrays.train_labels):
        raise UserError(f"data.validation_size={size}: hold out fewer than the {len(arrays.train_labels):,} training "
                        f"images of this folder")
    order = torch.randperm(len(arrays.train_labels), generator=torch.Generator().manual_seed(seed))
    train, val = order[:-size], order[-size:]
    return ImageArrays(
        arrays.train_images[train], arrays.train_labels[train],
        arrays.train_images[val], arrays.train_labels[val], test_split="val",
    )


class TensorImageLoader:
    """Batches from a normalised image tensor held on the training device (`from_images` makes one).

    Training: shuffle by `randperm`, random crops from a pre-padded tensor and flips by a random
    mask, all drawn once per epoch from (seed, epoch). Evaluation: the original images in order. Under
    DDP each of `world` processes takes every `world`-th image of the same global batch.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, size: int, batch_size: int, train: bool,
                 seed: int = 0, pad: int = 0, rank: int = 0, world: int = 1):
        self.images, self.labels, self.size = images, labels, size  # images padded by `pad` where training
        self.batch_size, self.train, self.seed, self.pad = batch_size, train, seed, pad
        self.rank, self.world = rank, world

    @classmethod
    def from_images(cls, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor, batch_size: int,
                    train: bool, device: torch.device, seed: int = 0, pad: int = 4, rank: int = 0,
                    world: int = 1) -> TensorImageLoader:
        """uint8 images to [0, 1] on `device`, the per-pixel mean subtracted, padded for the crops."""
        x = images.to(device).float().div_(255).sub_(mean.to(device))
        pad = pad if train else 0
        if pad:  # zero padding after mean subtraction pads with the mean image's colour
            x = torch.nn.functional.pad(x, (pad,) * 4)
        return cls(x, labels.to(device), images.shape[-1], batch_size, train, seed, pad, rank, world)

    def with_seed(self, seed: int) -> TensorImageLoader:
        """The same images (shared, not copied) under another seed: another run's batches."""
        return TensorImageLoader(self.images, self.labels, self.size, self.batch_size, self.train, seed, self.pad,
                                 self.rank, self.world)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def __iter__(self):
        return self.epoch(0)

    def epoch(self, epoch: int, start_batch: int = 0):
        n, device = len(self.labels), self.images.device
        if not self.train:
            for start in range(start_batch * self.batch_size, n, self.batch_size):
                idx = torch.arange(start, min(start + self.batch_size, n), device=device)[self.rank :: self.world]
                yield self.images[idx], self.labels[idx]
            return
        gen = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=gen)
        shifts = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=gen)
        flips = torch.rand(n, generator=gen) < 0.5
        # drawn on the host so every device sees the same numbers; pinned + non_blocking so the copy
        # (once per epoch) does not drain the GPU's queue
        order, shifts, flips = (_to_device(t, device) for t in (order, shifts, flips))
        for b in range(start_batch, len(self)):
            batch = order[b * self.batch_size : (b + 1) * self.batch_size][self.rank :: self.world]
            yield crop(self.images, shifts[batch], self.size, flips[batch], batch), self.labels[batch]


def crop(padded: torch.Tensor, shifts: torch.Tensor, size: int, flips: torch.Tensor | None = None,
         which: torch.Tensor | None = None) -> torch.Tensor:
    """Crops of `size` at offsets `shifts` (N, 2) = (dy, dx) of the images `which` (N,) of `padded`
    (default: all, in order), mirrored left-right where `flips` (N,) is true. One gather straight from
    the padded set: no copy of whole padded images, the flip folded into the column indices."""
    _, c, h, w = padded.shape
    ar = torch.arange(size, device=padded.device)
    which = torch.arange(len(shifts), device=padded.device) if which is None else which
    cols = ar if flips is None else torch.where(flips[:, None], size - 1 - ar, ar)
    rows, cols = shifts[:, 0:1] + ar, shifts[:, 1:2] + cols  # (N, size) each
    planes = (which.view(-1, 1) * c + torch.arange(c, device=padded.device)) * (h * w)  # (N, c)
    n = len(which)
    return padded.take(planes.view(n, c, 1, 1) + (rows * w).view(n, 1, size, 1) + cols.view(n, 1, 1, size))


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def evenly_spaced_tests(arrays, k: int):
    """The smoke profile's quick check: k test images evenly spaced through the test set, and labelled so.
    Evenly spaced, not the first k, because a test set stored by class (the bundled sample) would
    otherwise be scored on its first classes only."""
    n = len(arrays.test_labels)
    if k < n:
        keep = torch.linspace(0, n - 1, k).round().long()
        arrays.test_images, arrays.test_labels = arrays.test_images[keep], arrays.test_labels[keep]
        arrays.test_split = f"{arrays.test_split}[{k} of {n}, evenly spaced]"
    return arrays


def run_images(cfg: DictConfig) -> tuple[ImageArrays, DataId]:
    """The images of a run's config: the folder `data_dir` (or the bundled sample), split and subset as it says."""
    d = cfg.data
    if d.sample:
        arrays = read_bundled_sample()
    else:
        arrays = load_cifar10(data_root(cfg.data_dir), bool(cfg.download))
    dataset = DataId(d.get("name", "cifar10"), "sample" if d.sample else "",
                     "original" if d.sample else d.get("encoding", "original"))
    if d.validation_size:
        arrays = hold_out_validation(arrays, int(d.validation_size))
    if d.get("test_subset"):
        arrays = evenly_spaced_tests(arrays, int(d.test_subset))
    return arrays, dataset


def build_cifar(cfg: DictConfig, engine, seed: int = 0) -> Data:
    """The CIFAR-10 loaders of a run's config, on the engine's device, the training loader under `seed`."""
    d = cfg.data
    arrays, dataset = run_images(cfg)
    check_batch_fits(int(cfg.train.batch_size), len(arrays.train_labels), d.validation_size or 0)
    mean = arrays.train_images.float().div(255).mean(0)  # per-pixel mean image (Sec. 4.2)
    train = TensorImageLoader.from_images(arrays.train_images, arrays.train_labels, mean, int(cfg.train.batch_size),
                                          True, engine.device, seed, int(d.pad), engine.rank, engine.world)
    test = TensorImageLoader.from_images(arrays.test_images, arrays.test_labels, mean,
                                         int(cfg.engine.eval_batch_size), False, engine.device, rank=engine.rank,
                                         world=engine.world)
    return Data(train, test, 10, 32, dataset, arrays.test_split, len(arrays.train_labels), top5=False,
                pixel_mean=mean)
