"""Plain and residual networks of He et al. 2015, CIFAR-10 (Sec. 4.2) and ImageNet (Table 1).

One `ResNet` class builds every net: the stem and the depth table pick CIFAR or ImageNet,
the block type picks basic (two 3x3) or bottleneck (1x1-3x3-1x1), and `shortcut` picks
"none" (the plain twin), "A", "B" or "C" (Sec. 3.3). The decision lives in `make_shortcut`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .spec import (CIFAR_WIDTHS, IMAGENET_LAYERS, IMAGENET_WIDTHS, SHORTCUTS, STRIDES, ModelSpec, check_arch_shortcut,
                   cifar_depth, spec_from_config)

__all__ = ["ModelSpec", "spec_from_config", "cifar_depth", "build_model", "IMAGENET_DEPTHS"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class PadShortcut(nn.Module):
    """Option A: identity with stride-s subsampling and zero-padded extra channels; no parameters."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BN whose training statistics come from groups of `group` images, as on the paper's two GPUs
    ("mini-batch 128 on two GPUs": each GPU normalised 64). Image i of a batch belongs to group
    i mod (N / group), the same split DDP makes (rank r takes images r, r + world, ...). The running
    statistics follow group 0 only, as a DDP run keeps them: DDP broadcasts rank 0's buffers to every
    rank before each forward, so rank 0's updates are the ones that survive. Eval mode is plain BN."""

    def __init__(self, num_features: int, group: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.group = int(group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if not self.training or n == self.group:
            return super().forward(x)
        if n % self.group:
            raise ValueError(f"model.bn_group={self.group} must divide the batch of {n} images on each process")
        groups = n // self.group
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        # (group, groups * C, H, W): image i*groups + g lands in channel block g
        folded = x.reshape(self.group, groups * c, h, w)
        running_mean, running_var = self.running_mean.repeat(groups), self.running_var.repeat(groups)
        out = F.batch_norm(folded, running_mean, running_var, self.weight.repeat(groups), self.bias.repeat(groups),
                           True, self.momentum, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(running_mean[:c])
            self.running_var.copy_(running_var[:c])
            self.num_batches_tracked.add_(1)
        out = out.reshape(n, c, h, w)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def batch_norm(bn_group: int | None) -> Callable[[int], nn.BatchNorm2d]:
    """The BN layer every block uses: plain BN over the whole batch, or ghost BN over `bn_group` images."""
    if bn_group is None:
        return nn.BatchNorm2d
    if int(bn_group) < 2:
        raise ValueError(f"model.bn_group must be null or a whole number >= 2, got {bn_group!r}")
    return lambda planes: GhostBatchNorm2d(planes, int(bn_group))


def make_shortcut(kind: str, in_planes: int, out_planes: int, stride: int,
                  norm: Callable[[int], nn.Module] = nn.BatchNorm2d) -> nn.Module | None:
    """The block's shortcut branch: None means no shortcut at all (a plain net)."""
    if kind == "none":
        return None
    if kind not in SHORTCUTS:
        raise ValueError(f"unknown shortcut {kind!r}: choose one of {', '.join(SHORTCUTS)}")
    same_shape = stride == 1 and in_planes == out_planes
    if kind == "C" or (kind == "B" and not same_shape):
        return nn.Sequential(conv1x1(in_planes, out_planes, stride), norm(out_planes))
    return nn.Identity() if same_shape else PadShortcut(in_planes, out_planes, stride)


class BasicBlock(nn.Module):
    """Two 3x3 layers (Fig. 5 left); BN after each conv, ReLU after the addition."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A", stride_on: str = "v1",
                 norm: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(in_planes, planes, stride), norm(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes), norm(planes)
        self.shortcut = make_shortcut(shortcut, in_planes, planes, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)

    def response_layers(self) -> list[nn.Module]:
        return [self.bn1, self.bn2]


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 restore (Fig. 5 right). `stride_on` "v1" strides the first 1x1 as the
    paper's Caffe model does; "v1.5" strides the 3x3 as torchvision does (more FLOPs, a little better)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B", stride_on: str = "v1",
                 norm: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        if stride_on not in STRIDES:
            raise ValueError(f"unknown stride placement {stride_on!r}: choose one of {', '.join(STRIDES)}")
        s1, s3 = (stride, 1) if stride_on == "v1" else (1, stride)
        out_planes = planes * self.expansion
        self.conv1, self.bn1 = conv1x1(in_planes, planes, s1), norm(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes, s3), norm(planes)
        self.conv3, self.bn3 = conv1x1(planes, out_planes), norm(out_planes)
        self.shortcut = make_shortcut(shortcut, in_planes, out_planes, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)

    def response_layers(self) -> list[nn.Module]:
        return [self.bn2]


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    def __init__(
        self,
        block: Block,
        layers: list[int],
        widths: list[int],
        stem: str,
        num_classes: int,
        shortcut: str = "A",
        stride_on: str = "v1",
        norm: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ):
        super().__init__()
        self.in_planes = widths[0] if stem == "cifar" else 64
        if stem == "cifar":  # 3x3 conv, 16 filters (Sec. 4.2)
            self.conv1 = conv3x3(3, self.in_planes)
            self.maxpool = nn.Identity()
        else:  # 7x7/2 conv, 64 filters, 3x3/2 max-pool (Table 1)
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = norm(self.in_planes)
        self.stages = nn.Sequential(
            *(
                self._make_stage(block, width, count, 1 if i == 0 else 2, shortcut, stride_on, norm)
                for i, (width, count) in enumerate(zip(widths, layers))
            )
        )
        self.fc = nn.Linear(self.in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He init, Caffe's "MSRA" filler (fan-in)
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_stage(self, block: Block, planes: int, count: int, stride: int, shortcut: str, stride_on: str,
                    norm: Callable[[int], nn.Module]):
        blocks = []
        for i in range(count):
            blocks.append(block(self.in_planes, planes, stride if i == 0 else 1, shortcut, stride_on, norm))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.stages(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def response_layers(self) -> list[nn.Module]:
        """BN layers that follow a 3x3 conv, in network order: their outputs are Fig. 7's responses."""
        stem = [self.bn1] if self.conv1.kernel_size == (3, 3) else []
        return stem + [bn for stage in self.stages for blk in stage for bn in blk.response_layers()]


# Variants are data (spec.IMAGENET_LAYERS): depth -> (block, blocks per stage).
BLOCKS: dict[str, Block] = {"basic": BasicBlock, "bottleneck": Bottleneck}
IMAGENET_DEPTHS: dict[int, tuple[Block, list[int]]] = {d: (BLOCKS[b], layers) for d, (b, layers) in IMAGENET_LAYERS.items()}


def cifar_resnet(n: int, arch: str = "resnet", shortcut: str = "A", num_classes: int = 10,
                 bn_group: int | None = None) -> ResNet:
    """The 6n+2-layer CIFAR-10 net; `arch="plain"` drops every shortcut."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a whole number >= 1 (depth 6n+2), got {n!r}")
    return ResNet(BasicBlock, [n] * 3, list(CIFAR_WIDTHS), "cifar", num_classes, check_arch_shortcut(arch, shortcut),
                  norm=batch_norm(bn_group))


def imagenet_resnet(
    depth: int, arch: str = "resnet", shortcut: str = "B", stride_on: str = "v1", num_classes: int = 1000,
    bn_group: int | None = None,
) -> ResNet:
    if depth not in IMAGENET_DEPTHS:
        raise ValueError(f"ImageNet depth must be one of {sorted(IMAGENET_DEPTHS)}, got {depth!r}")
    block, layers = IMAGENET_DEPTHS[depth]
    return ResNet(block, layers, list(IMAGENET_WIDTHS), "imagenet", num_classes, check_arch_shortcut(arch, shortcut),
                  stride_on, batch_norm(bn_group))


def _torchvision_key(key: str) -> str:
    """torchvision's `layerK.i.{conv,bn}N` / `downsample.{0,1}` -> our `stages.(K-1).i...` / `shortcut.{0,1}`."""
    if key.startswith("layer"):
        stage, rest = key[len("layer"):].split(".", 1)
        key = f"stages.{int(stage) - 1}.{rest}"
    return key.replace(".downsample.", ".shortcut.")


def imagenet_depth_of_torchvision(state_dict: dict) -> int:
    """The depth of a torchvision resnet18..152 state_dict, from its blocks per stage and block type."""
    counts = [len({k.split(".")[1] for k in state_dict if k.startswith(f"layer{i}.")}) for i in range(1, 5)]
    bottleneck = any(".conv3." in k for k in state_dict)
    for depth, (block, layers) in IMAGENET_DEPTHS.items():
        if layers == counts and (block is Bottleneck) == bottleneck:
            return depth
    raise ValueError(f"not a torchvision ResNet state_dict (blocks per stage {counts})")


def from_torchvision(state_dict: dict) -> ResNet:
    """Our option-B net with the stride on the 3x3 ("v1.5") carrying a torchvision resnet18..152
    state_dict (e.g. a local `resnet50-*.pth`): the same layers under other names."""
    depth = imagenet_depth_of_torchvision(state_dict)
    num_classes = state_dict["fc.weight"].shape[0]
    model = imagenet_resnet(depth, "resnet", "B", "v1.5", num_classes)
    model.load_state_dict({_torchvision_key(k): v for k, v in state_dict.items()})
    return model


def build_model(model_cfg, num_classes: int) -> ResNet:
    """The net a `model` config describes (conf/model/*.yaml: family, arch, n or depth, shortcut, stride_on,
    bn_group), He-initialised; every caller that trains, scores or counts a net goes through here."""
    bn_group = model_cfg.get("bn_group")
    if model_cfg.family == "cifar":
        return cifar_resnet(int(model_cfg.n), model_cfg.arch, model_cfg.shortcut, num_classes, bn_group)
    if model_cfg.family == "imagenet":
        return imagenet_resnet(
            int(model_cfg.depth), model_cfg.arch, model_cfg.shortcut, model_cfg.get("stride_on", "v1"), num_classes,
            bn_group
        )
    raise ValueError(f"unknown model family {model_cfg.family!r}: choose cifar or imagenet")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_multiply_adds(model: nn.Module, image_size: int) -> int:
    """Multiply-adds of all conv and fc layers for one image, the paper's "FLOPs" (Table 1)."""
    total = 0

    def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            total += module.in_features * module.out_features

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


def capture_responses(model: ResNet) -> tuple[list[torch.Tensor], Callable[[], None]]:
    """Hook every 3x3 layer's BN output (Fig. 7). Returns the list the hooks fill and a remover."""
    outputs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for m in model.response_layers()]
    return outputs, lambda: [h.remove() for h in handles]
