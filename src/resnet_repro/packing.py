"""Train K CIFAR runs of one depth in one process, as one packed network.

A CIFAR ResNet at batch 128 leaves a GPU mostly idle: its kernels are small and launch-bound
(ResNet-20 needs CUDA graphs to keep an H200 busy). Packing K runs (seeds; plain and residual twins)
into ONE network whose convs are grouped convs with `groups=K` puts K times the work into each
kernel, while every member stays exactly the run it stands for:

- member k owns channel slice k of every layer: the input is (N, K*3, H, W) with member k's own
  batch in channels [3k, 3k+3); a grouped conv never mixes groups; BatchNorm normalises each channel
  on its own, so every member keeps its own batch statistics and running stats;
- option A's shortcut subsamples and zero-pads inside each member's slice; a plain member is a
  residual one whose shortcut is multiplied by 0;
- the loss is the SUM over members of each member's mean cross-entropy, so the gradient of member
  k's weights is its solo gradient;
- `PackedSGD` is torch's SGD (momentum, weight decay, dampening 0) run on each member's slice of
  every tensor with that member's learning rate (warm-up and schedules differ per member).

Every packed tensor has the members along dim 0, member-major: a conv weight is the members'
(Cout, Cin, 3, 3) weights stacked into (K*Cout, Cin, 3, 3), a BN vector (K*C,), the FC weight
(K, classes, 64). `t.unflatten(0, (K, -1))[k]` is member k's part of any of them.

Supported: CIFAR nets (`build_model` with family cifar, BasicBlock) whose members share n and
num_classes, each with shortcut "A" or "none". Options B and C (projection shortcuts) are not packed.
`plan_packs` groups the runs of one command into packs (`engine.pack`); steppers.Packed trains one.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn import functional as F
from torch.optim.sgd import sgd

from .errors import UserError
from .models import CIFAR_WIDTHS, BasicBlock, PadShortcut, ResNet

__all__ = [
    "AUTO_PACK_CUDA", "PackedCifarResNet", "PackedLoader", "PackedSGD", "member_state_dict", "pack_size",
    "packed_loss_and_errors", "packed_state_dict", "plan_packs", "replicate", "split_by_iteration",
]


def _grouped_conv3x3(members: int, in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(members * in_planes, members * out_planes, 3, stride=stride, padding=1, bias=False,
                     groups=members)


class PackedBasicBlock(nn.Module):
    """K BasicBlocks side by side; `residual[k]` False makes member k's block plain."""

    def __init__(self, members: int, in_planes: int, planes: int, stride: int, residual: Sequence[bool]):
        super().__init__()
        self.members, self.stride, self.extra = members, stride, planes - in_planes
        self.conv1, self.bn1 = _grouped_conv3x3(members, in_planes, planes, stride), nn.BatchNorm2d(members * planes)
        self.conv2, self.bn2 = _grouped_conv3x3(members, planes, planes), nn.BatchNorm2d(members * planes)
        self.any_residual, self.all_residual = any(residual), all(residual)
        mask = torch.tensor([float(r) for r in residual]).repeat_interleave(planes).view(1, -1, 1, 1)
        # not persistent: the members' architectures come from the constructor, never from a checkpoint
        self.register_buffer("shortcut_mask", mask, persistent=False)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Option A per member: subsample by the stride, zero-pad each member's own channels."""
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            n, _, h, w = x.shape
            x = F.pad(x.reshape(n, self.members, -1, h, w), (0, 0, 0, 0, 0, self.extra)).reshape(n, -1, h, w)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.all_residual:
            out = out + self.shortcut(x)
        elif self.any_residual:
            out = out + self.shortcut(x) * self.shortcut_mask  # x * 0 adds an exact 0 to a plain member
        return F.relu(out)

    def response_layers(self) -> list[nn.Module]:
        return [self.bn1, self.bn2]


