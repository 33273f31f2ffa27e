"""Scoring a net, or a pack of K nets at once: top-1/top-5 error over test-time views (Sec. 3.4, 4.2),
Fig. 7's layer responses, and BN statistics re-estimated on training images.

Everything here works over a members axis K (one run: K = 1) and reads a net through four things
(steppers.py's `Scorer`, `Solo` and `Packed` have them): `members`, `module` (the nn.Module, whose
train/eval mode and response layers are used), `logits(x)` (an unpacked test batch -> (N, K, classes))
and `forward(x)` (a training batch, as the net's loader gives it). Counts are summed over DDP ranks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F


def view_scores(net, views, engine) -> torch.Tensor:
    """Softmax scores averaged over test-time views (a batch tensor, or a list of them: crops, scales),
    (N, K, classes)."""
    views = views if isinstance(views, (list, tuple)) else [views]
    with engine.autocast():
        return sum(F.softmax(net.logits(v).float(), -1) for v in views) / len(views)


def top_k_wrong(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How many images the top-1 and the top-5 scores miss (top-k of all classes where fewer than 5):
    scores (N, K, classes), labels (N,) -> (K, 2)."""
    top5 = scores.topk(min(5, scores.shape[-1]), -1).indices  # (N, K, 5)
    return torch.stack([(top5[..., 0] != labels[:, None]).sum(0), (top5 != labels[:, None, None]).all(-1).sum(0)], 1)


@contextlib.contextmanager
def one_algorithm_per_shape(loader):
    """cuDNN's autotuner (`benchmark`, on for training's fixed shapes) times every algorithm for each new
    input shape; multi-scale testing meets a new shape in almost every batch, so it is off there."""
    if getattr(loader, "protocol", None) != "multiscale" or not torch.backends.cudnn.benchmark:
        yield
        return
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = True


@torch.inference_mode()
def evaluate(net, loader, engine) -> list[tuple[float, float]]:
    """Top-1 and top-5 error (%) of each member, in eval mode, over the loader."""
    module = net.module
    was_training = module.training
    module.eval()
    counts = torch.zeros(net.members, 3, device=engine.device)
    with one_algorithm_per_shape(loader):
        for views, y in loader:
            wrong = top_k_wrong(view_scores(net, views, engine), y)
            counts += torch.cat([wrong, wrong.new_full((net.members, 1), y.shape[0])], 1)
    module.train(was_training)
    if engine.world > 1:
        dist.all_reduce(counts)
    return [(100 * w1 / n, 100 * w5 / n) for w1, w5, n in counts.tolist()]


@torch.inference_mode()
def measure_responses(net, loader, engine) -> list[list[float]]:
    """Std of each 3x3 layer's response (BN output, before ReLU/addition) over the test set (Fig. 7), per
    member. Every DDP rank holds a share of the test set and must call it."""
    module, k = net.module, net.members
    was_training = module.training
    module.eval()
    outputs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for m in module.response_layers()]
    sums = None
    try:
        for views, _ in loader:
            outputs.clear()
            with engine.autocast():
                net.logits(views)
            # member k owns channel slice k of every layer: (N, K*C, H, W) -> (N, K, C, H, W)
            moments = torch.stack([torch.stack([o.new_full((k,), o.numel() // k), o.sum((0, 2, 3, 4)),
                                                o.pow(2).sum((0, 2, 3, 4))], 1)
                                   for o in (o.double().unflatten(1, (k, -1)) for o in outputs)])  # (layers, K, 3)
            sums = moments if sums is None else sums + moments
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    if engine.world > 1:
        dist.all_reduce(sums)
    n, s, ss = sums.cpu().unbind(2)
    return (ss / n - (s / n) ** 2).clamp_min(0).sqrt().T.tolist()


@torch.no_grad()
def recalibrate_bn(net, batches: Iterable, images: int, engine) -> int:
    """Re-estimate every BN layer's running mean/var as a plain average over about `images` training
    images (train-mode forward passes, no gradient, weights untouched). Returns the number of images
    used. Under DDP the statistics are averaged over ranks."""
    module = net.module
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    was_training = module.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches seen
    module.train()
    seen = 0
    try:
        for x, _ in batches:
            with engine.autocast():
                net.forward(x)
            seen += len(x) * engine.world
            if seen >= images:
                break
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        module.train(was_training)
    if engine.world > 1:
        for bn in bns:
            for buf in (bn.running_mean, bn.running_var):
                dist.all_reduce(buf)
                buf.div_(engine.world)
    return seen
