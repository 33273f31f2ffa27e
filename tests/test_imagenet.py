"""The ImageNet side: Table 1 counts, the data pipeline on small generated ImageFolder trees,
test-time protocols, torchvision weights, and a CPU smoke run of Table 2 through the CLI."""

import json

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from imagefolders import write_image_folder
from resnet_repro import imagenet, paper, train
from resnet_repro.config import compose_experiment, expand_runs
from resnet_repro.data import build_data
from resnet_repro.errors import UserError
from resnet_repro.models import count_parameters, from_torchvision, imagenet_resnet
from resnet_repro.train import Engine, evaluate

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

CPU = Engine(device=torch.device("cpu"), amp=False, channels_last=False, compile=None)
SIZES = imagenet.Sizes((40, 48), 32, 36, (32, 48))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and OpenMP's spinning barriers make two threads many
    times slower when other processes share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """3 classes x 6 train / 2 val JPEGs of varied sizes (some grey-scale, one CMYK)."""
    return write_image_folder(tmp_path_factory.mktemp("imagenet") / "data")


@pytest.fixture(scope="module")
def files(tree):
    train_files = imagenet.list_images(tree / "train")
    return train_files, imagenet.list_images(tree / "val", classes=train_files.classes)


def zero_mean(device="cpu"):
    return imagenet.Normalize(torch.zeros(3, 1, 1), torch.device(device))


def loader(files, seed=0, batch_size=4, lighting_std=0.1, workers=0, rank=0, world=1):
    return imagenet.FolderLoader(files, SIZES, zero_mean(), batch_size, torch.device("cpu"), seed, lighting_std,
                                 workers, rank, world)


# ---------------------------------------------------------------------------------------- Table 1


@pytest.fixture(scope="module")
def table1():
    return {r["model"]: r for r in imagenet.table1_rows()}


def test_table1_flops_within_2_percent_of_the_paper(table1):
    assert [r["model"] for r in table1.values()] == [f"resnet{d}-B" for d in (18, 34, 50, 101, 152)]
    for depth, paper_gflops in paper.IMAGENET_GFLOPS.items():
        row = table1[f"resnet{depth}-B"]
        assert row["paper_gflops"] == paper_gflops and row["layers"] == depth
        assert abs(row["gflops"] - paper_gflops) / paper_gflops < 0.02, row


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_option_b_parameters_equal_torchvision(table1, depth):
    theirs = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    assert table1[f"resnet{depth}-B"]["params"] == count_parameters(theirs)


def test_shortcut_options_a_b_c_add_parameters_in_that_order():
    a, b, c = (count_parameters(imagenet_resnet(34, "resnet", s)) for s in "ABC")
    assert count_parameters(imagenet_resnet(34, "plain")) == a < b < c


def test_write_table1(tmp_path, monkeypatch, table1):
    monkeypatch.setattr(imagenet, "table1_rows", lambda: list(table1.values()))  # counted once above
    csv_path, md_path = imagenet.write_table1(tmp_path)
    assert csv_path.read_text().splitlines()[0].startswith("model,layers,blocks,params,gflops,paper_gflops")
    assert "| resnet152-B | 152 | bottleneck [3,8,36,3] | 60,192,808 | 11.28 | 11.3 |" in md_path.read_text()


# ---------------------------------------------------------------------------------- folders, sizes


def test_lists_sorted_classes_and_finds_a_nested_split(tree, tmp_path):
    train_files = imagenet.list_images(tree / "train", per_class=2, max_classes=2)
    assert train_files.classes == ["n00000000", "n00000001"] and train_files.labels == [0, 0, 1, 1]
    nested = write_image_folder(tmp_path / "extracted" / "imagenette_64px", classes=2, train_per_class=1,
                                val_per_class=1)
    assert imagenet.find_split(tmp_path / "extracted", "val") == nested / "val"
    with pytest.raises(UserError, match="ImageFolder"):
        imagenet.find_split(tmp_path, "val")


def test_bad_sizes_are_user_errors():
    with pytest.raises(UserError, match="scale_range"):
        imagenet.Sizes((24, 48), 32, 36, (32,))
    with pytest.raises(UserError, match="test_resize"):
        imagenet.Sizes((40, 48), 32, 30, (32,))


def test_grey_and_cmyk_jpegs_decode_to_rgb(files):
    for path in files[0].paths:
        img = imagenet.read_image(path)
        assert img.dtype == torch.uint8 and img.shape[0] == 3 and min(img.shape[1:]) >= 40


# -------------------------------------------------------------------------------- train transform


def test_random_crop_flip_sizes_and_values():
    import numpy as np

    img = torch.randint(0, 256, (3, 50, 90), dtype=torch.uint8)
    for i in range(10):
        view = imagenet.random_crop_flip(img, np.random.default_rng(i), SIZES)
        assert view.shape == (3, 32, 32) and view.dtype == torch.uint8
    assert imagenet.resized_dims(50, 90, 40) == (40, 72) and imagenet.resized_dims(90, 50, 40) == (72, 40)