class PackedLinear(nn.Module):
    """K separate FC layers: (N, K, in) -> (N, K, out)."""

    def __init__(self, members: int, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(members, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(members, out_features))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Linear's default; from_members overwrites it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (K, N, in) @ (K, in, out) + (K, 1, out) -> (K, N, out)
        out = torch.baddbmm(self.bias.unsqueeze(1), x.transpose(0, 1), self.weight.transpose(1, 2))
        return out.transpose(0, 1)


class PackedCifarResNet(nn.Module):
    """K CIFAR ResNets/plain nets of depth 6n+2 as one net: (N, K*3, H, W) -> logits (N, K, classes).

    Its modules mirror `models.ResNet` (conv1, bn1, stages.i.j.{conv,bn}{1,2}, fc), so parameter
    names and order are the solo net's: `member_state_dict` and `PackedSGD.member_optimizer_state`
    map index to index. Build it with `from_members` to start each member from its solo weights.
    """

    def __init__(self, n: int, residual: Sequence[bool], num_classes: int = 10):
        super().__init__()
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a whole number >= 1 (depth 6n+2), got {n!r}")
        if not residual:
            raise ValueError("a pack needs at least one member")
        self.n, self.residual, self.num_classes = n, tuple(bool(r) for r in residual), num_classes
        k = self.members = len(self.residual)
        planes = CIFAR_WIDTHS[0]
        self.conv1, self.bn1 = _grouped_conv3x3(k, 3, planes), nn.BatchNorm2d(k * planes)
        stages = []
        for i, width in enumerate(CIFAR_WIDTHS):
            blocks = []
            for j in range(n):
                blocks.append(PackedBasicBlock(k, planes, width, 2 if i > 0 and j == 0 else 1, self.residual))
                planes = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = PackedLinear(k, planes, num_classes)

    @classmethod
    def from_members(cls, models: Sequence[ResNet]) -> PackedCifarResNet:
        """The pack of solo CIFAR nets (as `build_model` returns them), each member's weights and BN
        buffers copied exactly into its slice."""
        if not models:
            raise ValueError("a pack needs at least one member")
        shapes = [_check_member(m) for m in models]
        if any(s != shapes[0] for s in shapes):
            raise ValueError("members of a pack must have the same depth and number of classes")
        n, num_classes = shapes[0]
        first = next(models[0].parameters())
        packed = cls(n, [_is_residual(m) for m in models], num_classes).to(first.device, first.dtype)
        packed.load_state_dict(packed_state_dict([m.state_dict() for m in models]))
        return packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.stages(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x.view(x.shape[0], self.members, -1))

    def response_layers(self) -> list[nn.Module]:
        """BN layers that follow a 3x3 conv, in network order, as `ResNet.response_layers`."""
        return [self.bn1] + [bn for stage in self.stages for blk in stage for bn in blk.response_layers()]


def _is_residual(model: ResNet) -> bool:
    return model.stages[0][0].shortcut is not None


def _check_member(model: nn.Module) -> tuple[int, int]:
    """(n, num_classes) of a packable solo net; raises ValueError for anything else."""
    if not (isinstance(model, ResNet) and isinstance(model.maxpool, nn.Identity)
            and model.conv1.kernel_size == (3, 3) and len(model.stages) == len(CIFAR_WIDTHS)):
        raise ValueError("only CIFAR nets (build_model with model.family=cifar) can be packed")
    blocks = [blk for stage in model.stages for blk in stage]
    if not all(isinstance(b, BasicBlock) for b in blocks):
        raise ValueError("only nets of BasicBlocks can be packed")
    residual = _is_residual(model)
    for b in blocks:
        if (b.shortcut is not None) != residual or not isinstance(b.shortcut, (type(None), nn.Identity, PadShortcut)):
            raise ValueError("only option A (shortcut=A) or plain (arch=plain) members can be packed, "
                             "not projection shortcuts (B, C)")
    return len(model.stages[0]), model.fc.out_features


def _member_axis(key: str, t: torch.Tensor, members: int) -> torch.Tensor:
    """`t` viewed as (K, *solo shape): dim 0 is member-major in every packed tensor."""
    return t if key.startswith("fc.") else t.unflatten(0, (members, -1))


def packed_state_dict(states: Sequence[dict]) -> dict:
    """The packed state_dict of K solo CIFAR state_dicts (the inverse of `member_state_dict`).
    BN's `num_batches_tracked` is one counter per packed layer, so the members' must agree."""
    packed = {}
    for key, first in states[0].items():
        values = [s[key] for s in states]
        if first.dim() == 0:
            if any(not torch.equal(v, first) for v in values):
                raise ValueError(f"members differ in {key} ({[v.item() for v in values]}): "
                                 f"only members at the same step can be packed")
            packed[key] = first.clone()
        elif key.startswith("fc."):
            packed[key] = torch.stack(values)
        else:
            packed[key] = torch.cat(values)
    return packed


def member_state_dict(packed: PackedCifarResNet, k: int) -> dict:
    """Member k's state_dict under the solo net's names and shapes: it loads with strict=True into
    `build_model(...)` for that member (a plain member has no shortcut entries, as solo)."""
    if not 0 <= k < packed.members:
        raise IndexError(f"member {k} of a pack of {packed.members}")
    return {key: (t.clone() if t.dim() == 0 else _member_axis(key, t, packed.members)[k].clone())
            for key, t in packed.state_dict().items()}


class PackedSGD:
    """SGD with momentum and weight decay, as torch.optim.SGD (dampening 0, no Nesterov):
    d_p = grad + wd * p; buf = momentum * buf + d_p; p -= lr * buf; but with one lr per member.

    Each step hands torch's own functional `sgd` (fused kernel where available, like
    `build_optimizer`) member k's slices of all tensors with lr k, one call per distinct lr,
    so the arithmetic is torch's. Buffers start at zero: momentum * 0 + d_p is exactly torch's
    first step (buf = d_p).
    """

    def __init__(self, model: PackedCifarResNet, momentum: float = 0.9, weight_decay: float = 1e-4,
                 fused: bool | None = True):
        self.names, self.params = zip(*((name, p) for name, p in model.named_parameters() if p.requires_grad))
        self.members, self.momentum, self.weight_decay, self.fused = model.members, momentum, weight_decay, fused
        self.buffers: list[torch.Tensor] | None = None
        self._views, self._views_of, self._groups = None, [], {}  # `_member_views`, the lists `step` hands on
        self.steps = 0
        self.lrs: list[float] = [0.0] * self.members  # the last step's, for `member_optimizer_state`

    def _slices(self, i: int, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Member k's part of `t`, the parameter i or its gradient or buffer, in the solo shape."""
        return _member_axis(self.names[i], t, self.members).unbind(0)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def _member_views(self) -> list[list[tuple[torch.Tensor, ...]]]:
        """Each member's views of every parameter, gradient and momentum buffer, made once: they stay valid
        while the tensors do (gradients zeroed in place, `zero_grad(set_to_none=False)`), and are made again
        only when a tensor is replaced."""
        grads = [p.grad for p in self.params]
        if self._views is None or any(g is not c for g, c in zip(grads, self._views_of)):
            live = [i for i, g in enumerate(grads) if g is not None]
            self._views = [[self._slices(i, t[i]) for i in live] for t in (self.params, grads, self.buffers)]
            self._views_of, self._groups = grads, {}
        return self._views

    @torch.no_grad()
    def step(self, lrs: Sequence[float] | torch.Tensor) -> None:
        lrs = [float(v) for v in (lrs.tolist() if isinstance(lrs, torch.Tensor) else lrs)]
        if len(lrs) != self.members:
            raise ValueError(f"{len(lrs)} learning rates for a pack of {self.members}")
        if self.buffers is None:
            self.buffers, self._views = [torch.zeros_like(p) for p in self.params], None
        views = self._member_views()
        for lr in dict.fromkeys(lrs):  # members that share an lr go in one call
            ks = tuple(k for k, v in enumerate(lrs) if v == lr)
            if ks not in self._groups:
                self._groups[ks] = [[s[k] for s in per for k in ks] for per in views]
            self._sgd(*self._groups[ks], lr)
        self.steps += 1
        self.lrs = lrs

    def _sgd(self, params, grads, bufs, lr: float) -> None:
        kwargs = {"weight_decay": self.weight_decay, "momentum": self.momentum, "lr": lr, "dampening": 0.0,
                  "nesterov": False, "maximize": False}
        if self.fused:
            try:
                return sgd(params, grads, bufs, fused=True, **kwargs)
            except (RuntimeError, NotImplementedError):  # no fused kernel for this device or dtype
                self.fused = None
        sgd(params, grads, bufs, fused=self.fused, **kwargs)

    def state_dict(self) -> dict:
        """Everything a resumed pack needs (the buffers by reference, as torch's optimizers do)."""
        return {"steps": self.steps, "lrs": list(self.lrs), "momentum": self.momentum,
                "weight_decay": self.weight_decay, "momentum_buffers": self.buffers}

    def load_state_dict(self, state: dict) -> None:
        buffers = state["momentum_buffers"]
        if buffers is not None:
            if len(buffers) != len(self.params) or any(b.shape != p.shape for b, p in zip(buffers, self.params)):
                raise ValueError("optimizer state belongs to another pack")
            self.buffers = [torch.zeros_like(p).copy_(b) for p, b in zip(self.params, buffers)]
        else:
            self.buffers = None
        self._views = None
        self.steps, self.lrs = int(state["steps"]), [float(v) for v in state["lrs"]]
        self.momentum, self.weight_decay = float(state["momentum"]), float(state["weight_decay"])

    def member_optimizer_state(self, k: int) -> dict:
        """Member k's optimizer in torch.optim.SGD's state_dict format, for the solo net's
        `model.parameters()` order (the pack's order): it loads into `build_optimizer(solo, cfg)`."""
        if not 0 <= k < self.members:
            raise IndexError(f"member {k} of a pack of {self.members}")
        state = {} if self.buffers is None or self.steps == 0 else {
            i: {"momentum_buffer": self._slices(i, b)[k].clone()} for i, b in enumerate(self.buffers)}
        group = {"lr": self.lrs[k], "momentum": self.momentum, "dampening": 0, "weight_decay": self.weight_decay,
                 "nesterov": False, "maximize": False, "foreach": None, "differentiable": False,
                 "fused": bool(self.fused), "params": list(range(len(self.params)))}
        return {"state": state, "param_groups": [group]}


def replicate(x: torch.Tensor, members: int) -> torch.Tensor:
    """One batch (N, 3, H, W) for every member: (N, K*3, H, W). For evaluation on a shared test set."""
    return x.repeat(1, members, 1, 1)


class PackedLoader:
    """K loaders of the same images with different seeds (`loader.with_seed`, sharing the images), zipped:
    batches (N, K*3, H, W) with member k's own batch in channels [3k, 3k+3), labels (N, K). Same protocol
    as the CIFAR `TensorImageLoader`."""

    def __init__(self, loaders: Sequence):
        if not loaders or len({len(lo) for lo in loaders}) != 1:
            raise ValueError("a packed loader needs loaders with the same number of batches")
        self.loaders = list(loaders)

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self):
        return self.epoch(0)

    def epoch(self, epoch: int, start_batch: int = 0):
        for batches in zip(*(lo.epoch(epoch, start_batch) for lo in self.loaders)):
            yield torch.cat([x for x, _ in batches], 1), torch.stack([y for _, y in batches], 1)


def packed_loss_and_errors(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss to back-propagate, the sum over members of each member's mean cross-entropy (so
    member k's gradient is its solo gradient), and per member (loss sum, wrong, count), shape (K, 3),
    as `train.train_step` returns them. logits (N, K, classes), y (N, K)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32, fp64 stays
    per_member = F.cross_entropy(logits.permute(0, 2, 1), y, reduction="none").mean(0)  # (K,)
    n = per_member.new_full(per_member.shape, y.shape[0])
    wrong = (logits.argmax(2) != y).sum(0).float()
    return per_member.sum(), torch.stack([per_member.detach() * n, wrong, n], 1)


# ------------------------------------------------------------------------------------------ planning

# `engine.pack: auto` on CUDA: runs per pack by depth, NOT measured yet. On a CPU packing is slower
# (results/bench.csv, `bench --pack`): a CPU is compute-bound and grouped convs gain nothing there.
AUTO_PACK_CUDA = ((9, 8), (18, 4))  # (largest n, pack size); deeper nets train solo


def pack_size(value, device: torch.device, n: int) -> int:
    """`engine.pack`: a whole number >= 1, or auto (1 on CPU; `AUTO_PACK_CUDA` on a GPU)."""
    if value == "auto":
        if device.type != "cuda":
            return 1
        return next((size for largest, size in AUTO_PACK_CUDA if n <= largest), 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"engine.pack={value!r}: use a whole number >= 1 (1 = no packing) or auto")
    return value


def packable(cfg: DictConfig, engine) -> bool:
    """CIFAR nets with option A or no shortcut, in one process, without BN groups or fp16's gradient
    scaler, can be packed."""
    m = cfg.model
    return (cfg.data.family == "cifar" and m.family == "cifar" and engine.world == 1 and engine.precision != "fp16"
            and m.get("bn_group") is None and (m.arch == "plain" or m.get("shortcut") == "A"))


def pack_key(cfg: DictConfig) -> str:
    """What members of one pack share: the whole config but the seed, the arch and the run's names."""
    c = OmegaConf.to_container(cfg, resolve=True)
    del c["seed"], c["run"]
    c["model"].pop("arch", None)
    return json.dumps(c, sort_keys=True, default=str)


def plan_packs(runs: Sequence[DictConfig], engine) -> list[list[DictConfig]]:
    """The runs in packs of at most `engine.pack` that agree in everything but seed and arch, in the
    order of their first run; a run that cannot be packed is a pack of one."""
    packs: list[list[DictConfig]] = []
    open_packs: dict[str, list[DictConfig]] = {}
    for cfg in runs:
        size = pack_size(cfg.engine.get("pack", 1), engine.device, (int(cfg.run.depth) - 2) // 6)
        if size == 1 or not packable(cfg, engine):
            packs.append([cfg])
            continue
        key = pack_key(cfg)
        pack = open_packs.get(key)
        if pack is None or len(pack) >= size:
            pack = open_packs[key] = []
            packs.append(pack)
        pack.append(cfg)
    return packs


def split_by_iteration(members: list, iterations: list[int]) -> list[list]:
    """Members resume together only from the same iteration (their checkpoints'): the largest group that
    agrees is the pack (one file can be a step behind if a process died between the members' checkpoint
    saves), each other member trains solo."""
    if len(members) < 2:
        return [members] if members else []
    common = Counter(iterations).most_common(1)[0][0]
    return ([[m for m, i in zip(members, iterations) if i == common]]
            + [[m] for m, i in zip(members, iterations) if i != common])
