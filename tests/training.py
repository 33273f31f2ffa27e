"""Helpers for the training tests: ResNet-8 on the bundled sample, on the CPU, through the real `fit`,
and a train loader wrapper that acts between steps as a signal arriving then would."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

from resnet_repro.config import compose_experiment, expand_runs, runs_root
from resnet_repro.engine import setup_engine
from resnet_repro.results import RunDir
from resnet_repro.runner import build_data
from resnet_repro.train import fit, prepare

TIMING = {"images_per_s", "wall_s"}
TINY = ["model.n=1", "data.sample=true", "engine.device=cpu", "engine.responses=false", "train.batch_size=32",
        "engine.eval_batch_size=500", "engine.threads=1"]


def tiny_cfg(runs_dir: Path, *overrides: str):
    cfg = compose_experiment("custom", ["profile=smoke", *TINY, f"runs_dir={runs_dir}",
                                        f"results_dir={runs_dir.parent / 'results'}", *overrides])
    return expand_runs(cfg)[0]


def setup(runs_dir: Path, *overrides: str):
    cfg = tiny_cfg(runs_dir, *overrides)
    engine = setup_engine(cfg)
    return cfg, engine, build_data(cfg, engine), RunDir.for_run(runs_root(cfg), cfg)


def train_run(cfg, run: RunDir, data, engine, on_row=None, stop=None):
    """`fit` for one run, as the runner calls it; its summary."""
    members, stepper = prepare([cfg], [run], data, engine)
    return fit(members, stepper, data, engine, on_row, stop)[0]


class EveryStep:
    """Wraps a train loader to act between steps, as a signal arriving then would: `act(iteration)`
    runs before the batch of `iteration` (0-based, counted over epochs) is handed out."""

    def __init__(self, loader, act):
        self.loader, self.act = loader, act

    def with_seed(self, seed):
        return EveryStep(self.loader.with_seed(seed), self.act)

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
