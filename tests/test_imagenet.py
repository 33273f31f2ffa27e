"""ImageNet-style data on small generated ImageFolder trees: folders, sizes, augmentation, the mean
image, test-time protocols scored by `train.evaluate`, BN recalibration, and the ImageNet configs."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from imagefolders import write_image_folder
from resnet_repro import imagenet
from resnet_repro import imagenet_transforms as transforms
from resnet_repro.config import compose_experiment, expand_runs
from resnet_repro.engine import Engine
from resnet_repro.errors import UserError
from resnet_repro.models import imagenet_resnet
from resnet_repro.runner import build_data
from resnet_repro.scoring import evaluate, recalibrate_bn
from resnet_repro.steppers import Scorer

pytestmark = [pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning"),
              pytest.mark.usefixtures("one_thread")]

CPU = Engine(device=torch.device("cpu"), precision="fp32", channels_last=False, compile=None)
SIZES = transforms.Sizes((40, 48), 32, 36, (32, 48))


@pytest.fixture(scope="module")
def files(image_tree):
    train_files = imagenet.list_images(image_tree / "train")
    return train_files, imagenet.list_images(image_tree / "val", classes=train_files.classes)


def zero_mean(device="cpu"):
    return transforms.Normalize(torch.zeros(3, 1, 1), torch.device(device))


def loader(files, seed=0, batch_size=4, lighting_std=0.1, workers=0, rank=0, world=1, on_device=False):
    return imagenet.FolderLoader(files, SIZES, zero_mean(), batch_size, torch.device("cpu"), seed, lighting_std,
                                 workers, rank, world, decode_on_device=on_device)


# Both pipelines: CPU workers decode and crop, or workers read bytes and the device (here the CPU,
# standing in for a GPU) decodes and crops. Distribution checks run on both.
PIPELINES = pytest.mark.parametrize("on_device", [False, True], ids=["cpu-decode", "device-decode"])


# ---------------------------------------------------------------------------------- folders, sizes


def test_lists_sorted_classes_and_finds_a_nested_split(image_tree, tmp_path):
    train_files = imagenet.list_images(image_tree / "train", per_class=2, max_classes=2)
    assert train_files.classes == ["n00000000", "n00000001"] and train_files.labels == [0, 0, 1, 1]
    nested = write_image_folder(tmp_path / "extracted" / "imagenette_64px", classes=2, train_per_class=1,
                                val_per_class=1)
    assert imagenet.find_split(tmp_path / "extracted", "val") == nested / "val"
    with pytest.raises(UserError, match="ImageFolder"):
        imagenet.find_split(tmp_path, "val")


def test_bad_sizes_are_user_errors():
    with pytest.raises(UserError, match="scale_range"):
        transforms.Sizes((24, 48), 32, 36, (32,))
    with pytest.raises(UserError, match="test_resize"):
        transforms.Sizes((40, 48), 32, 30, (32,))


def test_grey_and_cmyk_jpegs_decode_to_rgb(files):
    for path in files[0].paths:
        img = imagenet.read_image(path)
        assert img.dtype == torch.uint8 and img.shape[0] == 3 and min(img.shape[1:]) >= 40


# -------------------------------------------------------------------------------- train transform


def test_random_crop_flip_is_a_window_of_the_rescaled_image_or_its_mirror():
    img = torch.randint(0, 256, (3, 50, 90), dtype=torch.uint8)
    assert transforms.resized_dims(50, 90, 40) == (40, 72) and transforms.resized_dims(90, 50, 40) == (72, 40)
    windows = {}  # (shorter side, mirrored) -> every 32x32 window of the image resized so, (3, rows, cols, 32, 32)
    for short in range(SIZES.scale_range[0], SIZES.scale_range[1] + 1):
        scaled = transforms.resize_short(img, short)
        for mirrored in (False, True):
            windows[short, mirrored] = (scaled.flip(-1) if mirrored else scaled).unfold(1, 32, 1).unfold(2, 32, 1)
    scales, mirrors = set(), set()
    for i in range(20):
        view = transforms.random_crop_flip(img, np.random.default_rng(i), SIZES)
        assert view.shape == (3, 32, 32) and view.dtype == torch.uint8
        hits = [key for key, w in windows.items() if (w == view[:, None, None]).all(0).flatten(2).all(-1).any()]
        assert hits, f"view {i} is no window of the image rescaled to a shorter side in {SIZES.scale_range}"
        scales.add(hits[0][0])
        mirrors.add(hits[0][1])
    assert len(scales) > 3 and mirrors == {False, True}  # scale augmentation and flips both happen


@PIPELINES
def test_train_batches_are_normalised_crops_on_the_device(files, on_device):
    x, y = next(iter(loader(files[0], lighting_std=0.0, on_device=on_device)))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    pixels = x * 255  # no mean, no lighting: the uint8 crop, scaled
    assert torch.allclose(pixels, pixels.round(), atol=1e-3) and 0 <= x.min() and x.max() <= 1
    mean = imagenet.compute_mean(files[0], SIZES, "pixel", 8)
    x, _ = next(iter(imagenet.FolderLoader(files[0], SIZES, transforms.Normalize(mean, torch.device("cpu")), 4,
                                           torch.device("cpu"), lighting_std=0.1, decode_on_device=on_device)))
    assert -1 < x.min() < 0 < x.max() < 1  # mean subtracted (and lighting added)


@PIPELINES
def test_pca_lighting_is_a_zero_mean_colour_shift(files, on_device):
    alpha = torch.randn(20000, 3, generator=torch.Generator().manual_seed(0)) * 0.1
    shift = transforms.lighting_shift(alpha)
    assert shift.abs().mean() > 1e-3  # it changes colours ...
    assert (shift.mean(0).abs() < 4 * shift.std(0) / 20000 ** 0.5).all()  # ... with zero-mean noise
    assert torch.allclose(transforms.lighting_shift(torch.eye(3)), (transforms.PCA_EIGVEC * transforms.PCA_EIGVAL).T)
    plain = next(iter(loader(files[0], lighting_std=0.0, on_device=on_device)))
    lit = next(iter(loader(files[0], lighting_std=0.1, on_device=on_device)))
    assert torch.equal(plain[1], lit[1])
    diff = lit[0] - plain[0]  # one RGB offset per image, the same at every pixel
    offsets = diff[:, :, :1, :1]
    assert torch.allclose(diff, offsets.expand_as(diff), atol=1e-6) and offsets.abs().min() > 0
    assert not torch.allclose(offsets[0], offsets[1])


@PIPELINES
def test_epoch_order_depends_only_on_seed_and_epoch_and_resumes(files, on_device):
    def batches(ld, epoch, start=0):
        return [(x.clone(), y.clone()) for x, y in ld.epoch(epoch, start)]

    one, two = (batches(loader(files[0], seed=3, on_device=on_device), 1) for _ in range(2))
    assert len(one) == 4 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(one, two))
    assert not torch.equal(one[0][0], batches(loader(files[0], seed=3, on_device=on_device), 2)[0][0])
    assert not torch.equal(one[0][0], batches(loader(files[0], seed=4, on_device=on_device), 1)[0][0])
    resumed = batches(loader(files[0], seed=3, on_device=on_device), 1, start=2)
    assert len(resumed) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(resumed, one[2:]))
    # worker processes draw the same augmentation as the main process
    with_workers = batches(loader(files[0], seed=3, workers=1, on_device=on_device), 1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(with_workers, one))


def test_both_pipelines_give_the_same_batches_for_a_seed(files):
    """Given the same draws the device pipeline makes the CPU pipeline's views: same files, crops,
    flips and lighting, whether workers decode or only read bytes."""
    for epoch, start in ((0, 0), (1, 2)):
        cpu = list(loader(files[0], seed=5, workers=1).epoch(epoch, start))
        device = list(loader(files[0], seed=5, workers=1, on_device=True).epoch(epoch, start))
        assert len(cpu) == len(device) > 0
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(cpu, device))


@pytest.mark.parametrize("protocol", imagenet.TEST_PROTOCOLS)
def test_both_pipelines_give_the_same_test_views(files, protocol):
    cpu, device = (imagenet.TestLoader(files[1], SIZES, protocol, zero_mean(), 4, torch.device("cpu"),
                                       decode_on_device=on) for on in (False, True))
    for (v1, y1, i1), (v2, y2, i2) in zip(cpu.indexed(), device.indexed(), strict=True):
        assert torch.equal(y1, y2) and torch.equal(i1, i2) and all(torch.equal(a, b) for a, b in zip(v1, v2, strict=True))


def test_a_crop_is_drawn_from_the_image_size_alone():
    """The draw needs no pixels, and a GPU's float resize (torchvision resizes uint8 on CUDA in float,
    then rounds) gives the CPU's uint8 kernel's view to within one grey level."""
    img = torch.randint(0, 256, (3, 50, 90), dtype=torch.uint8)
    img = torch.nn.functional.avg_pool2d(img[None].float(), 3, 1, 1)[0].round().to(torch.uint8)  # photo-like
    for i in range(10):
        draw = transforms.draw_crop(50, 90, np.random.default_rng(i), SIZES)
        view = transforms.apply_crop(img, draw, SIZES.crop)
        assert torch.equal(view, transforms.random_crop_flip(img, np.random.default_rng(i), SIZES))
        as_float = transforms.apply_crop(img.float(), draw, SIZES.crop).round().clamp(0, 255)
        assert (as_float - view.float()).abs().max() <= 1


def test_decode_setting_falls_back_to_cpu_where_there_is_no_gpu():
    cpu = torch.device("cpu")
    assert not imagenet.decodes_on_device("auto", cpu) and not imagenet.decodes_on_device("cpu", cpu)
    with pytest.raises(UserError, match="engine.decode=gpu: this run trains on the CPU"):
        imagenet.decodes_on_device("gpu", cpu)
    with pytest.raises(UserError, match="choose one of auto, cpu, gpu"):
        imagenet.decodes_on_device("nvjpeg", cpu)
    with pytest.raises(UserError, match="engine.decode=nvjpeg: use one of auto, cpu, gpu"):  # before any run starts
        expand_runs(compose_experiment("table2", ["engine.decode=nvjpeg"]))
    cpu_ids, auto_ids = ([r.run.id for r in expand_runs(compose_experiment("table2", o))] for o in (["engine.decode=cpu"], []))
    assert cpu_ids == auto_ids  # the same batches either way: not a variant of the run


def test_ranks_split_each_global_batch(files):
    full = loader(files[0], seed=1).batches(0)
    r0, r1 = loader(files[0], seed=1, rank=0, world=2).batches(0), loader(files[0], seed=1, rank=1, world=2).batches(0)
    assert [a + b for a, b in zip(r0, r1)] == [b[0::2] + b[1::2] for b in full]


def test_mean_image_is_cached_in_the_data_folder(files):
    pixel = imagenet.mean_for(files[0], SIZES, "pixel", 8)
    assert pixel.shape == (3, 32, 32) and 0 < pixel.min() and pixel.max() < 1
    assert list((files[0].folder.parent / ".resnet_repro").glob("mean-pixel-32-36-8-*.pt"))
    assert torch.equal(imagenet.mean_for(files[0], SIZES, "pixel", 8), pixel)
    assert imagenet.mean_for(files[0], SIZES, "channel", 8).shape == (3, 1, 1)


# ------------------------------------------------------------------------------- test protocols


def val_loader(files, protocol, batch_size=4):
    return imagenet.TestLoader(files[1], SIZES, protocol, zero_mean(), batch_size, torch.device("cpu"))


def test_ten_crop_gives_corners_center_and_flips(files):
    (center, y1), = [next(iter(val_loader(files, "center", 6)))]
    views, y = next(iter(val_loader(files, "10crop", 6)))
    assert len(views) == 10 and all(v.shape == (6, 3, 32, 32) for v in views) and torch.equal(y, y1)
    assert torch.equal(views[4], center)
    assert torch.equal(views[9], center.flip(-1)) and torch.equal(views[5], views[1].flip(-1))


def test_multiscale_views_are_whole_images_at_each_scale(files):
    ld = val_loader(files, "multiscale", 250)
    seen = 0
    for views, y in ld:
        assert len(views) == len(SIZES.multiscale)  # the paper averages scales; flips only on request
        for view, short in zip(views, SIZES.multiscale):
            assert min(view.shape[-2:]) == short
        seen += len(y)
    assert seen == len(files[1]) and len(ld) > 1  # images of other aspect ratios go to other batches


def test_multiscale_flips_are_an_option():
    img = torch.randint(0, 255, (3, 40, 60), dtype=torch.uint8)
    with_flips = transforms.test_views(img, "multiscale", dataclasses.replace(SIZES, multiscale_flips=True))
    assert len(with_flips) == 2 * len(SIZES.multiscale)
    assert all(torch.equal(f, v.flip(-1)) for v, f in zip(with_flips[::2], with_flips[1::2]))


class ColourNet(torch.nn.Module):
    """Scores class c by the mean of colour channel c (negated: the class colour scores lowest)."""

    def __init__(self, sign: float = 1.0):
        super().__init__()
        self.sign = sign

    def forward(self, x):
        return self.sign * 20 * x.mean((2, 3))


@pytest.fixture(scope="module")
def colour_val(tmp_path_factory):
    """3 classes x 4 RGB JPEGs of varied sizes, each mostly its class's colour channel."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"n{c}").mkdir()
        for i, (h, w) in enumerate([(48, 64), (64, 48), (56, 56), (40, 80)]):
            pixels = np.full((h, w, 3), 40.0) + rng.normal(0, 10, (h, w, 3))
            pixels[..., c] += 180
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / f"n{c}" / f"{i}.JPEG", quality=95)
    return imagenet.list_images(root)


