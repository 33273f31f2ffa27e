"""The nets of the paper: parameter counts, layer counts, shortcut options A/B/C, He init, responses."""

import pytest
import torch

from resnet_repro import paper
from resnet_repro.models import (
    PadShortcut, capture_responses, cifar_resnet, count_multiply_adds, count_parameters, make_shortcut,
)


@pytest.mark.parametrize("n", sorted(paper.CIFAR_PARAMS))
@pytest.mark.parametrize("arch", ["resnet", "plain"])
def test_cifar_parameter_counts_match_the_paper(n, arch):
    assert count_parameters(cifar_resnet(n, arch)) == paper.CIFAR_PARAMS[n]


@pytest.mark.parametrize("n", [1, 3, 18])
def test_cifar_layer_count_is_6n_plus_2(n):
    model = cifar_resnet(n)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) + len(linears) == 6 * n + 2
    assert len(model.response_layers()) == 6 * n + 1  # every 3x3 layer


def test_shortcut_options_differ_as_the_paper_says():
    a, b, c = (count_parameters(cifar_resnet(3, "resnet", s)) for s in "ABC")
    assert a == paper.CIFAR_PARAMS[3] < b < c
    # B projects only where dimensions grow: two 1x1 convs + BN (16->32, 32->64)
    assert b - a == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


def test_option_a_pads_and_subsamples_without_parameters():
    x = torch.randn(2, 16, 8, 8)
    sc = make_shortcut("A", 16, 32, 2)
    y = sc(x)
    assert isinstance(sc, PadShortcut) and not list(sc.parameters())
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2]) and not y[:, 16:].any()
    assert make_shortcut("none", 16, 32, 2) is None
    assert isinstance(make_shortcut("B", 16, 16, 1), torch.nn.Identity)
    assert isinstance(make_shortcut("C", 16, 16, 1), torch.nn.Sequential)


@pytest.mark.parametrize("arch", ["resnet", "plain"])
def test_forward_shape(arch):
    assert cifar_resnet(2, arch)(torch.randn(3, 3, 32, 32)).shape == (3, 10)


def test_bad_depth_is_rejected():
    for bad in (0, -1):
        with pytest.raises(ValueError, match="n must be"):
            cifar_resnet(bad)


def test_he_init_and_bn_identity():
    torch.manual_seed(0)
    model = cifar_resnet(3)
    for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
        he = (2 / (conv.in_channels * 9)) ** 0.5  # Caffe's "MSRA" filler: std sqrt(2 / fan_in)
        # the sample std of n normal weights is within 5 standard errors (he / sqrt(2n)) of he
        assert abs(conv.weight.std().item() - he) < 5 * he / (2 * conv.weight.numel()) ** 0.5, conv
    assert torch.equal(model.bn1.weight, torch.ones(16)) and not model.bn1.bias.any()


def test_resnet20_multiply_adds():
    # 3x3 convs at 32/16/8 px with 16/32/64 filters, plus the 10-way fc: about 41M multiply-adds
    assert count_multiply_adds(cifar_resnet(3), 32) == 40_551_040


def test_capture_responses_hooks_every_3x3_layer_and_removes_itself():
    model = cifar_resnet(2).eval()
    outputs, remove = capture_responses(model)
    model(torch.randn(2, 3, 32, 32))
    assert len(outputs) == 13
    assert [o.shape[1] for o in outputs] == [16] * 5 + [32] * 4 + [64] * 4
    remove()
    outputs.clear()
    model(torch.randn(2, 3, 32, 32))
    assert outputs == []
