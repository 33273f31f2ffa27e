"""A pack of K runs must be exactly its K solo runs: weights, forward, training, optimizer, resume."""

import copy
import io

import pytest
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F

from resnet_repro.cifar import TensorImageLoader
from resnet_repro.engine import Engine
from resnet_repro.models import build_model
from resnet_repro.packing import (
    PackedCifarResNet,
    PackedLoader,
    PackedSGD,
    member_state_dict,
    packed_loss_and_errors,
    replicate,
)
from resnet_repro.scoring import evaluate, measure_responses
from resnet_repro.steppers import Packed, Scorer, build_optimizer

MIX = [("plain", 0), ("resnet", 0), ("plain", 1), ("resnet", 1)]  # {plain, resnet} x {seed 0, seed 1}
CPU = Engine(device=torch.device("cpu"), precision="fp32", channels_last=False, compile=None)


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: on a shared 2-core machine two threads ran these 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def solo(arch: str, seed: int, n: int = 1, shortcut: str = "A"):
    """The model a solo run starts from: `torch.manual_seed(seed); build_model(...)`, as `train.fit`."""
    torch.manual_seed(seed)
    return build_model(OmegaConf.create({"family": "cifar", "n": n, "arch": arch, "shortcut": shortcut}), 10)


def images(count: int, seed: int = 0, size: int = 32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (count,), generator=g))


def loader(x, y, batch: int, seed: int, train: bool = True) -> TensorImageLoader:
    return TensorImageLoader.from_images(x, y, x.float().mean(0) / 255, batch, train, torch.device("cpu"), seed=seed)


def assert_states_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key, t in a.items():
        assert t.shape == b[key].shape and torch.equal(t, b[key]), key


def test_from_members_and_member_state_dict_round_trip_exactly():
    members = [solo(arch, seed) for arch, seed in MIX]
    for i, m in enumerate(members):  # non-trivial running stats, num_batches_tracked = 1
        m(torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(i)))
    packed = PackedCifarResNet.from_members(members)
    assert packed.residual == (False, True, False, True)
    for k, ((arch, seed), m) in enumerate(zip(MIX, members)):
        state = member_state_dict(packed, k)
        assert_states_equal(state, m.state_dict())
        fresh = solo(arch, seed + 7)
        fresh.load_state_dict(state, strict=True)
        assert_states_equal(fresh.state_dict(), m.state_dict())
    # parameter order is the solo order, which `member_optimizer_state` relies on
    assert [n for n, _ in packed.named_parameters()] == [n for n, _ in members[0].named_parameters()]

    # a wrong layout is caught: members swapped across seeds
    swapped = PackedCifarResNet.from_members(members[2:] + members[:2])
    assert not torch.equal(member_state_dict(swapped, 0)["conv1.weight"], members[0].conv1.weight)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_packed_forward_is_each_members_forward_on_its_own_images(mode):
    members = [solo(arch, seed) for arch, seed in MIX]
    packed = PackedCifarResNet.from_members(members)
    for m in [*members, packed]:
        m.train(mode == "train")
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(16, 3, 32, 32, generator=g) for _ in MIX]  # each member its own batch
    with torch.no_grad():
        out = packed(torch.cat(xs, 1))
        assert out.shape == (16, len(MIX), 10)
        for k, (m, x) in enumerate(zip(members, xs)):
            torch.testing.assert_close(out[:, k], m(x), atol=1e-5, rtol=1e-5)
    for k, m in enumerate(members):  # running stats (train mode) follow each member's own batch
        for key, t in member_state_dict(packed, k).items():
            torch.testing.assert_close(t, m.state_dict()[key], atol=1e-6, rtol=1e-5)

    # plain and resnet of one seed have the same weights: only the shortcut mask tells them apart
    twins = PackedCifarResNet.from_members([members[1], members[0]]).train(mode == "train")
    with torch.no_grad():
        out = twins(torch.cat([xs[0], xs[0]], 1))
        assert (out[:, 0] - members[0](xs[0])).abs().max() > 1e-3  # member 0 is residual here, not plain
        assert (packed(torch.cat(xs[::-1], 1))[:, 0] - members[0](xs[0])).abs().max() > 1e-3  # inputs swapped