def test_train_batches_are_normalised_crops_on_the_device(files):
    x, y = next(iter(loader(files[0], lighting_std=0.0)))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    pixels = x * 255  # no mean, no lighting: the uint8 crop, scaled
    assert torch.allclose(pixels, pixels.round(), atol=1e-3) and 0 <= x.min() and x.max() <= 1
    mean = imagenet.compute_mean(files[0], SIZES, "pixel", 8)
    x, _ = next(iter(imagenet.FolderLoader(files[0], SIZES, imagenet.Normalize(mean, torch.device("cpu")), 4,
                                           torch.device("cpu"), lighting_std=0.1)))
    assert -1 < x.min() < 0 < x.max() < 1  # mean subtracted (and lighting added)


def test_pca_lighting_is_a_zero_mean_colour_shift(files):
    alpha = torch.randn(20000, 3, generator=torch.Generator().manual_seed(0)) * 0.1
    shift = imagenet.lighting_shift(alpha)
    assert shift.abs().mean() > 1e-3  # it changes colours ...
    assert (shift.mean(0).abs() < 4 * shift.std(0) / 20000 ** 0.5).all()  # ... with zero-mean noise
    assert torch.allclose(imagenet.lighting_shift(torch.eye(3)), (imagenet.PCA_EIGVEC * imagenet.PCA_EIGVAL).T)
    plain, lit = next(iter(loader(files[0], lighting_std=0.0))), next(iter(loader(files[0], lighting_std=0.1)))
    assert torch.equal(plain[1], lit[1])
    diff = lit[0] - plain[0]  # one RGB offset per image, the same at every pixel
    offsets = diff[:, :, :1, :1]
    assert torch.allclose(diff, offsets.expand_as(diff), atol=1e-6) and offsets.abs().min() > 0
    assert not torch.allclose(offsets[0], offsets[1])


def test_epoch_order_depends_only_on_seed_and_epoch_and_resumes(files):
    def batches(ld, epoch, start=0):
        return [(x.clone(), y.clone()) for x, y in ld.epoch(epoch, start)]

    one, two = batches(loader(files[0], seed=3), 1), batches(loader(files[0], seed=3), 1)
    assert len(one) == 4 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(one, two))
    assert not torch.equal(one[0][0], batches(loader(files[0], seed=3), 2)[0][0])
    assert not torch.equal(one[0][0], batches(loader(files[0], seed=4), 1)[0][0])
    resumed = batches(loader(files[0], seed=3), 1, start=2)
    assert len(resumed) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(resumed, one[2:]))
    # worker processes draw the same augmentation as the main process
    with_workers = batches(loader(files[0], seed=3, workers=1), 1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(with_workers, one))


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
        assert len(views) == 2 * len(SIZES.multiscale)
        for k, short in enumerate(SIZES.multiscale):
            scaled, flipped = views[2 * k], views[2 * k + 1]
            assert min(scaled.shape[-2:]) == short and torch.equal(flipped, scaled.flip(-1))
        seen += len(y)
    assert seen == len(files[1]) and len(ld) > 1  # images of other aspect ratios go to other batches
    model = imagenet_resnet(18, "resnet", "B", num_classes=3)
    for protocol in imagenet.PROTOCOLS:  # the model's global average pool takes any size
        top1, top5 = evaluate(model, val_loader(files, protocol), CPU)
        assert 0 <= top1 <= 100 and top5 == 0  # 3 classes: the true one is always in the top 5


def test_bn_recalibration_averages_over_training_images(files):
    model = imagenet_resnet(18, "resnet", "B", num_classes=3)
    ld = loader(files[0], batch_size=6)
    seen = imagenet.recalibrate_bn(model, ld.epoch(0), 12, CPU)
    assert seen == 12 and model.bn1.momentum == 0.1 and model.training
    with torch.no_grad():
        outs = torch.cat([model.conv1(x) for x, _ in list(ld.epoch(0))[:2]])
    assert torch.allclose(model.bn1.running_mean, outs.mean((0, 2, 3)), atol=1e-5)


