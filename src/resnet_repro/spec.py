"""What names a net, without torch: the depth tables, the shortcut options and `ModelSpec`.

`ModelSpec` is the one place a net's name is made (`resnet110-A`, `plain56`, `resnet50-B-v1.5`),
parsed back and checked, so the CLI can reject a bad depth before importing torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple

SHORTCUTS = ("none", "A", "B", "C")  # "none" is the plain twin (Sec. 3.3)
STRIDES = ("v1", "v1.5")  # where a down-sampling bottleneck puts its stride: first 1x1 (paper) or 3x3
ARCHS = ("plain", "resnet")
# The model settings a net's name spells out (`ModelSpec.name`): overriding one trains another net, not a variant
NET_KEYS = ("model.family", "model.arch", "model.n", "model.depth", "model.shortcut", "model.stride_on")

# depth -> (block, blocks per stage) (Table 1). CIFAR depth is 6n+2 with n blocks per stage (Sec. 4.2).
IMAGENET_LAYERS: dict[int, tuple[str, list[int]]] = {
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
    152: ("bottleneck", [3, 8, 36, 3]),
}


def cifar_depth(n: int) -> int:
    return 6 * n + 2


def check_arch_shortcut(arch: str, shortcut: str) -> str:
    """The shortcut the blocks get: "none" for a plain net, else A, B or C."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: choose plain or resnet")
    if shortcut not in SHORTCUTS[1:]:
        raise ValueError(f"unknown shortcut {shortcut!r}: choose A, B or C")
    return "none" if arch == "plain" else shortcut


_NAME = re.compile(r"^(plain|resnet)(\d+)(?:-([ABC]))?(-v1\.5)?$")


@dataclass(frozen=True)
class ModelSpec:
    """What identifies a net in run names, tables and figures."""

    family: str  # cifar | imagenet
    arch: str  # plain | resnet
    depth: int
    shortcut: str = "A"
    stride_on: str = "v1"

    def __post_init__(self):
        check_arch_shortcut(self.arch, self.shortcut)
        if self.family == "cifar":
            if self.depth < 8 or (self.depth - 2) % 6:
                raise ValueError(f"a CIFAR net has 6n+2 layers with n >= 1 (20, 32, 44, 56, 110, ...), got {self.depth}")
        elif self.family == "imagenet":
            if self.depth not in IMAGENET_LAYERS:
                raise ValueError(f"ImageNet depth must be one of {sorted(IMAGENET_LAYERS)}, got {self.depth}")
        else:
            raise ValueError(f"unknown model family {self.family!r}: choose cifar or imagenet")
        if self.stride_on not in STRIDES:
            raise ValueError(f"unknown stride placement {self.stride_on!r}: choose one of {', '.join(STRIDES)}")

    @property
    def n(self) -> int:
        """Blocks per stage of a CIFAR net (depth 6n+2)."""
        return (self.depth - 2) // 6

    @property
    def name(self) -> str:
        base = f"{self.arch}{self.depth}"
        if self.arch == "plain":
            return base
        suffix = "" if self.stride_on == "v1" else "-v1.5"
        return f"{base}-{self.shortcut}{suffix}"

    @classmethod
    def parse(cls, name: str, family: str | None = None) -> ModelSpec:
        """The spec a `name` came from; the family is read from the depth unless given."""
        m = _NAME.match(name)
        if not m:
            raise ValueError(f"not a model name: {name!r} (e.g. resnet20-A, plain56, resnet50-B-v1.5)")
        arch, depth, shortcut, v15 = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        if family is None:  # 50 and 152 are also 6n+2: there an option-A name is a CIFAR net
            cifar_like = (depth - 2) % 6 == 0 and shortcut in (None, "A") and not v15
            family = "imagenet" if depth in IMAGENET_LAYERS and not cifar_like else "cifar"
        default = "A" if family == "cifar" else "B"
        return cls(family, arch, depth, shortcut or default, "v1.5" if v15 else "v1")

    @property
    def pretty(self) -> str:
        """As the paper writes it: "ResNet-110", "plain-56", "ResNet-34 B"."""
        if self.arch == "plain":
            return f"plain-{self.depth}"
        extra = "" if self.shortcut == "A" else f" {self.shortcut}"  # option A goes unnamed (Table 2, Fig. 4), B and C are named (Table 3)
        return f"ResNet-{self.depth}{extra}" + (" (v1.5)" if self.stride_on == "v1.5" else "")

    def overrides(self) -> list[str]:
        """The Hydra model overrides that select this net."""
        size = f"model.n={self.n}" if self.family == "cifar" else f"model.depth={self.depth}"
        out = [f"model.arch={self.arch}", size]
        if self.arch == "resnet":
            out.append(f"model.shortcut={self.shortcut}")
        if self.stride_on != "v1":
            out.append(f"model.stride_on={self.stride_on}")
        return out

    def command(self, experiment: str = "custom") -> str:
        """A command line that trains this net."""
        groups = "" if self.family == "cifar" else " data=imagenet model=imagenet train=imagenet"
        return f"resnet-repro run {experiment}{groups} " + " ".join(self.overrides())


