"""Helpers for the training tests: ResNet-8 on the bundled sample, on the CPU, through the real `fit`,
and a train loader wrapper that acts between steps as a signal arriving then would."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

from resnet_repro.config import compose_experiment, expand_runs, runs_root
from resnet_repro.data import build_data
from resnet_repro.engine import setup_engine
from resnet_repro.results import RunDir

TIMING = {"images_per_s", "wall_s"}
TINY = ["model.n=1", "data.sample=true", "device=cpu", "train.responses=false", "train.batch_size=32",
        "train.eval_batch_size=500", "train.threads=1"]

def tiny_cfg(runs_dir: Path, *overrides: str):
    cfg = compose_experiment("custom", ["profile=smoke", *TINY, f"runs_dir={runs_dir}",
                                        f"results_dir={runs_dir.parent / 'results'}", *overrides])
    return expand_runs(cfg)[0]

def setup(runs_dir: Path, *overrides: str):
    cfg = tiny_cfg(runs_dir, *overrides)
    engine = setup_engine(cfg)
    return cfg, engine, build_data(cfg, engine, int(cfg.seed)), RunDir.for_run(runs_root(cfg), cfg)

class EveryStep:
    """Wraps a train loader to act between steps, as a signal arriving then would: `act(iteration)`
    runs before the batch of `iteration` (0-based, counted over epochs) is handed out."""

    def __init__(self, loader, act):
        self.loader, self.act = loader, act

    def __len__(self):
        return len(self.loader)

    def epoch(self, epoch, start_batch=0):
        for b, batch in enumerate(self.loader.epoch(epoch, start_batch), start_batch):
            self.act(epoch * len(self) + b)
            yield batch

def with_train(data, act):
    return dataclasses.replace(data, train=EveryStep(data.train, act))

def read_metrics(run: RunDir) -> list[dict]:
    with open(run.metrics) as f:
        return list(csv.DictReader(f))

def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]

# A warm-up that ends (training error below 95% by iteration 10), then the step schedule: the run
