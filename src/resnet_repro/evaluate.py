"""Scoring saved models: our ImageNet-style checkpoints, torchvision ResNet weights and ensembles of
them (Tables 2-5, `resnet-repro eval`), with the softmax averaging and top-k counting of
`train.evaluate`; and Fig. 7's layer responses of a saved CIFAR-10 run (`analyze responses`).

An ensemble averages its members' softmax scores image by image (Table 5); each member is tested
with the data settings it was trained with. An experiment with `experiment.ensemble` gets an
ensemble run directory beside its members, which the report reads like any run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .cifar import build_cifar
from .config import compose_experiment, data_root, expand_runs, runs_root
from .engine import Engine, eval_engine, setup_engine
from .errors import UserError
from .hardware import device_name
from .imagenet import ImageFiles, TestLoader, decode_workers, find_split, list_images, load_splits, mean_normalize
from .imagenet_transforms import sizes_from_config, torchvision_normalize
from .models import build_model, from_torchvision
from .results import TEST_PROTOCOLS, RunDir, Summary, git_commit, now
from .scoring import measure_responses, one_algorithm_per_shape, top_k_wrong, view_scores
from .steppers import Scorer


@dataclass
class SavedModel:
    """A model to evaluate and the config it was trained with (its data and engine settings)."""

    name: str
    model: nn.Module
    cfg: DictConfig
    torchvision: bool  # torchvision normalisation and ImageNet-1k label indices


def _torchvision_config() -> DictConfig:
    """The data and engine settings of our ImageNet runs, for weights that come without a config."""
    return compose_experiment("table3")


def load_saved(path: Path) -> SavedModel:
    """A run directory or its checkpoint.pt (config.yaml beside it), or a torchvision ResNet
    state_dict (.pth)."""
    path = Path(path)
    ckpt = path / "checkpoint.pt" if path.is_dir() else path
    if not ckpt.is_file():
        raise UserError(f"no checkpoint at {ckpt}")
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a damaged file
        raise UserError(f"cannot read {ckpt} ({type(e).__name__})")
    if isinstance(state, dict) and "model" in state and (ckpt.parent / "config.yaml").exists():
        cfg = OmegaConf.load(ckpt.parent / "config.yaml")
        if cfg.data.family == "cifar":
            raise UserError(f"{ckpt} is a CIFAR-10 run; `eval` is for ImageNet-style runs")
        model = build_model(cfg.model, state["model"]["fc.weight"].shape[0])
        model.load_state_dict(state["model"])
        return SavedModel(cfg.run.get("id", ckpt.parent.name), model, cfg, False)
    if isinstance(state, dict) and "fc.weight" in state and "layer1.0.conv1.weight" in state:
        try:
            model = from_torchvision(state)
        except (ValueError, RuntimeError) as e:
            raise UserError(f"{ckpt}: {e}")
        return SavedModel(ckpt.stem, model, _torchvision_config(), True)
    raise UserError(f"{ckpt} is neither a resnet-repro checkpoint (with config.yaml beside it) nor a "
                    f"torchvision ResNet state_dict")


def imagenet_label_map(val: ImageFiles) -> torch.Tensor | None:
    """For torchvision weights on a subset of ImageNet classes: folder label -> ImageNet-1k index,
    from a `classes.tsv` (wnid, index, name) beside the splits. None when all 1000 are present."""
    if len(val.classes) == 1000:
        return None
    for folder in (val.folder.parent, val.folder.parent.parent):
        tsv = folder / "classes.tsv"
        if tsv.is_file():
            index = dict(line.split()[:2] for line in tsv.read_text().splitlines() if line.strip())
            try:
                return torch.tensor([int(index[c]) for c in val.classes])
            except (KeyError, ValueError):
                break
    raise UserError(f"{val.folder} has {len(val.classes)} classes, not ImageNet's 1000, and no classes.tsv "
                    f"(wnid, ImageNet index) beside it to map them for torchvision weights")


def saved_loader(member: SavedModel, protocol: str, data_dir: Path | None, engine: Engine, batch_size: int,
                 workers: int | None) -> tuple[TestLoader, torch.Tensor | None]:
    """The validation batches a saved model is scored on, and the label map its outputs need (if any)."""
    cfg = member.cfg
    d = cfg.data
    root = data_root(str(data_dir) if data_dir else cfg.get("data_dir") or d.get("root"))  # data.root: runs of older versions
    sizes = sizes_from_config(d)
    if workers is None:
        workers = decode_workers(cfg) if "engine" in cfg else int(d.tiny.workers if d.sample else d.workers)
    if member.torchvision:
        if root is None:
            raise UserError("pass --data-dir: the folder holding val/ (ImageFolder layout)")
        val = list_images(find_split(root, d.val_dir))
        return (TestLoader(val, sizes, protocol, torchvision_normalize(engine.device), batch_size, engine.device,
                           workers), imagenet_label_map(val))
    train, val = load_splits(d, root)  # the per-pixel mean comes from the training split (cached)
    normalize = mean_normalize(d, train, sizes, workers, engine.device)
    return TestLoader(val, sizes, protocol, normalize, batch_size, engine.device, workers), None


@torch.no_grad()
def collect_scores(model: nn.Module, loader: TestLoader, engine: Engine, label_map: torch.Tensor | None = None):
    """Softmax scores averaged over each image's views, (N, classes) in the split's order, and labels."""
    model.eval()
    scores = labels = None
    with one_algorithm_per_shape(loader):
        for views, _, idx in loader.indexed():
            s = view_scores(Scorer(model, engine), views, engine)[:, 0]
            if scores is None:
                scores = torch.zeros(len(loader.files), s.shape[1])
                labels = torch.tensor(loader.files.labels)
                if label_map is not None:
                    labels = label_map[labels]
            scores[idx] = s.cpu()
    return scores, labels


def errors(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Top-1 and top-5 error (%)."""
    wrong1, wrong5 = top_k_wrong(scores[:, None], labels)[0].tolist()
    return 100 * wrong1 / len(labels), 100 * wrong5 / len(labels)


