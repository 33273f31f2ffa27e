"""Time our training step against the pipeline most CIFAR ResNet reimplementations use.

The reference is built the way popular reimplementations build it: a torchvision-style `Dataset`
handing out one PIL image at a time, `RandomCrop(32, padding=4)` + `RandomHorizontalFlip` +
`ToTensor` + `Normalize`, a `DataLoader` with worker processes, an eager fp32 model, plain SGD and
`loss.item()` every step. Ours is what `fit` runs: the whole set as one tensor on the device,
batched crop/flip, and the stepper `fit` steps (steppers.Solo: the model, optimizer and compilation
`fit` prepares). Both train the same model on the same images in the same process; warm-up steps (and
compilation) are excluded, and the two are timed in alternating rounds so a machine shared with other
work slows both alike.
"""

from __future__ import annotations

import csv
import io
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.nn import functional as F

from .cifar import TensorImageLoader, load_cifar10, read_bundled_sample
from .config import compose_experiment, data_root, expand_runs
from .engine import setup_engine
from .errors import UserError
from .hardware import device_name, usable_cores
from .models import build_model
from .packing import PackedLoader
from .results import atomic_write_text, git_commit
from .steppers import Packed, Solo, prepare_model
from .train import lr_at

PAPER_ITERATIONS = 64_000  # the CIFAR-10 schedule of Sec. 4.2
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # what the reimplementations use
CSV_COLUMNS = ["date", "device", "torch", "model", "batch", "data", "ref_images_per_s", "ours_images_per_s",
               "speedup", "ref_pipeline", "ours_pipeline", "steps", "git_commit", "precision", "pack",
               "member_images_per_s",
               # bench imagenet: one row per pipeline timed alone (ref_/ours_ columns empty)
               "bench", "pipeline", "images_per_s", "workers", "per_worker_images_per_s"]


@dataclass
class BenchResult:
    date: str
    device: str
    torch: str
    model: str
    batch: int
    data: str
    ref_images_per_s: float
    ours_images_per_s: float
    speedup: float
    ref_pipeline: str
    ours_pipeline: str
    steps: int
    git_commit: str
    precision: str = ""  # ours: bf16, fp16, tf32 or fp32, and why (engine.precision: auto decides by the hardware)
    pack: int | None = None  # --pack K: ref is one run alone, ours K runs packed (images/s of all K together)
    member_images_per_s: float | None = None  # --pack K: images/s of each packed run
    bench: str = "cifar"  # cifar (ours against the reference) or pack (alone against packed)

    def projected_hours(self, images_per_s: float) -> float:
        return PAPER_ITERATIONS * self.batch / images_per_s / 3600


