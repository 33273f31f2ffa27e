"""What the one training loop steps: a `Solo` run (one net, DDP and torch.compile included) or a `Packed`
set of K runs of one depth trained as one grouped net (packing.py). `train.fit` sees only this seam:

- `members`: how many runs it trains (K);
- `loader(loaders)`: the training batches it steps on, from each member's own loader;
- `step(lrs, x, y) -> (K, 3)`: one SGD step of every member at its own learning rate, returning each
  member's (loss sum, wrong, count) on the device (no host sync);
- `module`, `logits(x) -> (N, K, classes)`, `forward(x)`, `response_layers()`: what scoring.py reads;
- `weight_sums() -> (K,)`: each member's weights summed, to catch a diverged step;
- `export(k) -> (model, optimizer, scaler state)`: member k as a solo net and optimizer (and fp16's
  gradient scaler), in the format a solo run checkpoints, so a run resumes solo or packed alike.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn import functional as F

from .engine import Engine
from .models import build_model
from .packing import (PackedCifarResNet, PackedLoader, PackedSGD, member_state_dict, packed_loss_and_errors,
                      packed_state_dict, replicate)


def build_optimizer(model: nn.Module, train_cfg: DictConfig) -> torch.optim.SGD:
    # fused: one kernel over all parameters instead of a loop over every tensor; same rule and state_dict
    kwargs = dict(lr=float(train_cfg.lr), momentum=float(train_cfg.momentum),
                  weight_decay=float(train_cfg.weight_decay))
    try:
        return torch.optim.SGD(model.parameters(), fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the fused kernel
        return torch.optim.SGD(model.parameters(), **kwargs)


def prepare_model(cfg: DictConfig, engine: Engine, num_classes: int) -> tuple[nn.Module, torch.optim.SGD]:
    """The run's net on the engine's device and memory format, and its optimizer (`fit` and `bench`)."""
    model = build_model(cfg.model, num_classes).to(engine.device)
    if engine.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, build_optimizer(model, cfg.train)


def compiled(module: nn.Module, engine: Engine) -> nn.Module:
    """`module` compiled as the engine says (or itself, eager). It shares its parameters with `module`."""
    if engine.compile and engine.device.type == "cpu":
        # inductor's C++ build warns "No CUDA runtime is found" on every CPU-only machine; nothing is wrong
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return torch.compile(module, mode=engine.compile) if engine.compile else module


def stepping_model(model: nn.Module, engine: Engine) -> nn.Module:
    """What `train_step` calls: the model, wrapped in DDP over ranks and compiled as the engine says."""
    if engine.world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[engine.device.index]
                                                    if engine.device.type == "cuda" else None)
    return compiled(model, engine)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_step(model, optimizer, x, y, engine: Engine, scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """One SGD step (fp16: through the gradient scaler). Returns (loss sum, wrong, count) on the device: no
    host sync here (the fused SGD takes the scaler's inf check on the device)."""
    if engine.compile == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are no longer read
    with engine.autocast():
        logits = model(engine.prepare(x))
        loss = F.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    n = loss.new_full((), y.shape[0])  # a fill kernel; y.new_tensor(len(y)) would copy from the host and sync
    wrong = (logits.argmax(1) != y).sum().float()
    return torch.stack([loss.detach() * n, wrong, n])


class Scorer:
    """One net to score (scoring.py): a run's, or a saved model's."""

    members = 1

    def __init__(self, model: nn.Module, engine: Engine):
        self.module, self.engine = model, engine

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(self.engine.prepare(x)).unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(self.engine.prepare(x))


class Solo(Scorer):
    """One run: its model and optimizer (and fp16's gradient scaler), stepped through DDP and torch.compile
    as the engine says."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, engine: Engine,
                 scaler_state: dict | None = None):
        super().__init__(model, engine)
        self.optimizer = optimizer
        self.stepping = stepping_model(model, engine)
        self.scaler = engine.grad_scaler()
        if self.scaler is not None and scaler_state:
            self.scaler.load_state_dict(scaler_state)

    @staticmethod
    def loader(loaders: Sequence):
        return loaders[0]

    def step(self, lrs: Sequence[float], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        set_lr(self.optimizer, lrs[0])
        return train_step(self.stepping, self.optimizer, x, y, self.engine, self.scaler).unsqueeze(0)

    def weight_sums(self) -> torch.Tensor:
        return torch.stack([p.detach().float().sum() for p in self.module.parameters()]).sum().unsqueeze(0)

    def export(self, k: int) -> tuple[nn.Module, torch.optim.Optimizer, dict | None]:
        return self.module, self.optimizer, self.scaler.state_dict() if self.scaler is not None else None


class Packed:
    """K CIFAR runs of one depth as one grouped net (packing.py) with one learning rate per member. The
    solo models and optimizers it was built from hold each member's part whenever `export` is asked."""

    def __init__(self, solos: Sequence[tuple[nn.Module, torch.optim.Optimizer]], engine: Engine):
        self.solos, self.engine, self.members = list(solos), engine, len(solos)
        packed = PackedCifarResNet.from_members([model for model, _ in self.solos])
        self.module = packed.to(memory_format=torch.channels_last) if engine.channels_last else packed
        self.stepping = compiled(self.module, engine)  # as a solo run's: CUDA graphs on one GPU; the optimizer eager
        self.optimizer = self._optimizer()

    def _optimizer(self) -> PackedSGD:
        """PackedSGD holding the members' momentum buffers (none before the first step)."""
        first = self.solos[0][1].param_groups[0]
        optimizer = PackedSGD(self.module, float(first["momentum"]), float(first["weight_decay"]))
        names = [name for name, _ in self.module.named_parameters()]
        states = [opt.state_dict()["state"] for _, opt in self.solos]
        buffers = None
        if all(states):
            per_member = [{name: s[i]["momentum_buffer"] for i, name in enumerate(names)} for s in states]
            buffers = [packed_state_dict(per_member)[name] for name in names]
        optimizer.load_state_dict({"steps": int(bool(buffers)), "momentum": optimizer.momentum,
                                   "weight_decay": optimizer.weight_decay, "momentum_buffers": buffers,
                                   "lrs": [opt.param_groups[0]["lr"] for _, opt in self.solos]})
        return optimizer

    @staticmethod
    def loader(loaders: Sequence) -> PackedLoader:
        return PackedLoader(loaders)

    def step(self, lrs: Sequence[float], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.engine.compile == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        with self.engine.autocast():
            logits = self.stepping(self.engine.prepare(x))
        loss, per_member = packed_loss_and_errors(logits, y)
        self.optimizer.zero_grad(set_to_none=False)  # in place: PackedSGD's views of the gradients stay valid
        loss.backward()
        self.optimizer.step(lrs)
        return per_member

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(self.engine.prepare(replicate(x, self.members)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(self.engine.prepare(x))

    def weight_sums(self) -> torch.Tensor:
        k = self.members
        return sum(p.detach().float().reshape(k, -1).sum(1) if name.startswith("fc.")
                   else p.detach().float().unflatten(0, (k, -1)).flatten(1).sum(1)
                   for name, p in self.module.named_parameters())

    def export(self, k: int) -> tuple[nn.Module, torch.optim.Optimizer, None]:
        model, optimizer = self.solos[k]
        model.load_state_dict(member_state_dict(self.module, k))
        optimizer.load_state_dict(self.optimizer.member_optimizer_state(k))
        return model, optimizer, None


def make_stepper(solos: Sequence[tuple[nn.Module, torch.optim.Optimizer]], engine: Engine,
                 scaler_state: dict | None = None):
    """`Solo` for one run, `Packed` for several (runs that packing.plan_packs grouped; never fp16)."""
    return Solo(*solos[0], engine, scaler_state) if len(solos) == 1 else Packed(solos, engine)