def ensemble_eval(paths: Sequence[Path], protocol: str = "10crop", data_dir: Path | None = None,
                  device: str = "auto", batch_size: int = 100, workers: int | None = None) -> dict:
    """Top-1/top-5 error of the averaged softmax scores of several models (Table 5's ensembles;
    one path is a single model). Each member is tested with its own data settings."""
    if protocol not in TEST_PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}: choose one of {', '.join(TEST_PROTOCOLS)}")
    if not paths:
        raise UserError("give at least one checkpoint or run directory")
    engine = eval_engine(device)
    total, labels, names = None, None, []
    for path in paths:
        member = load_saved(Path(path))
        model = member.model.to(engine.device).to(memory_format=torch.channels_last)
        loader, label_map = saved_loader(member, protocol, data_dir, engine, batch_size, workers)
        scores, y = collect_scores(model, loader, engine, label_map)
        if labels is not None and (len(y) != len(labels) or not torch.equal(y, labels)):
            raise UserError(f"{path} was tested on other images than {paths[0]}; ensemble members need one val set")
        total, labels = (scores if total is None else total + scores), y
        names.append(member.name)
    top1, top5 = errors(total / len(paths), labels)
    return {"members": names, "protocol": protocol, "images": len(labels), "top1_error": top1, "top5_error": top5,
            "device": device_name(engine.device), "amp": engine.amp, "precision": engine.precision,
            "amp_reason": engine.precision_reason}


def evaluate_checkpoint(path: Path, protocol: str = "10crop", data_dir: Path | None = None, device: str = "auto",
                        batch_size: int = 100, workers: int | None = None) -> dict:
    """Top-1/top-5 error of one of our checkpoints (or run directory) or a torchvision weights file."""
    return ensemble_eval([path], protocol, data_dir, device, batch_size, workers)


def run_ensemble(cfg: DictConfig) -> Path:
    """Table 5 for an experiment with `experiment.ensemble`: the averaged scores of its finished runs,
    written as an ensemble run directory `<runs_dir>/<profile>/ensemble-<experiment>/summary.json`
    (`ensemble: true`) beside the members, for the report to read like any run."""
    root = runs_root(cfg)
    members = [RunDir.for_run(root, r) for r in expand_runs(cfg)]
    missing = [m.path.name for m in members if not (m.finished and m.checkpoint.exists())]
    if missing:
        raise UserError(f"the ensemble needs every member finished with its checkpoint.pt; "
                        f"missing: {', '.join(missing)}")
    summaries = [m.read_summary() for m in members]
    protocol = cfg.experiment.ensemble.protocol
    started, start = now(), time.perf_counter()
    result = ensemble_eval([m.path for m in members], protocol, data_root(cfg.data_dir), cfg.engine.device,
                           int(cfg.engine.eval_batch_size))
    run = RunDir(root / cfg.profile.name / f"ensemble-{cfg.experiment.name}")
    run.write_summary(Summary(
        run_id=run.path.name, experiment=cfg.experiment.name, status="finished", ensemble=True,
        profile=cfg.profile.name, profile_label=cfg.profile.label,
        full_schedule=all(s.full_schedule for s in summaries), dataset=summaries[0].dataset,
        data=summaries[0].data, test_split="val",
        train_images=summaries[0].train_images,
        model={"family": "imagenet", "arch": "ensemble", "depth": None, "shortcut": "",
               "name": cfg.experiment.ensemble.get("name", "ensemble")},
        members=result["members"], params=sum(s.params or 0 for s in summaries), seed=int(cfg.seed),
        eval_protocol=protocol, images=result["images"], final_test_error=result["top1_error"],
        final_test_top5_error=result["top5_error"], device=result["device"], amp=result["amp"],
        precision=result["precision"], amp_reason=result["amp_reason"], git_commit=git_commit(), torch=torch.__version__, started=started,
        finished=now(), wall_s=time.perf_counter() - start,
    ))
    return run.summary_file


def analyze_responses(run_path: Path, device: str = "auto", data_dir: Path | None = None) -> Path:
    """Fig. 7 for a finished or checkpointed CIFAR-10 run: std of each 3x3 layer's response on its test set."""
    run = RunDir(run_path)
    if not run.config.exists():
        raise UserError(f"{run_path} is not a run directory (no config.yaml)")
    state = run.load_checkpoint()
    if state is None:
        raise UserError(f"{run_path} has no checkpoint.pt to analyse; re-run its experiment to produce one")
    cfg = OmegaConf.load(run.config)
    if cfg.data.family != "cifar":
        raise UserError(f"{run_path} is not a CIFAR-10 run: Fig. 7's responses are a CIFAR-10 analysis")
    cfg.engine.device = device
    if data_dir is not None:
        cfg.data_dir = str(data_dir)
    engine = setup_engine(cfg)
    data = build_cifar(cfg, engine)
    model = build_model(cfg.model, data.num_classes).to(engine.device)
    model.load_state_dict(state["model"])
    run.write_responses(measure_responses(Scorer(model, engine), data.test, engine)[0])
    return run.responses
