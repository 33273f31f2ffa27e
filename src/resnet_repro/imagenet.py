"""ImageNet-style data from ImageFolder trees (Sec. 3.4): folders, decoding, the mean image, and the
loaders a run and `eval` read (the transforms themselves are in imagenet_transforms).

Two pipelines give the same batches for a seed. CPU decoding: DataLoader workers decode
(torchvision.io), scale, crop and flip to uint8. Device decoding (`engine.decode`, auto = on a GPU with
nvJPEG): workers only read file bytes, and the GPU decodes whole batches and does the geometry. Either
way the device does the float work (mean, lighting) on whole batches. Every random choice for image i
of epoch e is drawn from (seed, e, i) and the order from (seed, e), so a resumed run, any number of
workers and either pipeline see the same batches.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset
from torchvision.io import read_file

from .config import data_root
from .data import Data, epoch_generator
from .device_decode import DecodeStreams, ahead, decode_bytes, decode_on, decodes_on_device, to_device
from .errors import UserError, WriteFailed
from .hardware import usable_cores
from .imagenet_transforms import Normalize, Sizes, augment, image_rng, resized_dims, sizes_from_config, test_views
from .results import TEST_PROTOCOLS, DataId, atomic_write_bytes

# torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec (not a dependency here);
# they still work and are fast, and the warning would otherwise come once per decoded image.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

MEANS = ("pixel", "channel")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")

# ---------------------------------------------------------------------------------------------
# Folders and files


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
    return decode_bytes(read_file(path), path)


def image_size(path: str) -> tuple[int, int]:
    """(H, W) from the file header, without decoding the pixels."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
    return h, w


# ---------------------------------------------------------------------------------------------
# Datasets (what a worker computes for one index) and loaders


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)  # workers decode; the main process owns the cores for the model


def _loader(dataset: Dataset, batches: list[list[int]], workers: int, device: torch.device,
            collate_fn=None) -> DataLoader:
    workers = min(workers, usable_cores())
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=device.type == "cuda",
                      worker_init_fn=_one_thread if workers else None, prefetch_factor=4 if workers else None,
                      collate_fn=collate_fn)


class TrainSet(Dataset):
    """CPU decoding: a worker decodes, crops and flips one image."""

    def __init__(self, files: ImageFiles, sizes: Sizes, lighting_std: float, seed: int, epoch: int):
        self.files, self.sizes, self.lighting_std, self.seed, self.epoch = files, sizes, lighting_std, seed, epoch

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        view, alpha = augment(read_image(self.files.paths[i]), image_rng(self.seed, self.epoch, i), self.sizes,
                              self.lighting_std)
        return view, self.files.labels[i], alpha


class TestSet(Dataset):
    def __init__(self, files: ImageFiles, sizes: Sizes, protocol: str):
        self.files, self.sizes, self.protocol = files, sizes, protocol

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return test_views(read_image(self.files.paths[i]), self.protocol, self.sizes), self.files.labels[i], i


class FileBytes(Dataset):
    """Device decoding: a worker only reads the file."""

    def __init__(self, files: ImageFiles):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return read_file(self.files.paths[i]), self.files.labels[i], i


def _byte_batch(items: list) -> tuple[torch.Tensor, list[int], torch.Tensor, list[int]]:
    """Files differ in length: one flat byte tensor and the lengths (one shared-memory block per
    batch; a list of many small tensors runs workers out of file descriptors)."""
    data, labels, index = zip(*items)
    return torch.cat(data), [len(d) for d in data], torch.tensor(labels), list(index)


class FolderLoader:
    """Training batches from an ImageFolder split, with the protocol of data.py (as cifar.TensorImageLoader):
    `len()` batches per epoch and `epoch(e, start_batch)` yielding normalised (images, labels) on
    the device. Under DDP each rank takes every `world`-th image of the same global batch.
    `decode_on_device`: workers read bytes, the device decodes and augments (nvJPEG on a GPU)."""

    def __init__(self, files: ImageFiles, sizes: Sizes, normalize: Normalize, batch_size: int,
                 device: torch.device, seed: int = 0, lighting_std: float = 0.1, workers: int = 0,
                 rank: int = 0, world: int = 1, decode_on_device: bool = False):
        self.files, self.sizes, self.normalize = files, sizes, normalize
        self.batch_size, self.device, self.seed, self.lighting_std = batch_size, device, seed, lighting_std
        self.workers, self.rank, self.world, self.decode_on_device = workers, rank, world, decode_on_device

    def with_seed(self, seed: int) -> FolderLoader:
        """The same files and settings under another seed: another run's batches."""
        return FolderLoader(self.files, self.sizes, self.normalize, self.batch_size, self.device, seed,
                            self.lighting_std, self.workers, self.rank, self.world, self.decode_on_device)

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
        crops = self._device_crops(epoch, start_batch) if self.decode_on_device else self._worker_crops(epoch, start_batch)
        for x, y, alpha in crops:
            yield self.normalize(x, self.normalize.lighting(alpha)), y

    def _worker_crops(self, epoch: int, start_batch: int):
        dataset = TrainSet(self.files, self.sizes, self.lighting_std, self.seed, epoch)
        for x, y, alpha in _loader(dataset, self.batches(epoch, start_batch), self.workers, self.device):
            yield (x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True),  # pinned by the loader
                   alpha.to(self.device, non_blocking=True))

    def _device_crops(self, epoch: int, start_batch: int):
        """Workers read the files; the device decodes and augments each batch a batch ahead of training."""
        batches = _loader(FileBytes(self.files), self.batches(epoch, start_batch), self.workers, self.device,
                          _byte_batch)
        streams = DecodeStreams(self.device)

        def crops(batch):
            flat, lengths, y, index = batch
            with streams.decoding():
                images = decode_on(self.device, list(flat.split(lengths)), [self.files.paths[i] for i in index])
            with streams.augmenting(images):
                views, alphas = zip(*(augment(img, image_rng(self.seed, epoch, i), self.sizes, self.lighting_std)
                                      for img, i in zip(images, index)))
                return streams.done((torch.stack(views), to_device(y, self.device),
                                     to_device(torch.stack(alphas), self.device)))

        yield from ahead(map(crops, batches), streams)