@pytest.mark.parametrize("protocol", imagenet.TEST_PROTOCOLS)
def test_evaluate_scores_every_image_of_every_protocol_against_its_own_label(colour_val, protocol):
    ld = imagenet.TestLoader(colour_val, SIZES, protocol, zero_mean(), 5, torch.device("cpu"))
    assert evaluate(Scorer(ColourNet(), CPU), ld, CPU) == [(0.0, 0.0)]  # every image right
    # every image wrong; with 3 classes all in the top 5
    assert evaluate(Scorer(ColourNet(-1.0), CPU), ld, CPU) == [(100.0, 0.0)]
    half = imagenet.TestLoader(colour_val, SIZES, protocol, zero_mean(), 5, torch.device("cpu"))
    half.files = imagenet.ImageFiles(colour_val.paths, [0] * len(colour_val), colour_val.classes, colour_val.folder)
    assert evaluate(Scorer(ColourNet(), CPU), half, CPU)[0][0] == pytest.approx(100 * 8 / 12)  # all labelled 0


def test_bn_recalibration_averages_over_training_images(files):
    model = imagenet_resnet(18, "resnet", "B", num_classes=3)
    ld = loader(files[0], batch_size=6)
    seen = recalibrate_bn(Scorer(model, CPU), ld.epoch(0), 12, CPU)
    assert seen == 12 and model.bn1.momentum == 0.1 and model.training
    with torch.no_grad():
        outs = torch.cat([model.conv1(x) for x, _ in list(ld.epoch(0))[:2]])
    assert torch.allclose(model.bn1.running_mean, outs.mean((0, 2, 3)), atol=1e-5)


