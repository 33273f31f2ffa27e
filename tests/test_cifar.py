"""CIFAR-10 as tensors: the folder reader, the bundled sample, and the on-device loader's crops, flips,
order and DDP split."""

import pickle

import pytest
import torch

from resnet_repro.cifar import (
    TensorImageLoader, crop, evenly_spaced_tests, hold_out_validation, load_cifar10, read_bundled_sample, read_cifar10_folder,
)
from resnet_repro.errors import UserError
from resnet_repro.results import DataId


def test_reads_a_generated_folder_without_md5_check(fake_cifar):
    arrays = load_cifar10(fake_cifar, download=False)
    assert arrays.train_images.shape == (100, 3, 32, 32) and arrays.train_images.dtype == torch.uint8
    assert arrays.test_images.shape == (20, 3, 32, 32)
    with open(fake_cifar / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        first = pickle.load(f)
    assert torch.equal(arrays.train_images[0].flatten(), torch.as_tensor(first["data"][0]))
    assert arrays.train_labels[:20].tolist() == first["labels"]
    # the folder itself works as well as its parent
    assert torch.equal(read_cifar10_folder(fake_cifar / "cifar-10-batches-py").test_labels, arrays.test_labels)


def test_missing_data_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.delenv("RESNET_REPRO_DATA", raising=False)
    with pytest.raises(UserError, match="--data-dir"):
        load_cifar10(tmp_path / "nowhere", download=False)
    with pytest.raises(UserError, match="RESNET_REPRO_DATA"):
        load_cifar10(None, download=False)


def test_truncated_batch_is_a_user_error(fake_cifar):
    batch = fake_cifar / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(UserError, match="data_batch_3"):
        load_cifar10(fake_cifar, download=False)


def test_bundled_sample_is_real_balanced_cifar():
    s = read_bundled_sample()
    assert s.train_images.shape == (1000, 3, 32, 32) and s.test_images.shape == (500, 3, 32, 32)
    assert torch.bincount(s.train_labels).tolist() == [100] * 10
    assert torch.bincount(s.test_labels).tolist() == [50] * 10
    assert s.train_images.float().std() > 40  # real photos, not a constant


def test_the_smoke_subset_scores_every_class_of_a_test_set_stored_by_class():
    arrays = evenly_spaced_tests(read_bundled_sample(), 200)
    assert torch.bincount(arrays.test_labels).tolist() == [20] * 10
    assert arrays.test_split == "test[200 of 500, evenly spaced]" and arrays.test_images.shape[0] == 200
    assert evenly_spaced_tests(read_bundled_sample(), 500).test_split == "test"  # all of it: no label


def test_validation_split_is_held_out(fake_cifar):
    arrays = hold_out_validation(load_cifar10(fake_cifar, download=False), 10)
    assert len(arrays.train_labels) == 90 and len(arrays.test_labels) == 10 and arrays.test_split == "val"


def test_crop_equals_slicing():
    padded = torch.randn(6, 3, 40, 40)
    shifts = torch.randint(0, 9, (6, 2))
    out = crop(padded, shifts, 32)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        assert torch.equal(out[i], padded[i, :, dy : dy + 32, dx : dx + 32])


def _loader(n=64, batch=16, train=True, **kw):
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    mean = images.float().div(255).mean(0)
    ids = torch.arange(n)  # labels are image ids, to check alignment
    return images, mean, TensorImageLoader.from_images(images, ids, mean, batch, train, torch.device("cpu"), seed=1, **kw)


def test_test_loader_is_mean_subtracted_originals_in_order():
    images, mean, loader = _loader(n=40, batch=16, train=False)
    xs, ys = zip(*loader)
    assert [len(y) for y in ys] == [16, 16, 8]
    x, y = torch.cat(xs), torch.cat(ys)
    assert torch.equal(y, torch.arange(40))
    assert torch.allclose(x + mean, images.float() / 255, atol=1e-6)


def test_train_batches_are_crops_or_flipped_crops_of_their_own_image():
    images, mean, loader = _loader()
    padded = torch.nn.functional.pad(images.float() / 255 - mean, (4, 4, 4, 4))
    flips, offsets, seen = 0, set(), []
    for x, ids in loader.epoch(0):
        assert x.shape == (16, 3, 32, 32)
        for img, i in zip(x, ids.tolist()):
            seen.append(i)
            match = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (0, 1)
                     if torch.allclose((img.flip(2) if f else img), padded[i, :, dy : dy + 32, dx : dx + 32])]
            assert match, "a training image is not a window of its padded original"
            flips += match[0][2]
            offsets.add(match[0][:2])
    assert sorted(seen) == list(range(64))  # one epoch visits every image once
    assert 16 < flips < 48 and len(offsets) > 20


def test_epoch_order_depends_only_on_seed_and_epoch_and_resumes_mid_epoch():
    _, _, loader = _loader()
    full = [y for _, y in loader.epoch(3)]
    assert all(torch.equal(a, b) for a, b in zip(full, [y for _, y in loader.epoch(3)]))
    assert all(torch.equal(a, b) for a, b in zip(full[2:], [y for _, y in loader.epoch(3, start_batch=2)]))
    assert not torch.equal(torch.cat(full), torch.cat([y for _, y in loader.epoch(4)]))


def test_ranks_split_each_global_batch():
    images, mean, _ = _loader()
    parts = [TensorImageLoader.from_images(images, torch.arange(64), mean, 16, True, torch.device("cpu"), seed=1, rank=r, world=2)
             for r in range(2)]
    whole = TensorImageLoader.from_images(images, torch.arange(64), mean, 16, True, torch.device("cpu"), seed=1)
    for (x, y), (x0, y0), (x1, y1) in zip(whole.epoch(0), parts[0].epoch(0), parts[1].epoch(0)):
        assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)
        assert torch.equal(x[0::2], x0)


def test_a_declared_lossy_copy_names_the_data(fake_cifar):
    from omegaconf import OmegaConf

    from resnet_repro.cifar import build_cifar

    from resnet_repro.engine import Engine

    cfg = OmegaConf.create({"data": {"sample": False, "validation_size": 0, "pad": 4, "encoding": "jpeg90"},
                            "data_dir": str(fake_cifar), "download": False, "train": {"batch_size": 10},
                            "engine": {"eval_batch_size": 10}})
    cpu = Engine(torch.device("cpu"), "fp32", False, None)
    assert build_cifar(cfg, cpu).dataset.name == "cifar10_jpeg90"
    cfg.data.encoding = "original"
    assert build_cifar(cfg, cpu).dataset == DataId("cifar10")