class TestLoader:
    """Validation batches `(views, labels)` for one protocol: views is a tensor (center crop) or a
    list of tensors (10 crops; or 2 flips x each scale, where all images of a batch share one
    resized shape, so batches group images by aspect ratio)."""

    def __init__(self, files: ImageFiles, sizes: Sizes, protocol: str, normalize: Normalize, batch_size: int,
                 device: torch.device, workers: int = 0, rank: int = 0, world: int = 1,
                 decode_on_device: bool = False):
        if protocol not in TEST_PROTOCOLS:
            raise UserError(f"unknown test protocol {protocol!r}: choose one of {', '.join(TEST_PROTOCOLS)}")
        self.files, self.sizes, self.protocol, self.normalize = files, sizes, protocol, normalize
        self.batch_size, self.device, self.workers, self.rank, self.world = batch_size, device, workers, rank, world
        self.decode_on_device = decode_on_device
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
        mine = [b for b in (b[self.rank :: self.world] for b in self.batches()) if b]
        if self.decode_on_device:
            streams = DecodeStreams(self.device)

            def views_of(batch):
                flat, lengths, y, index = batch
                with streams.decoding():
                    images = decode_on(self.device, list(flat.split(lengths)), [self.files.paths[i] for i in index])
                with streams.augmenting(images):
                    per_image = [test_views(img, self.protocol, self.sizes) for img in images]
                    views = [self.normalize(torch.stack(v)) for v in zip(*per_image)]
                    return streams.done((views, to_device(y, self.device), torch.tensor(index)))

            loader = _loader(FileBytes(self.files), mine, self.workers, self.device, _byte_batch)
            yield from ahead(map(views_of, loader), streams)
            return
        for views, y, idx in _loader(TestSet(self.files, self.sizes, self.protocol), mine, self.workers, self.device):
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
    except WriteFailed:  # a read-only data folder: recompute it next time
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


def decode_workers(cfg: DictConfig) -> int:
    """`engine.workers`, or none for the tiny sample of a smoke run (`data.tiny.workers`)."""
    return int(cfg.data.tiny.workers if cfg.data.sample else cfg.engine.workers)


def mean_normalize(data_cfg: DictConfig, train_files: ImageFiles, sizes: Sizes, workers: int,
                   device: torch.device) -> Normalize:
    """Normalisation by the training split's mean image (or colour), as `data.mean` says (cached)."""
    count = int(setting(data_cfg, "mean_images"))
    return Normalize(mean_for(train_files, sizes, data_cfg.mean, count, workers), device)


def build_imagenet(cfg: DictConfig, engine, seed: int = 0) -> Data:
    """Loaders for an ImageNet-style run, the training loader under `seed` (runner.build_data calls it)."""
    d = cfg.data
    sizes = sizes_from_config(d)
    train_files, val_files = load_splits(d, data_root(cfg.data_dir))
    workers = decode_workers(cfg)
    normalize = mean_normalize(d, train_files, sizes, workers, engine.device)
    on_device = decodes_on_device(str(cfg.engine.get("decode", "auto")), engine.device)
    train = FolderLoader(train_files, sizes, normalize, int(cfg.train.batch_size), engine.device, seed,
                         float(d.lighting_std), workers, engine.rank, engine.world, on_device)

    def test_loader(protocol: str) -> TestLoader:
        return TestLoader(val_files, sizes, protocol, normalize, int(cfg.engine.eval_batch_size), engine.device,
                          workers, engine.rank, engine.world, on_device)

    test = test_loader(d.eval_protocol)
    finals = {p: test if p == d.eval_protocol else test_loader(p) for p in d.get("final_protocols", [])}
    dataset = DataId(d.name, "_".join(part for part in (d.get("subset"), "sample" if d.sample else "") if part))
    pipeline = (f"nvJPEG decode + augmentation on the GPU, {workers} workers reading files" if on_device
                else f"decode + geometry in {workers} CPU workers, mean and lighting on the device")
    return Data(train, test, len(train_files.classes), sizes.crop, dataset, "val", len(train_files),
                final_tests=finals, pipeline=pipeline)
