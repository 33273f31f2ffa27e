"""ImageNet's transforms (Sec. 3.4), on uint8 tensors of any device: the sizes, scale augmentation,
crop and flip, the test-time views, PCA lighting and the mean. The CPU pipeline runs the geometry in
DataLoader workers, the GPU pipeline on images nvJPEG decoded; both draw from the same counter-based
generator in the same order, so a seed gives the same views either way. Float work (mean, lighting)
always runs on the training device, on whole batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from .errors import UserError
from .results import TEST_PROTOCOLS

# AlexNet's PCA of ImageNet RGB pixels (scaled to [0, 1]), as in fb.resnet.torch: eigenvalues and
# eigenvectors (columns). Lighting adds eigvec @ (alpha * eigval) with alpha ~ N(0, 0.1) per image.
PCA_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
PCA_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009],
                           [-0.5808, -0.0045, -0.8140],
                           [-0.5836, -0.6948, 0.4203]])
# torchvision's pretrained weights expect (x - mean) / std per channel, x in [0, 1].
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)



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


# ---------------------------------------------------------------------------------------------
# Geometry (uint8 tensors: in CPU workers, or on the GPU after nvJPEG)


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


@dataclass(frozen=True)
class CropDraw:
    """The random choices of one training view: its shorter side, the crop's corner, the mirror."""

    short: int
    top: int
    left: int
    flip: bool


def image_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Counter-based: image `index` of `epoch` gets the same draws in any worker, on any device."""
    return np.random.default_rng([seed, epoch, index])


def draw_crop(h: int, w: int, rng: np.random.Generator, sizes: Sizes) -> CropDraw:
    """Scale augmentation, a random crop and a random horizontal flip (Sec. 3.4), drawn from the
    image's size alone, so the file need not be decoded where the draw is made."""
    short = int(rng.integers(sizes.scale_range[0], sizes.scale_range[1] + 1))
    rh, rw = resized_dims(h, w, short)
    top, left = int(rng.integers(0, rh - sizes.crop + 1)), int(rng.integers(0, rw - sizes.crop + 1))
    return CropDraw(short, top, left, bool(rng.random() < 0.5))


def apply_crop(img: torch.Tensor, draw: CropDraw, crop: int) -> torch.Tensor:
    """The view `draw` describes, from a uint8 (3, H, W) image on any device."""
    img = resize_short(img, draw.short)[:, draw.top : draw.top + crop, draw.left : draw.left + crop]
    return img.flip(-1) if draw.flip else img


def random_crop_flip(img: torch.Tensor, rng: np.random.Generator, sizes: Sizes) -> torch.Tensor:
    return apply_crop(img, draw_crop(*img.shape[-2:], rng, sizes), sizes.crop)


def augment(img: torch.Tensor, rng: np.random.Generator, sizes: Sizes, lighting_std: float
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """One training view and its PCA-lighting coefficients alpha (3,), in the order both pipelines draw
    them (crop and flip, then alpha): decoding in CPU workers and on the GPU give the same draws."""
    view = random_crop_flip(img, rng, sizes)
    return view, torch.from_numpy(rng.normal(0.0, lighting_std, 3).astype(np.float32))


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


def lighting_shift(alpha: torch.Tensor, eigval: torch.Tensor = PCA_EIGVAL, eigvec: torch.Tensor = PCA_EIGVEC
                   ) -> torch.Tensor:
    """RGB offsets (N, 3) for PCA coefficients alpha (N, 3): eigvec @ (alpha * eigval), with the PCA on
    alpha's device (`Normalize` keeps a copy there, made once: a copy per batch would sync the host)."""
    return (alpha * eigval) @ eigvec.T


class Normalize:
    """uint8 batches to float: x/255 (+ lighting) - mean (/ std), every constant on the device once. A
    per-pixel mean image is resized to inputs of other sizes (multi-scale testing)."""

    def __init__(self, mean: torch.Tensor, device: torch.device, std: torch.Tensor | None = None):
        self.mean = mean.to(device, torch.float32)
        self.std = None if std is None else std.to(device, torch.float32).view(3, 1, 1)
        self.eigval, self.eigvec = PCA_EIGVAL.to(device), PCA_EIGVEC.to(device)
        self._resized: dict[tuple[int, int], torch.Tensor] = {}

    def lighting(self, alpha: torch.Tensor) -> torch.Tensor:
        """`lighting_shift` with the device's copy of the PCA."""
        return lighting_shift(alpha, self.eigval, self.eigvec)

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
