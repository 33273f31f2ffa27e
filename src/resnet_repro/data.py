"""The data a run trains on: `build_data` reads `cfg.data` and builds the CIFAR-10 tensor loaders
(cifar.py) or the ImageNet folder loaders (imagenet.py); both follow loader.py's protocol."""

from __future__ import annotations

from omegaconf import DictConfig

from .cifar import build_cifar
from .imagenet import build_imagenet
from .loader import Data


def build_data(cfg: DictConfig, engine, seed: int) -> Data:
    """The loaders for a run's config, on `engine`'s device and, under DDP, its share of each batch."""
    t = cfg.train
    if cfg.data.family == "cifar":
        return build_cifar(cfg.data, int(t.batch_size), int(t.eval_batch_size), engine.device, seed,
                           engine.rank, engine.world)
    return build_imagenet(cfg, engine, seed)