def test_channels_last_pack_trains_like_a_contiguous_one():
    """The engine's default layout: the per-member shortcut reshape and the optimizer's member slices
    must work on channels_last tensors too."""
    members = [solo("plain", 0), solo("resnet", 1)]
    packs = [PackedCifarResNet.from_members(members).to(memory_format=f)
             for f in (torch.contiguous_format, torch.channels_last)]
    opts = [PackedSGD(p) for p in packs]
    g = torch.Generator().manual_seed(4)
    for _ in range(2):
        x, y = torch.randn(8, 6, 16, 16, generator=g), torch.randint(0, 10, (8, 2), generator=g)
        for pack, opt, f in zip(packs, opts, (torch.contiguous_format, torch.channels_last)):
            loss, _ = packed_loss_and_errors(pack(x.contiguous(memory_format=f)), y)
            opt.zero_grad()
            loss.backward()
            opt.step([0.1, 0.05])
    assert packs[1].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(*(p.state_dict().values() for p in packs)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def lr_schedule(step: int) -> list[float]:
    """Member 0 warms up at 0.01 for 5 steps; member 3 drops to 0.01 at step 15; the others 0.1."""
    return [0.01 if step < 5 else 0.1, 0.1, 0.1, 0.01 if step >= 15 else 0.1]


def test_twenty_packed_steps_are_the_four_solo_runs():
    """In float64: at lr 0.1 early training is chaotic (in fp32 a solo run and a copy of it with weights
    perturbed by 1e-7 differ by 1e-3 in loss within five steps), so fp32 rounding alone would fail a
    1e-3 test; in fp64 the runs must agree to 1e-9."""
    n, batch, steps = 1, 32, 20
    x, y = images(64, size=8)
    members = [solo(arch, seed, n).double() for arch, seed in MIX]
    packed = PackedCifarResNet.from_members(members)
    solos = [copy.deepcopy(m) for m in members]
    solo_opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4) for m in solos]
    opt = PackedSGD(packed, momentum=0.9, weight_decay=1e-4)
    solo_loaders = [loader(x, y, batch, seed) for _, seed in MIX]
    packed_loader = PackedLoader([solo_loaders[0].with_seed(seed) for _, seed in MIX])
    step = 0
    for epoch in range(steps // len(packed_loader)):
        for (px, py), *solo_batches in zip(packed_loader.epoch(epoch), *(lo.epoch(epoch) for lo in solo_loaders)):
            lrs = lr_schedule(step)
            loss, stats = packed_loss_and_errors(packed(px.double()), py)
            opt.zero_grad()
            loss.backward()
            opt.step(lrs)
            for k, (m, o, (sx, sy)) in enumerate(zip(solos, solo_opts, solo_batches)):
                assert torch.equal(px[:, 3 * k: 3 * k + 3], sx) and torch.equal(py[:, k], sy)
                logits = m(sx.double())
                solo_loss = F.cross_entropy(logits, sy)
                o.param_groups[0]["lr"] = lrs[k]
                o.zero_grad()
                solo_loss.backward()
                o.step()
                assert stats[k, 0].item() / batch == pytest.approx(solo_loss.item(), rel=1e-9), (step, k)
                assert stats[k, 1].item() == (logits.argmax(1) != sy).sum().item()
            step += 1
    assert step == steps
    for k, (m, o) in enumerate(zip(solos, solo_opts)):
        for key, t in member_state_dict(packed, k).items():
            torch.testing.assert_close(t, m.state_dict()[key], atol=1e-9, rtol=1e-7)
        state = opt.member_optimizer_state(k)
        for i, p in enumerate(m.parameters()):
            torch.testing.assert_close(state["state"][i]["momentum_buffer"], o.state[p]["momentum_buffer"],
                                       atol=1e-9, rtol=1e-7)
        assert state["param_groups"][0]["lr"] == lr_schedule(steps - 1)[k]
        o.load_state_dict(state)  # the solo optimizer takes it as its own


def test_packed_sgd_is_torch_sgd_bit_for_bit_per_member():
    members = [solo(arch, seed) for arch, seed in MIX[:3]]
    schedule = ([0.1, 0.01, 0.1], [0.05, 0.1, 0.001], [0.1, 0.1, 0.1])

    def packed_run(schedule):
        packed = PackedCifarResNet.from_members(members)
        opt = PackedSGD(packed, momentum=0.9, weight_decay=1e-4)
        g = torch.Generator().manual_seed(0)
        grads = []
        for lrs in schedule:
            for p in packed.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            grads.append([p.grad.clone() for p in packed.parameters()])
            opt.step(torch.tensor(lrs))
        return packed, opt, grads

    packed, opt, grads = packed_run(schedule)
    for k, m in enumerate(copy.deepcopy(members)):
        o = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, fused=opt.fused)
        for lrs, step_grads in zip(schedule, grads):
            for (name, _), q, grad in zip(packed.named_parameters(), m.parameters(), step_grads):
                q.grad = (grad if name.startswith("fc.") else grad.unflatten(0, (len(members), -1)))[k].clone()
            o.param_groups[0]["lr"] = lrs[k]
            o.step()
        assert_states_equal(member_state_dict(packed, k), m.state_dict())

    # learning rates handed to the wrong members are caught
    wrong, _, _ = packed_run([lrs[::-1] for lrs in schedule])
    assert not torch.equal(member_state_dict(wrong, 0)["conv1.weight"], member_state_dict(packed, 0)["conv1.weight"])
    with pytest.raises(ValueError, match="learning rates"):
        opt.step([0.1, 0.1])


