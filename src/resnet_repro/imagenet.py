"""ImageNet-style data from ImageFolder trees (Sec. 3.4): folders, sizes, augmentation, test-time
views, the mean image, and the loaders a run and `eval` read.

Training: the shorter side resized at random in [256, 480], a random 224x224 crop or its horizontal
flip, the per-pixel mean subtracted, AlexNet's PCA colour ("lighting") augmentation. Testing: a center
crop (Fig. 4's curves), the standard 10-crop (Tables 2, 3), or the fully-convolutional form with
scores averaged over shorter sides {224, 256, 384, 480, 640} (Table 4; and mirrors if asked). Every size is a
config value, so the same code runs ImageNet, the 64-px proxy and 32-px smoke tests.

Workers decode (torchvision.io) and crop to uint8; the device does the float work (mean, lighting)
on whole batches. Every random choice for image i of epoch e is drawn from (seed, e, i) and the
order from (seed, e), so a resumed run, and any number of workers, sees the same batches.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as TF

from .config import data_root
from .errors import UserError
from .loader import Data, epoch_generator
from .results import TEST_PROTOCOLS, atomic_write_bytes

# torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec (not a dependency here);
# they still work and are fast, and the warning would otherwise come once per decoded image.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

MEANS = ("pixel", "channel")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")

# AlexNet's PCA of ImageNet RGB pixels (scaled to [0, 1]), as in fb.resnet.torch: eigenvalues and
# eigenvectors (columns). Lighting adds eigvec @ (alpha * eigval) with alpha ~ N(0, 0.1) per image.
PCA_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
PCA_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009],
                           [-0.5808, -0.0045, -0.8140],
                           [-0.5836, -0.6948, 0.4203]])
# torchvision's pretrained weights expect (x - mean) / std per channel, x in [0, 1].
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------
# Sizes and folders


@dataclass(frozen=True)
class Sizes:
    scale_range: tuple[int, int]  # training: shorter side drawn uniformly from [lo, hi]
    crop: int  # training and center / 10-crop testing
    test_resize: int  # center / 10-crop testing: shorter side before cropping
    multiscale: tuple[int, ...]  # fully-convolutional testing: shorter sides
    multiscale_flips: bool = False  # also score each scale's mirror image (not in the paper's text)

    def __post_init__(self):
        lo, hi = self.scale_range
        if not self.crop <= lo <= hi:
            raise UserError(f"data.scale_range {list(self.scale_range)} must satisfy crop ({self.crop}) <= lo <= hi")
        if self.test_resize < self.crop:
            raise UserError(f"data.test_resize ({self.test_resize}) must be at least data.crop ({self.crop})")
        if not self.multiscale or min(self.multiscale) < 1:
            raise UserError(f"data.multiscale must list positive shorter sides, got {list(self.multiscale)}")


def sizes_from_config(data_cfg: DictConfig) -> Sizes:
    """The configured sizes; with `data.sample` the small ones of `data.tiny`."""
    src = data_cfg.tiny if data_cfg.sample else data_cfg
    lo, hi = (int(v) for v in src.scale_range)
    return Sizes((lo, hi), int(src.crop), int(src.test_resize), tuple(int(s) for s in src.multiscale),
                 bool(data_cfg.get("multiscale_flips", False)))


@dataclass
class ImageFiles:
    """An ImageFolder split: file paths, class indices and the sorted class names (wnids)."""

    paths: list[str]
    labels: list[int]
    classes: list[str]
    folder: Path

    def __len__(self) -> int:
        return len(self.paths)


def find_split(root: Path, split: str) -> Path:
    """`root/split`, or `root/<one subfolder>/split` (e.g. the extracted `imagenette_64px/`)."""
    if (root / split).is_dir():
        return root / split
    if root.is_dir():
        nested = [c / split for c in sorted(root.iterdir()) if (c / split).is_dir()]
        if len(nested) == 1:
            return nested[0]
        archives = sorted(p.name for p in root.glob("*.tar*"))
        if archives:
            raise UserError(f"no {split}/ folder in {root}; extract the archive first, e.g. "
                            f"`tar xzf {root / archives[0]} -C SOMEWHERE` and pass --data-dir SOMEWHERE")
    raise UserError(f"no {split}/ folder in {root}: --data-dir must hold train/ and val/ with one subfolder "
                    f"of images per class (the ImageFolder layout)")


def list_images(folder: Path, per_class: int | None = None, max_classes: int | None = None,
                classes: list[str] | None = None) -> ImageFiles:
    """Images of an ImageFolder split, sorted; at most `per_class` per class and the first
    `max_classes` classes (small runs). `classes` fixes the class list (val must match train)."""
    found = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if classes is None:
        classes = found[:max_classes] if max_classes else found
    missing = [c for c in classes if c not in found]
    if missing:
        raise UserError(f"{folder} lacks class folders {missing[:3]}{'...' if len(missing) > 3 else ''} "
                        f"that the training split has")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(e.path for e in os.scandir(folder / name)
                       if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
        files = files[:per_class] if per_class else files
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise UserError(f"no images in {folder} (expected {folder}/<class>/*.JPEG)")
    return ImageFiles(paths, labels, list(classes), folder)


def read_image(path: str) -> torch.Tensor:
    """uint8 (3, H, W) RGB; grey and CMYK JPEGs are converted."""
    try:
        return decode_image(read_file(path), mode=ImageReadMode.RGB)
    except RuntimeError as e:
        raise UserError(f"cannot decode image {path} ({e})")


def image_size(path: str) -> tuple[int, int]:
    """(H, W) from the file header, without decoding the pixels."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
    return h, w