class PILCifar(torch.utils.data.Dataset):
    """CIFAR-10 as torchvision's `datasets.CIFAR10` serves it: HWC uint8 arrays, one PIL image per item."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.data = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def reference_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int, workers: int,
                     device: torch.device) -> torch.utils.data.DataLoader:
    from torchvision import transforms

    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])
    return torch.utils.data.DataLoader(
        PILCifar(images, labels, transform), batch_size=batch_size, shuffle=True, num_workers=workers,
        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=workers > 0)


def _forever(epochs: Callable[[int], Iterator]) -> Iterator:
    for epoch in itertools.count():
        yield from epochs(epoch)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], int], count: int, device: torch.device) -> tuple[int, float]:
    """Images and seconds for `count` calls of `step` (which returns its batch size)."""
    _sync(device)
    start, images = time.perf_counter(), 0
    for _ in range(count):
        images += step()
    _sync(device)
    return images, time.perf_counter() - start


def run_bench(
    arch: str = "resnet",
    n: int = 3,
    batch_size: int = 128,
    data_dir: Path | None = None,
    steps: int | None = None,
    warmup: int | None = None,
    rounds: int = 2,
    workers: int | None = None,
    device: str = "auto",
    results_dir: Path = Path("results"),
    overrides: list[str] = (),
    log: Callable[[str], None] = lambda line: None,
) -> BenchResult:
    """Time both pipelines, append a row to `results_dir/bench.csv` and return the numbers.
    `log` receives the report line by line; its last line is `speedup: <ratio>x`.
    `overrides` are Hydra overrides for our side (e.g. engine.precision=fp32, engine.threads=1)."""
    bench = _setup(arch, n, batch_size, data_dir, device, overrides, log)
    cfg, engine, dev = bench.cfg, bench.engine, bench.engine.device
    steps = steps or (300 if dev.type == "cuda" else 20)
    warmup = warmup if warmup is not None else (30 if dev.type == "cuda" else 3)
    workers = workers if workers is not None else min(4, usable_cores())

    # the reference: PIL Dataset + DataLoader workers, eager fp32, loss.item() each step
    torch.manual_seed(0)
    ref_model = build_model(cfg.model, 10).to(dev)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    ref_loader = reference_loader(bench.images, bench.labels, batch_size, workers, dev)
    ref_batches = _forever(lambda _: iter(ref_loader))

    def ref_step() -> int:
        x, y = next(ref_batches)
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        loss = F.cross_entropy(ref_model(x), y)
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        loss.item()  # what the reimplementations log every step
        return len(y)

    # ours: what fit runs per step
    torch.manual_seed(0)
    ours = Solo(*prepare_model(cfg, engine, 10), engine)
    ours_batches = _forever(bench.loader.epoch)
    window = torch.zeros(1, 3, device=dev)
    iteration = itertools.count()

    def ours_step() -> int:
        nonlocal window
        x, y = next(ours_batches)
        window += ours.step([lr_at(next(iteration), cfg.train, warming_up=False)], x, y)
        return y.shape[0]

    log(f"warming up ({warmup} steps each{', compiling ours' if engine.compile else ''})")
    ref_ips, ours_ips = _alternate(ref_step, ours_step, steps, warmup, rounds, dev, log)
    ours_parts = [p for p, on in ((f"{engine.precision} autocast", engine.amp), ("channels_last", engine.channels_last),
                                  (f"torch.compile ({engine.compile})", engine.compile)) if on]
    result = bench.result(
        steps, ref_images_per_s=round(ref_ips, 2), ours_images_per_s=round(ours_ips, 2),
        speedup=round(ours_ips / ref_ips, 3),
        ref_pipeline=f"PIL Dataset + DataLoader ({workers} workers), fp32 eager",
        ours_pipeline="tensor loader on device, fused SGD" + "".join(f", {p}" for p in ours_parts),
    )
    path = append_row(Path(results_dir) / "bench.csv", result)
    for label, ips, pipeline in (("reference", ref_ips, result.ref_pipeline), ("ours", ours_ips, result.ours_pipeline)):
        log(f"{label:<9} {ips:8.1f} images/s  64k iterations: {result.projected_hours(ips):6.2f} h  ({pipeline})")
    log(f"wrote {path}")
    log(f"speedup: {result.speedup:.2f}x")
    return result


@dataclass
class _Bench:
    """What both benches start from: the config and engine, the training images on the device as fit
    loads them, and the fields every bench.csv row shares."""

    cfg: object
    engine: object
    images: torch.Tensor
    labels: torch.Tensor
    loader: TensorImageLoader
    what: str  # the data, in words
    model_name: str

    def result(self, steps: int, **fields) -> BenchResult:
        return BenchResult(
            date=datetime.now(timezone.utc).isoformat(timespec="seconds"), device=device_name(self.engine.device),
            torch=torch.__version__, model=self.model_name, batch=int(self.cfg.train.batch_size), data=self.what,
            steps=steps, git_commit=git_commit(), precision=self.engine.precision_text, **fields)


def _setup(arch, n, batch_size, data_dir, device, overrides, log) -> _Bench:
    """The config, engine and training images of a bench; logs what is benched where."""
    sample = data_dir is None and data_root(None) is None
    data_overrides = ["data.sample=true"] if sample else ["data.sample=false", f"data_dir={data_root(data_dir)}"]
    cfg = compose_experiment("custom", [f"model.arch={arch}", f"model.n={n}", f"train.batch_size={batch_size}",
                                        f"engine.device={device}", *data_overrides, *overrides])
    engine = setup_engine(cfg)
    arrays = read_bundled_sample() if sample else load_cifar10(data_root(cfg.data_dir), download=False)
    images, labels = arrays.train_images, arrays.train_labels
    encoding = cfg.data.get("encoding", "original")
    what = f"{len(labels):,} CIFAR-10 images" + (
        " (bundled sample)" if sample else "" if encoding == "original" else f" ({encoding} copy)")
    model_name = expand_runs(cfg)[0].run.model_name
    log(f"bench: {model_name}, batch {batch_size}, {what}, {device_name(engine.device)}, torch {torch.__version__}")
    log(f"precision (ours): {engine.precision_text}")
    log(f"compile (ours): {engine.compilation}")
    loader = TensorImageLoader.from_images(images, labels, images.float().div(255).mean(0), batch_size, True,
                                           engine.device, int(cfg.seed), int(cfg.data.pad))
    return _Bench(cfg, engine, images, labels, loader, what, model_name)


def _alternate(first: Callable[[], int], second: Callable[[], int], steps: int, warmup: int, rounds: int,
               device: torch.device, log: Callable[[str], None]) -> tuple[float, float]:
    """Images/s of two step functions: `warmup` untimed steps each, then `steps` each in alternating rounds."""
    timed(first, warmup, device)
    timed(second, warmup, device)
    totals = [[0, 0.0], [0, 0.0]]
    per_round = [steps // rounds + (r < steps % rounds) for r in range(rounds)]
    for r, count in enumerate(per_round, 1):
        for total, step in zip(totals, (first, second)):
            images_done, seconds = timed(step, count, device)
            total[0] += images_done
            total[1] += seconds
        log(f"round {r}/{rounds}: {count} steps each")
    return totals[0][0] / totals[0][1], totals[1][0] / totals[1][1]


def run_pack_bench(
    pack: int,
    arch: str = "resnet",
    n: int = 3,
    batch_size: int = 128,
    data_dir: Path | None = None,
    steps: int | None = None,
    warmup: int | None = None,
    rounds: int = 2,
    device: str = "auto",
    results_dir: Path = Path("results"),
    overrides: list[str] = (),
    log: Callable[[str], None] = lambda line: None,
) -> BenchResult:
    """`engine.pack`: one run alone (steppers.Solo) against `pack` runs packed (steppers.Packed),
    side by side in one process; a row in `results_dir/bench.csv` (ref = alone, ours = packed, all
    members' images together). The last log line is `pack speedup: <ratio>x` (aggregate over alone)."""
    if pack < 1:
        raise UserError(f"--pack {pack}: give a whole number >= 1")
    bench = _setup(arch, n, batch_size, data_dir, device, overrides, log)
    cfg, engine, dev, loader = bench.cfg, bench.engine, bench.engine.device, bench.loader
    steps = steps or (300 if dev.type == "cuda" else 10)
    warmup = warmup if warmup is not None else (30 if dev.type == "cuda" else 2)

    torch.manual_seed(0)  # one run alone: fit's model, optimizer, compilation and step
    solo = Solo(*prepare_model(cfg, engine, 10), engine)
    solo_batches = _forever(loader.epoch)
    lr = lr_at(0, cfg.train, warming_up=False)

    def solo_step() -> int:
        x, y = next(solo_batches)
        solo.step([lr], x, y)
        return y.shape[0]

    solos = []  # `pack` runs of seeds 0.., packed as fit packs them
    for seed in range(pack):
        torch.manual_seed(seed)
        solos.append(prepare_model(cfg, engine, 10))
    packed = Packed(solos, engine)
    packed_batches = _forever(PackedLoader([loader.with_seed(seed) for seed in range(pack)]).epoch)

    def packed_step() -> int:
        x, y = next(packed_batches)
        packed.step([lr] * pack, x, y)
        return y.numel()  # images of all members

    log(f"one run alone vs {pack} packed: warming up ({warmup} steps each)")
    alone, together = _alternate(solo_step, packed_step, steps, warmup, rounds, dev, log)
    parts = [p for p, on in ((f"{engine.precision} autocast", engine.amp), ("channels_last", engine.channels_last)) if on]
    result = bench.result(
        steps, ref_images_per_s=round(alone, 2), ours_images_per_s=round(together, 2), speedup=round(together / alone, 3),
        ref_pipeline="one run alone (fit's step" + (f", torch.compile ({engine.compile})" if engine.compile else "")
                     + ")", ours_pipeline=f"{pack} runs packed (grouped convs, PackedSGD, eager"
                     + "".join(f", {p}" for p in parts) + ")",
        pack=pack, member_images_per_s=round(together / pack, 2), bench="pack",
    )
    path = append_row(Path(results_dir) / "bench.csv", result)
    hours_alone, hours_packed = pack * result.projected_hours(alone), result.projected_hours(together / pack)
    log(f"alone     {alone:8.1f} images/s                       {pack} runs of 64k iterations one after another: "
        f"{hours_alone:6.2f} h")
    log(f"packed    {together:8.1f} images/s ({together / pack:8.1f} per run)  {pack} runs of 64k iterations packed: "
        f"{hours_packed:6.2f} h")
    log(f"wrote {path}")
    log(f"pack speedup: {result.speedup:.2f}x")
    return result


def append_row(path: Path, result: BenchResult) -> Path:
    return append_rows(path, [asdict(result)])


def append_rows(path: Path, new_rows: list[dict]) -> Path:
    """Add rows to the CSV; the file is replaced atomically. Rows written before a column was
    added keep their values, with the new column empty."""
    rows = list(csv.DictReader(io.StringIO(path.read_text()))) if path.exists() else []
    rows += [{k: ("" if v is None else v) for k, v in r.items() if k in CSV_COLUMNS} for r in new_rows]
    columns = CSV_COLUMNS + [c for c in (rows[0].keys() if rows else []) if c not in CSV_COLUMNS]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    return path