class Footprint(NamedTuple):
    """What a net costs, counted from its shape without building it (tested equal to the built net's counts)."""

    params: int
    multiply_adds: int  # of every conv and fc layer for one image: the paper's "FLOPs" (Table 1)
    activations: int  # conv outputs for one image, each of which training keeps for the backward pass


CIFAR_WIDTHS = (16, 32, 64)
IMAGENET_WIDTHS = (64, 128, 256, 512)
EXPANSION = {"basic": 1, "bottleneck": 4}


def footprint(spec: ModelSpec, image_size: int, num_classes: int) -> Footprint:
    """Parameters, multiply-adds and conv activations of `spec`'s net for `image_size` images, in the layer
    order models.ResNet builds: every conv (bias-free) with its BN (weight, bias), then the fc layer."""
    params = macs = acts = 0

    def conv(c_in: int, c_out: int, k: int, size: int) -> None:
        nonlocal params, macs, acts
        params += c_in * c_out * k * k + 2 * c_out
        macs += c_in * c_out * k * k * size * size
        acts += c_out * size * size

    size = image_size
    if spec.family == "cifar":
        block, layers, widths, planes = "basic", [spec.n] * 3, CIFAR_WIDTHS, CIFAR_WIDTHS[0]
        conv(3, planes, 3, size)
    else:
        (block, layers), widths, planes = IMAGENET_LAYERS[spec.depth], IMAGENET_WIDTHS, 64
        size = math.ceil(size / 2)  # 7x7/2 conv, then the 3x3/2 max-pool
        conv(3, planes, 7, size)
        size = math.ceil(size / 2)
    shortcut = "none" if spec.arch == "plain" else spec.shortcut
    for i, (width, count) in enumerate(zip(widths, layers)):
        for j in range(count):
            stride = 2 if i > 0 and j == 0 else 1
            out_size, out_planes = math.ceil(size / stride), width * EXPANSION[block]
            if block == "basic":
                conv(planes, width, 3, out_size)
                conv(width, width, 3, out_size)
            else:  # v1 strides the first 1x1, v1.5 the 3x3
                conv(planes, width, 1, out_size if spec.stride_on == "v1" else size)
                conv(width, width, 3, out_size)
                conv(width, out_planes, 1, out_size)
            if shortcut == "C" or (shortcut == "B" and (stride > 1 or planes != out_planes)):
                conv(planes, out_planes, 1, out_size)
            planes, size = out_planes, out_size
    params += planes * num_classes + num_classes
    macs += planes * num_classes
    return Footprint(params, macs, acts)


def pretty(model: str) -> str:
    """A run's net name as the paper writes it: "resnet110-A" -> "ResNet-110"."""
    return ModelSpec.parse(model).pretty


def spec_from_config(model_cfg) -> ModelSpec:
    """The spec of a model config (cifar: n; imagenet: depth); raises ValueError with what to fix."""
    if model_cfg.family == "cifar":
        try:
            n = int(model_cfg.n)
        except (TypeError, ValueError):
            raise ValueError(f"n must be a whole number >= 1 (depth 6n+2), got {model_cfg.n!r}")
        if n < 1:
            raise ValueError(f"n must be a whole number >= 1 (depth 6n+2), got {n}")
        depth = cifar_depth(n)
    else:
        try:
            depth = int(model_cfg.depth)
        except (TypeError, ValueError):
            raise ValueError(f"ImageNet depth must be one of {sorted(IMAGENET_LAYERS)}, got {model_cfg.depth!r}")
    return ModelSpec(model_cfg.family, model_cfg.arch, depth, model_cfg.shortcut, model_cfg.get("stride_on", "v1"))