# ---------------------------------------------------------------------------------------------
# Geometry (uint8 tensors, in workers)


def resized_dims(h: int, w: int, short: int) -> tuple[int, int]:
    """Shorter side to `short`, aspect ratio kept (longer side truncated, as torchvision does)."""
    if h <= w:
        return short, max(short, int(short * w / h))
    return max(short, int(short * h / w)), short


def resize_short(img: torch.Tensor, short: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    dims = resized_dims(h, w, short)
    if dims == (h, w):
        return img
    return TF.resize(img, list(dims), antialias=True)


def random_crop_flip(img: torch.Tensor, rng: np.random.Generator, sizes: Sizes) -> torch.Tensor:
    """Scale augmentation, a random crop and a random horizontal flip (Sec. 3.4)."""
    img = resize_short(img, int(rng.integers(sizes.scale_range[0], sizes.scale_range[1] + 1)))
    h, w = img.shape[-2:]
    top, left = int(rng.integers(0, h - sizes.crop + 1)), int(rng.integers(0, w - sizes.crop + 1))
    img = img[:, top : top + sizes.crop, left : left + sizes.crop]
    return img.flip(-1) if rng.random() < 0.5 else img


def test_views(img: torch.Tensor, protocol: str, sizes: Sizes) -> list[torch.Tensor]:
    """The views one test image is scored on; their softmax scores are averaged."""
    if protocol == "center":
        return [TF.center_crop(resize_short(img, sizes.test_resize), [sizes.crop])]
    if protocol == "10crop":  # 4 corners and center, and their flips
        return list(TF.ten_crop(resize_short(img, sizes.test_resize), [sizes.crop]))
    if protocol == "multiscale":  # whole image at each shorter side (and its mirror, if asked)
        views = []
        for short in sizes.multiscale:
            scaled = resize_short(img, short)
            views += [scaled, scaled.flip(-1)] if sizes.multiscale_flips else [scaled]
        return views
    raise UserError(f"unknown test protocol {protocol!r}: choose one of {', '.join(TEST_PROTOCOLS)}")


# ---------------------------------------------------------------------------------------------
# Float work on the device: mean subtraction and lighting


def lighting_shift(alpha: torch.Tensor) -> torch.Tensor:
    """RGB offsets (N, 3) for PCA coefficients alpha (N, 3): eigvec @ (alpha * eigval)."""
    return (alpha * PCA_EIGVAL.to(alpha.device)) @ PCA_EIGVEC.to(alpha.device).T


class Normalize:
    """uint8 batches to float: x/255 (+ lighting) - mean (/ std). A per-pixel mean image is resized
    to inputs of other sizes (multi-scale testing)."""

    def __init__(self, mean: torch.Tensor, device: torch.device, std: torch.Tensor | None = None):
        self.mean = mean.to(device, torch.float32)
        self.std = None if std is None else std.to(device, torch.float32).view(3, 1, 1)
        self._resized: dict[tuple[int, int], torch.Tensor] = {}

    def mean_for(self, h: int, w: int) -> torch.Tensor:
        if self.mean.shape[-2:] in ((1, 1), (h, w)):
            return self.mean
        if (h, w) not in self._resized:
            self._resized[(h, w)] = F.interpolate(self.mean[None], size=(h, w), mode="bilinear",
                                                  align_corners=False)[0]
        return self._resized[(h, w)]

    def __call__(self, x: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        x = x.float().div_(255)
        if shift is not None:
            x.add_(shift.view(-1, 3, 1, 1))
        x.sub_(self.mean_for(*x.shape[-2:]))
        return x if self.std is None else x.div_(self.std)


def torchvision_normalize(device: torch.device) -> Normalize:
    return Normalize(torch.tensor(TORCHVISION_MEAN).view(3, 1, 1), device, torch.tensor(TORCHVISION_STD))


# ---------------------------------------------------------------------------------------------
# Datasets (what a worker computes for one index) and loaders


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)  # workers decode; the main process owns the cores for the model


def _loader(dataset: Dataset, batches: list[list[int]], workers: int, device: torch.device) -> DataLoader:
    workers = min(workers, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=device.type == "cuda",
                      worker_init_fn=_one_thread if workers else None, prefetch_factor=4 if workers else None)


class TrainSet(Dataset):
    def __init__(self, files: ImageFiles, sizes: Sizes, lighting_std: float, seed: int, epoch: int):
        self.files, self.sizes, self.lighting_std, self.seed, self.epoch = files, sizes, lighting_std, seed, epoch

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, self.epoch, i])  # counter-based: (seed, epoch, index)
        view = random_crop_flip(read_image(self.files.paths[i]), rng, self.sizes)
        alpha = torch.from_numpy(rng.normal(0.0, self.lighting_std, 3).astype(np.float32))
        return view, self.files.labels[i], alpha


