"""Run every run of an expanded experiment that is not finished yet, sharing the data between runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .config import expand_runs, runs_root
from .data import build_data
from .errors import UserError
from .models import build_model
from .results import RunDir
from .train import StopFlag, fit, measure_responses, setup_engine


def run_experiment(
    cfg: DictConfig,
    restart: bool = False,
    on_run: Callable[[DictConfig, RunDir, str], None] | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train each run of `cfg` (skipping finished ones) and return their summaries.
    `on_run(run_cfg, run_dir, status)` is told "skip", "resume" or "start" before each."""
    runs = expand_runs(cfg)
    root = runs_root(cfg)
    engine = setup_engine(cfg)
    data_by_config: dict[str, object] = {}
    summaries = []
    with StopFlag().installed() as stop:
        for run_cfg in runs:
            run = RunDir.for_run(root, run_cfg)
            if run.finished:  # finished results are never overwritten
                if on_run:
                    on_run(run_cfg, run, "skip")
                summaries.append(run.summary())
                continue
            with run.lock(engine.is_main) as locked:
                if not locked:  # another process is training this run (a parallel sweep)
                    if on_run:
                        on_run(run_cfg, run, "busy")
                    continue
                if restart:
                    if engine.is_main and run.path.exists():
                        run.clear()
                    if engine.world > 1:
                        torch.distributed.barrier()  # no rank reads the old checkpoint after rank 0 removed it
                if on_run:
                    on_run(run_cfg, run, "resume" if run.checkpoint.exists() else "start")
                key = OmegaConf.to_yaml(run_cfg.data) + f"{run_cfg.train.batch_size}/{run_cfg.train.eval_batch_size}"
                if key not in data_by_config:
                    data_by_config[key] = build_data(run_cfg, engine, int(run_cfg.seed))
                data = data_by_config[key]
                data.train.seed = int(run_cfg.seed)
                summaries.append(fit(run_cfg, run, data, engine, on_row, stop))
    return summaries


def analyze_responses(run_path: Path, device: str = "auto", data_dir: Path | None = None) -> Path:
    """Fig. 7 for a finished or checkpointed run: std of each 3x3 layer's response on its test set."""
    run = RunDir(run_path)
    if not run.config.exists():
        raise UserError(f"{run_path} is not a run directory (no config.yaml)")
    state = run.load_checkpoint()
    if state is None:
        raise UserError(f"{run_path} has no checkpoint.pt to analyse; re-run its experiment to produce one")
    cfg = OmegaConf.load(run.config)
    cfg.device = device
    if data_dir is not None:
        cfg.data.root = str(data_dir)
    engine = setup_engine(cfg)
    data = build_data(cfg, engine, int(cfg.seed))
    model = build_model(cfg.model, data.num_classes).to(engine.device)
    model.load_state_dict(state["model"])
    run.write_responses(measure_responses(model, data.test, engine))
    return run.responses