# ---------------------------------------------------------------------------- torchvision weights


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_weights_give_identical_logits(tmp_path, depth):
    torch.manual_seed(depth)
    theirs = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    for m in theirs.modules():  # make BN statistics matter
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    torch.save(theirs.state_dict(), tmp_path / "weights.pth")
    ours = from_torchvision(torch.load(tmp_path / "weights.pth")).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_evaluate_torchvision_weights_maps_classes_by_classes_tsv(tree, tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(UserError, match="classes.tsv"):
        imagenet.evaluate_checkpoint(tmp_path / "resnet18.pth", "center", tree, device="cpu", workers=0)
    (tree / "classes.tsv").write_text("n00000000\t0\ttench\nn00000001\t217\tspringer\nn00000002\t482\tcassette\n")
    try:
        r = imagenet.evaluate_checkpoint(tmp_path / "resnet18.pth", "center", tree, device="cpu", workers=0)
    finally:
        (tree / "classes.tsv").unlink()
    assert r["images"] == 6 and r["members"] == ["resnet18"] and 0 <= r["top5_error"] <= r["top1_error"] <= 100


# ------------------------------------------------------------------------------------ configs


def test_experiments_use_the_imagenet_recipe():
    cfg = compose_experiment("table3", [])
    t, d = cfg.train, cfg.data
    assert (t.iterations, t.lr, t.schedule, t.batch_size, t.momentum, t.weight_decay) == (
        600000, 0.1, "plateau", 256, 0.9, 0.0001)
    assert t.warmup.min_depth is None and cfg.model.stride_on == "v1"
    assert (list(d.scale_range), d.crop, d.test_resize, list(d.multiscale), d.lighting_std, d.mean) == (
        [256, 480], 224, 256, [224, 256, 384, 480, 640], 0.1, "pixel")
    assert [r.run.model_name for r in expand_runs(cfg)] == [
        "plain34", "resnet34-A", "resnet34-B", "resnet34-C", "resnet50-B", "resnet101-B", "resnet152-B"]
    assert expand_runs(compose_experiment("table1", [])) == []


def test_proxy_profile_scales_sizes_and_labels_the_data():
    cfg = compose_experiment("table2", ["profile=proxy"])
    d = cfg.data
    assert d.name == "imagenette_64px_proxy" and "proxy" in d.label and "proxy" in cfg.profile.label
    assert (list(d.scale_range), d.crop, d.test_resize, list(d.multiscale)) == (
        [64, 120], 56, 64, [56, 64, 96, 120, 160])
    assert not cfg.profile.full_schedule and cfg.train.schedule == "step"


def test_plateau_schedule_divides_after_patience_evaluations():
    if not hasattr(train, "count_plateau_drops"):
        pytest.skip("train.py plateau hook not applied yet")
    t = OmegaConf.create({"lr": 0.1, "schedule": "plateau", "milestones": [],
                         "plateau": {"patience": 2, "threshold": 0.1, "max_drops": 2}})
    rows = [{"test_error": e} for e in (50, 40, 39.95, 39.99, 30, 31, 32, 33, 34, 35, 36)]
    drops = [train.count_plateau_drops(rows[:k], t) for k in range(len(rows) + 1)]
    assert drops == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    assert train.lr_at(0, t, False, plateau_drops=2) == pytest.approx(0.001)


# ------------------------------------------------------------------------------- end to end


def test_table2_smoke_run_through_the_cli(tree, tmp_path):
    from typer.testing import CliRunner

    from resnet_repro.cli import app

    result = CliRunner().invoke(app, ["run", "table2", "profile=smoke", "--data-dir", str(tree),
                                      "--results-dir", str(tmp_path / "results")])
    assert result.exit_code == 0, result.output
    run_dirs = sorted((tmp_path / "experiments" / "smoke").iterdir())
    assert [p.name for p in run_dirs] == ["plain18-seed0-sample", "plain34-seed0-sample",
                                          "resnet18-A-seed0-sample", "resnet34-A-seed0-sample"]
    for run in run_dirs:
        s = json.loads((run / "summary.json").read_text())
        assert s["status"] == "finished" and s["dataset"] == "imagenet_sample" and s["eval_protocol"] == "center"
        assert (run / "checkpoint.pt").exists() and (run / "metrics.csv").exists()
    assert (tmp_path / "results" / "table2.md").exists()
    # the checkpoint evaluates again to the numbers of the run; two runs make an ensemble
    s = json.loads((run_dirs[2] / "summary.json").read_text())
    again = imagenet.evaluate_checkpoint(run_dirs[2], "10crop", device="cpu")
    if "final_eval" in s:  # train.py's final-evaluation hook
        assert set(s["final_eval"]) == {"10crop", "multiscale"}
        assert again["top1_error"] == pytest.approx(s["final_eval"]["10crop"]["top1_error"])
    both = imagenet.ensemble_eval(run_dirs[2:], "center", device="cpu")
    assert both["members"] == ["resnet18-A-seed0-sample", "resnet34-A-seed0-sample"] and both["images"] == 6


def test_build_data_needs_a_folder_and_an_imagenet_model(tmp_path, monkeypatch):
    monkeypatch.delenv("RESNET_REPRO_DATA", raising=False)
    cfg = expand_runs(compose_experiment("table2", ["profile=smoke"]))[0]
    with pytest.raises(UserError, match="--data-dir"):
        build_data(cfg, CPU, 0)
    cfg = compose_experiment("table6", ["profile=proxy", f"data.root={tmp_path}"])
    with pytest.raises(UserError, match="ImageNet model"):
        build_data(expand_runs(cfg)[0], CPU, 0)
