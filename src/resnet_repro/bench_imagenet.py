"""`resnet-repro bench imagenet`: how fast ImageNet-sized JPEGs reach the model, and how fast ResNet-50
takes them.

ImageNet's training JPEGs are about 400x350 pixels and 110 KB on average. The bench writes a folder of
such images once (`generate_jpegs`: smooth, photo-like content, since noise compresses far worse), or
reads a real ImageFolder given with --data-dir, and times in one run:
- the input pipeline alone, as a run reads it (`FolderLoader.epoch`: batches normalised on the device):
  CPU workers decoding and augmenting (engine.decode=cpu), in total and per worker; on a GPU also nvJPEG
  decoding and augmenting on the device (engine.decode=gpu);
- the ResNet-50 training step alone (`fit`'s step on device-resident batches): batch 256 on a GPU; on a
  CPU a few steps at a small batch, labelled so.
Their ratio says how many CPU cores per GPU the CPU path needs to keep the model fed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torchvision.io import encode_jpeg

from .bench import append_rows, timed
from .config import compose_experiment, data_root, expand_runs
from .engine import setup_engine
from .errors import UserError
from .hardware import device_name, usable_cores
from .device_decode import decodes_on_device
from .imagenet import FolderLoader, ImageFiles, find_split, list_images
from .imagenet_transforms import Normalize, sizes_from_config
from .results import atomic_write_bytes, atomic_write_text, git_commit
from .steppers import Solo, prepare_model

GENERATED_VERSION = 1  # bump when generate_jpegs draws different images
CLASSES = 10


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "resnet_repro" / "bench_imagenet"


def photo_like(h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """uint8 (3, H, W): noise summed over octaves with amplitude falling as 1/frequency, the spectrum
    of natural images; JPEG q90 then spends about what it spends on an ImageNet photo."""
    img = torch.zeros(1, 3, h, w)
    for cells, amplitude in ((3, 60.0), (8, 40.0), (24, 28.0), (72, 20.0), (216, 14.0)):
        gh, gw = max(2, cells * h // max(h, w)), max(2, cells * w // max(h, w))
        noise = torch.randn(1, 3, gh, gw, generator=gen)
        img += amplitude * F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)
    img += 14.0 * torch.randn(1, 3, h, w, generator=gen)  # sensor grain
    return (img[0] + 120).round().clamp(0, 255).to(torch.uint8)


def generate_jpegs(folder: Path, count: int, seed: int = 0, log: Callable[[str], None] = lambda line: None) -> Path:
    """`folder/train/<class>/*.JPEG`: `count` images with ImageNet's sizes (shorter side 300-500, mostly
    landscape, aspect up to 3:2), written once; a finished folder is reused. Returns the folder."""
    marker = folder / f"complete-v{GENERATED_VERSION}-{count}-{seed}"
    if marker.exists():
        return folder
    log(f"writing {count:,} ImageNet-sized JPEGs into {folder} (once)")
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    for i in range(count):
        short = int(rng.integers(300, 501))
        long = int(short * rng.uniform(1.0, 1.5))
        h, w = (short, long) if rng.random() < 0.75 else (long, short)
        path = folder / "train" / f"n{i % CLASSES:08d}" / f"gen_{i:06d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, encode_jpeg(photo_like(h, w, gen), quality=90).numpy().tobytes())
    atomic_write_text(marker, "")
    return folder


def run_imagenet_bench(
    data_dir: Path | None = None,
    images: int = 2000,
    batch_size: int | None = None,
    steps: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    cache_dir: Path | None = None,
    results_dir: Path = Path("results"),
    overrides: list[str] = (),
    log: Callable[[str], None] = lambda line: None,
) -> list[dict]:
    """Time the pipelines and ResNet-50's step, append one row each to `results_dir/bench.csv`, return the rows."""
    if images < 1:
        raise UserError(f"--images {images}: give a whole number >= 1")
    cfg = compose_experiment("custom", ["data=imagenet", "model=imagenet", "train=imagenet", "engine=imagenet",
                                        "model.depth=50", "model.shortcut=B", f"engine.device={device}", *overrides])
    engine = setup_engine(cfg)
    dev, on_gpu = engine.device, engine.device.type == "cuda"
    batch_size = batch_size or (256 if on_gpu else 16)
    steps = steps or (50 if on_gpu else 3)
    workers = workers if workers is not None else usable_cores()

    real = data_root(data_dir)
    if real is not None:
        files = list_images(find_split(real, cfg.data.train_dir))
        what = f"{len(files):,} images of {real}"
    else:
        files = list_images(generate_jpegs(cache_dir or default_cache_dir(), images, log=log) / "train")
        mean_kb = sum(os.path.getsize(p) for p in files.paths) / len(files) / 1024
        what = f"{len(files):,} generated JPEGs (ImageNet sizes, {mean_kb:.0f} KB mean)"
    cpu = device_name(torch.device("cpu"))
    where = f"{device_name(dev)}; {cpu}" if on_gpu else cpu
    log(f"bench imagenet: {what}; {where}; torch {torch.__version__}")

    sizes = sizes_from_config(cfg.data)
    normalize = Normalize(torch.full((3, 1, 1), 0.45), dev)  # the mean's value does not change the cost
    # one epoch over the files (4 passes on a GPU, which decodes faster than we generate), so no worker restarts
    repeats = 4 if on_gpu else 1
    files = ImageFiles(files.paths * repeats, files.labels * repeats, files.classes, files.folder)
    rows = []

    def row(pipeline: str, images_per_s: float, model: str = "", batch: int = 0, steps_done: int = 0,
            workers_used: int | None = None) -> None:
        per_worker = round(images_per_s / workers_used, 1) if workers_used else None
        r = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": where,
             "torch": torch.__version__, "model": model, "batch": batch, "data": what, "steps": steps_done,
             "git_commit": git_commit(), "precision": engine.precision_text if model else "", "bench": "imagenet",
             "pipeline": pipeline, "images_per_s": round(images_per_s, 1), "workers": workers_used,
             "per_worker_images_per_s": per_worker}
        rows.append(r)
        extra = f" ({per_worker:.1f} per worker)" if per_worker else ""
        log(f"{pipeline:<58} {images_per_s:8.1f} images/s{extra}")

    pipelines = [("CPU workers decode + scale/crop/flip (engine.decode=cpu)", False)]
    if decodes_on_device("auto", dev):
        pipelines.append(("nvJPEG decode + scale/crop/flip on the GPU (engine.decode=gpu)", True))
    pipeline_batch = max(1, min(batch_size if on_gpu else 32, len(files) // 4))  # >= 3 timed batches
    for label, on_device in pipelines:
        loader = FolderLoader(files, sizes, normalize, pipeline_batch, dev, 0, float(cfg.data.lighting_std),
                              workers, decode_on_device=on_device)
        batches = iter(loader.epoch(0))
        next(batches)  # untimed: the workers start
        n, seconds = timed(lambda: len(next(batches)[0]), len(loader) - 1, dev)
        row(f"{label}, {workers} worker{'s' if workers != 1 else ''}", n / seconds,
            workers_used=None if on_device else workers)

    torch.manual_seed(0)
    model_cfg = expand_runs(cfg)[0]
    model_name = model_cfg.run.model_name
    solo = Solo(*prepare_model(model_cfg, engine, 1000), engine)
    x = torch.randn(batch_size, 3, sizes.crop, sizes.crop, device=dev)
    y = torch.randint(0, 1000, (batch_size,), device=dev)

    def step() -> int:
        solo.step([0.1], x, y)
        return batch_size

    step()  # untimed: warm-up (and compilation)
    n, seconds = timed(step, steps, dev)
    label = (f"{model_name} training step alone, batch {batch_size}, "
             f"{f'torch.compile ({engine.compile})' if engine.compile else 'eager'}" + ("" if on_gpu else " (CPU: a few steps)"))
    row(label, n / seconds, model_name, batch_size, steps)

    path = append_rows(Path(results_dir) / "bench.csv", rows)
    cpu_rows = [r for r in rows if r["per_worker_images_per_s"]]
    if cpu_rows and on_gpu:
        cores = rows[-1]["images_per_s"] / cpu_rows[0]["per_worker_images_per_s"]
        log(f"CPU cores (workers) to feed {model_name} from CPU decoding: about {cores:.0f}")
    if not on_gpu:
        log("GPU pipeline: not measured (no CUDA device with nvJPEG here)")
    log(f"wrote {path}")
    return rows