# ------------------------------------------------------------------------------------ configs


def test_experiments_use_the_imagenet_recipe():
    cfg = compose_experiment("table3", [])
    t, d = cfg.train, cfg.data
    assert (t.iterations, t.lr, t.schedule, list(t.milestones), t.batch_size, t.momentum, t.weight_decay) == (
        600000, 0.1, "step", [150000, 300000, 450000], 256, 0.9, 0.0001)
    assert t.warmup.min_depth is None and cfg.model.stride_on == "v1"
    assert (list(d.scale_range), d.crop, d.test_resize, list(d.multiscale), d.lighting_std, d.mean) == (
        [256, 480], 224, 256, [224, 256, 384, 480, 640], 0.1, "pixel")
    assert [r.run.model_name for r in expand_runs(cfg)] == [
        "plain34", "resnet34-A", "resnet34-B", "resnet34-C", "resnet50-B", "resnet101-B", "resnet152-B"]
    assert expand_runs(compose_experiment("table1", [])) == []


def test_proxy_profile_scales_sizes_and_labels_the_data():
    cfg = compose_experiment("table2", ["profile=proxy"])
    d = cfg.data
    assert (d.name, d.subset) == ("imagenette", "64px_proxy") and "proxy" in cfg.profile.label
    assert (list(d.scale_range), d.crop, d.test_resize, list(d.multiscale)) == (
        [64, 120], 56, 64, [56, 64, 96, 120, 160])
    assert not cfg.profile.full_schedule and cfg.train.schedule == "step"


def test_build_data_needs_a_folder_and_the_proxy_an_imagenet_experiment(tmp_path, monkeypatch):
    monkeypatch.delenv("RESNET_REPRO_DATA", raising=False)
    cfg = expand_runs(compose_experiment("table2", ["profile=smoke"]))[0]
    with pytest.raises(UserError, match="--data-dir"):
        build_data(cfg, CPU, 0)
    cfg = compose_experiment("table6", ["profile=proxy", f"data_dir={tmp_path}"])
    with pytest.raises(UserError, match="a net and its data go together; profile=proxy and data=imagenette are"):
        expand_runs(cfg)  # refused before any data is read