class TestSet(Dataset):
    def __init__(self, files: ImageFiles, sizes: Sizes, protocol: str):
        self.files, self.sizes, self.protocol = files, sizes, protocol

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return test_views(read_image(self.files.paths[i]), self.protocol, self.sizes), self.files.labels[i], i


class FolderLoader:
    """Training batches from an ImageFolder split, with the protocol of data.TensorImageLoader:
    `len()` batches per epoch and `epoch(e, start_batch)` yielding normalised (images, labels) on
    the device. Under DDP each rank takes every `world`-th image of the same global batch."""

    def __init__(self, files: ImageFiles, sizes: Sizes, normalize: Normalize, batch_size: int,
                 device: torch.device, seed: int = 0, lighting_std: float = 0.1, workers: int = 0,
                 rank: int = 0, world: int = 1):
        self.files, self.sizes, self.normalize = files, sizes, normalize
        self.batch_size, self.device, self.seed, self.lighting_std = batch_size, device, seed, lighting_std
        self.workers, self.rank, self.world = workers, rank, world

    def __len__(self) -> int:
        return max(1, len(self.files) // self.batch_size)  # a split smaller than a batch gives one short batch

    def __iter__(self):
        return self.epoch(0)

    def batches(self, epoch: int, start_batch: int = 0) -> list[list[int]]:
        """This rank's image indices for each remaining batch of `epoch`: a function of (seed, epoch)."""
        order = torch.randperm(len(self.files), generator=epoch_generator(self.seed, epoch))
        return [order[b * self.batch_size : (b + 1) * self.batch_size][self.rank :: self.world].tolist()
                for b in range(start_batch, len(self))]

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        dataset = TrainSet(self.files, self.sizes, self.lighting_std, self.seed, epoch)
        for x, y, alpha in _loader(dataset, self.batches(epoch, start_batch), self.workers, self.device):
            x, alpha = x.to(self.device, non_blocking=True), alpha.to(self.device, non_blocking=True)
            yield self.normalize(x, lighting_shift(alpha)), y.to(self.device, non_blocking=True)


class TestLoader:
    """Validation batches `(views, labels)` for one protocol: views is a tensor (center crop) or a
    list of tensors (10 crops; or 2 flips x each scale, where all images of a batch share one
    resized shape, so batches group images by aspect ratio)."""

    def __init__(self, files: ImageFiles, sizes: Sizes, protocol: str, normalize: Normalize, batch_size: int,
                 device: torch.device, workers: int = 0, rank: int = 0, world: int = 1):
        if protocol not in TEST_PROTOCOLS:
            raise UserError(f"unknown test protocol {protocol!r}: choose one of {', '.join(TEST_PROTOCOLS)}")
        self.files, self.sizes, self.protocol, self.normalize = files, sizes, protocol, normalize
        self.batch_size, self.device, self.workers, self.rank, self.world = batch_size, device, workers, rank, world
        self._batches: list[list[int]] | None = None

    def batches(self) -> list[list[int]]:
        if self._batches is None:
            n = len(self.files)
            if self.protocol != "multiscale":
                self._batches = [list(range(s, min(s + self.batch_size, n))) for s in range(0, n, self.batch_size)]
            else:  # fewer images per batch for the large views; one shape per batch
                per_batch = max(1, self.batch_size * self.sizes.crop ** 2 // max(self.sizes.multiscale) ** 2)
                groups: dict[tuple, list[int]] = {}
                for i, path in enumerate(self.files.paths):
                    h, w = image_size(path)
                    groups.setdefault(tuple(resized_dims(h, w, s) for s in self.sizes.multiscale), []).append(i)
                self._batches = [idx[s : s + per_batch] for idx in groups.values()
                                 for s in range(0, len(idx), per_batch)]
        return self._batches

    def __len__(self) -> int:
        return len(self.batches())

    def indexed(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]]:
        """(views, labels, image indices) for this rank."""
        mine = [b[self.rank :: self.world] for b in self.batches()]
        dataset = TestSet(self.files, self.sizes, self.protocol)
        for views, y, idx in _loader(dataset, [b for b in mine if b], self.workers, self.device):
            yield [self.normalize(v.to(self.device, non_blocking=True)) for v in views], y.to(self.device), idx

    def __iter__(self):
        for views, y, _ in self.indexed():
            yield (views[0] if self.protocol == "center" else views), y


# ---------------------------------------------------------------------------------------------
# Mean image


def compute_mean(files: ImageFiles, sizes: Sizes, mode: str, count: int, workers: int = 0) -> torch.Tensor:
    """Mean of the center crops (shorter side test_resize) of `count` training images drawn with a
    fixed seed: (3, crop, crop) per pixel, or (3, 1, 1) per channel; pixels in [0, 1]."""
    if mode not in MEANS:
        raise UserError(f"unknown data.mean {mode!r}: choose pixel or channel")
    pick = torch.randperm(len(files), generator=torch.Generator().manual_seed(0))[:count].tolist()
    total, n = torch.zeros(3, sizes.crop, sizes.crop, dtype=torch.float64), 0
    dataset = TestSet(files, sizes, "center")
    for views, _, _ in _loader(dataset, [pick[s : s + 64] for s in range(0, len(pick), 64)], workers,
                               torch.device("cpu")):
        total += views[0].double().sum(0)
        n += len(views[0])
    mean = (total / (255 * n)).float()
    return mean if mode == "pixel" else mean.mean((1, 2), keepdim=True)


def mean_for(files: ImageFiles, sizes: Sizes, mode: str, count: int, workers: int = 0) -> torch.Tensor:
    """`compute_mean`, cached in `<data>/.resnet_repro/` when that folder is writable."""
    count = min(count, len(files))
    name = f"mean-{mode}-{sizes.crop}-{sizes.test_resize}-{count}-of-{len(files)}-{len(files.classes)}c.pt"
    cache = files.folder.parent / ".resnet_repro" / name
    if cache.exists():
        try:
            return torch.load(cache, map_location="cpu", weights_only=True)
        except Exception:  # a damaged cache is recomputed
            pass
    mean = compute_mean(files, sizes, mode, count, workers)
    try:
        buf = io.BytesIO()
        torch.save(mean, buf)
        atomic_write_bytes(cache, buf.getvalue())
    except OSError:  # read-only data folder: recompute next time
        pass
    return mean


# ---------------------------------------------------------------------------------------------
# The data of a run


def load_splits(data_cfg: DictConfig, root: Path | None) -> tuple[ImageFiles, ImageFiles]:
    if root is None:
        raise UserError("no ImageNet folder given: pass --data-dir DIR (or set $RESNET_REPRO_DATA) where DIR "
                        "holds train/ and val/ in the ImageFolder layout (one subfolder of images per class)")
    tiny = data_cfg.tiny if data_cfg.sample else None
    train = list_images(find_split(root, data_cfg.train_dir), tiny and int(tiny.train_per_class),
                        tiny and int(tiny.max_classes))
    val = list_images(find_split(root, data_cfg.val_dir), tiny and int(tiny.val_per_class), classes=train.classes)
    return train, val


def setting(data_cfg: DictConfig, key: str):
    """A value that `data.tiny` replaces when `data.sample` is set."""
    return data_cfg.tiny[key] if data_cfg.sample and key in data_cfg.tiny else data_cfg[key]


def mean_normalize(data_cfg: DictConfig, train_files: ImageFiles, sizes: Sizes, workers: int,
                   device: torch.device) -> Normalize:
    """Normalisation by the training split's mean image (or colour), as `data.mean` says (cached)."""
    count = int(setting(data_cfg, "mean_images"))
    return Normalize(mean_for(train_files, sizes, data_cfg.mean, count, workers), device)


def build_imagenet(cfg: DictConfig, engine, seed: int) -> Data:
    """Loaders for an ImageNet-style run (called by data.build_data)."""
    d, t = cfg.data, cfg.train
    if cfg.model.family != "imagenet":
        raise UserError(f"data {d.name} needs an ImageNet model (family imagenet); profile=proxy and "
                        f"data=imagenette are for the ImageNet experiments (table2, table3, table4, fig4)")
    sizes = sizes_from_config(d)
    train_files, val_files = load_splits(d, data_root(d.root))
    workers = int(setting(d, "workers"))
    normalize = mean_normalize(d, train_files, sizes, workers, engine.device)
    train = FolderLoader(train_files, sizes, normalize, int(t.batch_size), engine.device, seed,
                         float(d.lighting_std), workers, engine.rank, engine.world)

    def test_loader(protocol: str) -> TestLoader:
        return TestLoader(val_files, sizes, protocol, normalize, int(t.eval_batch_size), engine.device, workers,
                          engine.rank, engine.world)

    test = test_loader(d.eval_protocol)
    finals = {p: test if p == d.eval_protocol else test_loader(p) for p in d.get("final_protocols", [])}
    name = f"{d.name}_sample" if d.sample else d.name
    return Data(train, test, len(train_files.classes), sizes.crop, name, "val", len(train_files), final_tests=finals)
