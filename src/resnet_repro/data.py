"""What every loader gives the one training loop, CIFAR-10 tensors and ImageNet folders alike, and what
a run's results say about its data.

A loader has `len(loader)` batches per epoch and `loader.epoch(e, start_batch)` yielding `(images, labels)`
on the training device. The order and augmentation of epoch `e` depend only on `(seed, e)`, so a resumed
run sees exactly the batches an uninterrupted one would. A loader is built with its seed;
`loader.with_seed(s)` is the same images under another seed (another run), sharing their memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .results import DataId


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # Counter-based: the randomness of an epoch is a pure function of (seed, epoch).
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


@dataclass
class Data:
    """The loaders of one run and what the results say about its data."""

    train: object  # a loader as above
    test: object  # evaluation batches `(views, labels)`: views a tensor, or a list of test-time views
    num_classes: int
    image_size: int
    dataset: DataId  # named in every result
    test_split: str  # "test", "val", or "test[200 of 10000, evenly spaced]" for a subset
    train_size: int
    top5: bool = True  # report top-5 error (the paper gives none for CIFAR-10)
    final_tests: dict = field(default_factory=dict)  # protocol -> test loader, scored once at the end (Tables 2-4)
    pipeline: str = ""  # ImageNet: where images are decoded and augmented (goes into the summary)
    pixel_mean: torch.Tensor | None = None  # CIFAR-10: the training images' mean, which every input has subtracted