def _train(packed, opt, data: PackedLoader, start: int, stop: int):
    step = start
    while step < stop:
        epoch, first = divmod(step, len(data))
        for x, y in data.epoch(epoch, first):
            loss, _ = packed_loss_and_errors(packed(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step([0.02 if step < 2 else 0.1, 0.1])
            step += 1
            if step == stop:
                return


def test_checkpoint_mid_way_resumes_bit_exactly():
    x, y = images(48, seed=1)
    data = PackedLoader([loader(x, y, 16, seed) for seed in (0, 1)])
    members = [solo("plain", 0), solo("resnet", 1)]
    straight = PackedCifarResNet.from_members(members)
    straight_opt = PackedSGD(straight, momentum=0.9, weight_decay=1e-4)
    _train(straight, straight_opt, data, 0, 7)

    first = PackedCifarResNet.from_members(members)
    first_opt = PackedSGD(first, momentum=0.9, weight_decay=1e-4)
    _train(first, first_opt, data, 0, 4)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": first_opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = PackedCifarResNet(1, [False, True])  # a fresh process: built from the spec, not the members
    resumed.load_state_dict(saved["model"])
    resumed_opt = PackedSGD(resumed, momentum=0.0, weight_decay=0.0)
    resumed_opt.load_state_dict(saved["optimizer"])
    _train(resumed, resumed_opt, data, 4, 7)

    assert_states_equal(resumed.state_dict(), straight.state_dict())
    for a, b in zip(resumed_opt.state_dict()["momentum_buffers"], straight_opt.state_dict()["momentum_buffers"]):
        assert torch.equal(a, b)
    _train(first, first_opt, data, 4, 6)  # one step short: the comparison can fail
    assert not torch.equal(first.conv1.weight, straight.conv1.weight)


def test_packed_loader_zips_the_members_loaders():
    x, y = images(40)
    base = loader(x, y, 8, seed=0)
    packed = PackedLoader([base.with_seed(seed) for seed in (0, 5, 9)])
    assert len(packed) == len(base) == 5
    assert all(lo.images is base.images for lo in packed.loaders)  # one copy of the images
    batches = list(packed.epoch(2, start_batch=3))
    singles = [list(loader(x, y, 8, seed).epoch(2, 3)) for seed in (0, 5, 9)]
    assert len(batches) == 2
    for (px, py), *per in zip(batches, *singles):
        assert px.shape == (8, 9, 32, 32) and py.shape == (8, 3)
        for k, (sx, sy) in enumerate(per):
            assert torch.equal(px[:, 3 * k: 3 * k + 3], sx) and torch.equal(py[:, k], sy)
    assert not torch.equal(batches[0][1][:, 0], batches[0][1][:, 1])  # seeds give different batches
    assert torch.equal(replicate(x[:2].float(), 3)[:, 6:], x[:2].float())


def test_loss_is_the_sum_of_member_means_and_counts_errors_per_member():
    logits = torch.randn(6, 2, 10, requires_grad=True)
    y = torch.randint(0, 10, (6, 2))
    loss, stats = packed_loss_and_errors(logits, y)
    loss.backward()
    for k in range(2):
        solo_logits = logits.detach()[:, k].clone().requires_grad_()
        solo_loss = F.cross_entropy(solo_logits, y[:, k])
        solo_loss.backward()
        torch.testing.assert_close(logits.grad[:, k], solo_logits.grad)
        torch.testing.assert_close(stats[k], torch.stack([solo_loss.detach() * 6,
                                                          (solo_logits.argmax(1) != y[:, k]).sum().float(),
                                                          torch.tensor(6.0)]))


def test_per_member_evaluation_and_responses_equal_the_solo_ones():
    members = [solo(arch, seed) for arch, seed in MIX]
    for i, m in enumerate(members):  # distinct running stats, so eval mode differs per member
        m(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(i)) * (1 + i))
    packed = Packed([(m, build_optimizer(m, OmegaConf.create({"lr": 0.1, "momentum": 0.9, "weight_decay": 0})))
                     for m in members], CPU)
    x, y = images(40, seed=2)
    test = loader(x, y, 16, seed=0, train=False)
    errors = evaluate(packed, test, CPU)
    responses = measure_responses(packed, test, CPU)
    assert packed.module.training and len(responses) == len(MIX)
    for k, m in enumerate(members):
        assert errors[k] == pytest.approx(evaluate(Scorer(m, CPU), test, CPU)[0])
        assert responses[k] == pytest.approx(measure_responses(Scorer(m, CPU), test, CPU)[0], rel=1e-5)
    assert responses[0] != pytest.approx(responses[1], rel=1e-3)


@pytest.mark.parametrize("bad", [
    [solo("resnet", 0, shortcut="B"), solo("resnet", 1)],  # projection shortcut
    [solo("resnet", 0, n=1), solo("resnet", 1, n=2)],  # depths differ
])
def test_unpackable_members_are_rejected(bad):
    with pytest.raises(ValueError):
        PackedCifarResNet.from_members(bad)
