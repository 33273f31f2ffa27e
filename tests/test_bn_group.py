"""model.bn_group: BN statistics over groups of images, as the paper's two GPUs computed them."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from resnet_repro.config import compose_experiment, expand_runs
from resnet_repro.models import GhostBatchNorm2d, build_model, count_parameters


def pair(channels=8, group=4):
    torch.manual_seed(0)
    ghost, plain = GhostBatchNorm2d(channels, group), nn.BatchNorm2d(channels)
    for bn in (ghost, plain):  # non-trivial affine parameters and running statistics
        torch.manual_seed(1)
        bn.weight.data.uniform_(0.5, 1.5), bn.bias.data.normal_(), bn.running_mean.normal_(), bn.running_var.uniform_(1, 2)
    return ghost, plain


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_each_group_is_normalised_alone_and_running_stats_follow_the_first(memory_format):
    ghost, plain = pair()
    x = (torch.randn(12, 8, 5, 5) * 3 + torch.arange(12.0).view(12, 1, 1, 1)).contiguous(memory_format=memory_format)
    out = ghost(x)
    for g in range(3):  # DDP's split: process g takes images g, g + 3, g + 6, ...
        member = nn.BatchNorm2d(8)
        member.load_state_dict(pair()[1].state_dict())
        torch.testing.assert_close(out[g::3], member(x[g::3]), atol=1e-5, rtol=1e-5)
        if g == 0:
            first = member
    torch.testing.assert_close(ghost.running_mean, first.running_mean)
    torch.testing.assert_close(ghost.running_var, first.running_var)
    assert ghost.num_batches_tracked.item() == 1
    assert out.is_contiguous(memory_format=memory_format)
    # gradients flow to the shared affine parameters from every group
    out.square().sum().backward()
    assert ghost.weight.grad.abs().sum() > 0 and torch.isfinite(ghost.weight.grad).all()


def test_one_group_or_eval_mode_is_plain_batch_norm():
    ghost, plain = pair(group=12)
    x = torch.randn(12, 8, 5, 5)
    torch.testing.assert_close(ghost(x), plain(x))
    ghost.eval(), plain.eval()
    x = torch.randn(7, 8, 5, 5)  # any batch size at test time
    torch.testing.assert_close(ghost(x), plain(x))


def test_a_group_that_does_not_divide_the_batch_is_refused():
    with pytest.raises(ValueError, match="must divide the batch of 10"):
        GhostBatchNorm2d(8, 4)(torch.randn(10, 8, 3, 3))
    with pytest.raises(ValueError, match="bn_group must be null or a whole number >= 2"):
        build_model(OmegaConf.create({"family": "cifar", "arch": "resnet", "n": 1, "shortcut": "A", "bn_group": 1}), 10)


def test_the_net_with_ghost_bn_has_the_same_parameters_and_its_own_run_id():
    cfg = {"family": "cifar", "arch": "resnet", "n": 3, "shortcut": "A"}
    plain, ghost = (build_model(OmegaConf.create({**cfg, "bn_group": g}), 10) for g in (None, 64))
    assert count_parameters(plain) == count_parameters(ghost) == 269_722
    assert sum(isinstance(m, GhostBatchNorm2d) for m in ghost.modules()) == 19
    assert not any(isinstance(m, GhostBatchNorm2d) for m in plain.modules())
    [run] = expand_runs(compose_experiment("custom", ["model.bn_group=64"]))
    assert run.run.id == "resnet20-A-seed0-bn64" and run.run.keeps_schedule
    [default] = expand_runs(compose_experiment("custom", ["model.bn_group=null"]))
    assert default.run.id == "resnet20-A-seed0"


@pytest.mark.parametrize("group", ["48", "1", "abc"])
def test_a_bn_group_that_does_not_divide_the_batch_is_one_line_error(group):
    from resnet_repro.errors import UserError

    with pytest.raises(UserError, match="model.bn_group=.* (must divide|use a whole number >= 2)"):
        expand_runs(compose_experiment("custom", [f"model.bn_group={group}"]))
