"""An experiment end to end, the same for the CLI and for launch.py (SLURM): expand it into runs,
train each run not finished yet (`run_experiment`: the data built once and shared, one `train.fit` per
pack of runs), then, once all have trained, Table 5's ensemble and the experiment's tables and figures
(`finish`)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .cifar import build_cifar
from .config import expand_runs, runs_root
from .data import Data
from .engine import Engine, check_memory, set_tf32, setup_engine
from .errors import UserError
from .evaluate import run_ensemble
from .imagenet import build_imagenet, setting
from .packing import plan_packs, split_by_iteration
from .plots import FIGURES, FigureResult, plot_figures
from .results import RunDir, Summary
from .signals import StopFlag
from .table1 import write_table1
from .tables import TABLES, write_tables
from .train import fit, prepare


def build_data(cfg: DictConfig, engine: Engine, seed: int = 0) -> Data:
    """The loaders for a run's config, on `engine`'s device and, under DDP, its share of each batch; the
    training loader under `seed` (`loader.with_seed` gives another run's)."""
    if cfg.data.family == "cifar":
        return build_cifar(cfg, engine, seed)
    return build_imagenet(cfg, engine, seed)


def input_shape(cfg: DictConfig) -> tuple[int, int]:
    """(image size, classes) a run's net takes, known before its data is read: for the memory check."""
    if cfg.data.family == "cifar":
        return 32, 10
    return int(setting(cfg.data, "crop")), 1000


def data_key(cfg: DictConfig) -> str:
    """What decides a run's loaders: runs that agree share one `Data`."""
    return OmegaConf.to_yaml(cfg.data) + f"{cfg.data_dir}/{cfg.train.batch_size}/{cfg.engine.eval_batch_size}"


def run_experiment(
    cfg: DictConfig,
    restart: bool = False,
    on_run: Callable[[DictConfig, RunDir, str], None] | None = None,
    on_row: Callable[[DictConfig, dict], None] | None = None,
    runs: list[DictConfig] | None = None,
) -> list[Summary]:
    """Train each run of `cfg` (skipping finished ones) and return their summaries, in run order.
    `on_run(run_cfg, run_dir, status)` is told "skip", "busy", "resume" or "start" before each, and
    `on_row(run_cfg, row)` gets every metrics row. Under `engine.pack` the runs of a pack
    (packing.plan_packs) train together, as one net. `runs`: only these of the experiment's runs."""
    runs = expand_runs(cfg) if runs is None else runs
    if not runs and set(cfg.experiment.reports) - {"table1"}:
        raise UserError(f"experiment {cfg.experiment.name} makes no runs: nothing to train and nothing new to report"
                        + (" (resnet-repro sweep cifar --n 3,5 fills it)" if cfg.experiment.name == "sweep_cifar" else "")
                        + "; `resnet-repro report` and `plot all` redraw the tables and figures of finished runs")
    root = runs_root(cfg)
    engine = setup_engine(cfg)
    for run_cfg in runs:  # a net that cannot fit is refused before any run starts, and before it is built
        if not RunDir.for_run(root, run_cfg).finished:
            check_memory(run_cfg, engine, *input_shape(run_cfg))
    data_by_config: dict[str, object] = {}
    summaries: dict[str, Summary] = {}
    with StopFlag().installed() as stop:
        for pack in plan_packs(runs, engine):
            with contextlib.ExitStack() as locks:
                todo = []
                for run_cfg in pack:
                    run = RunDir.for_run(root, run_cfg)
                    if run.finished:  # finished results are never overwritten
                        if on_run:
                            on_run(run_cfg, run, "skip")
                        summaries[run_cfg.run.id] = run.read_summary()
                        continue
                    if not locks.enter_context(run.lock(engine.is_main)):  # a parallel sweep trains it
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
                    todo.append((run_cfg, run))
                for group in split_by_iteration(todo, [run.checkpoint_iteration() for _, run in todo]):
                    cfgs, dirs = zip(*group)
                    key = data_key(cfgs[0])
                    if key not in data_by_config:
                        data_by_config[key] = build_data(cfgs[0], engine)
                    data = data_by_config[key]
                    resumed = in_its_precision(engine, cfgs[0], dirs)
                    members, stepper = prepare(cfgs, dirs, data, resumed)
                    for s in fit(members, stepper, data, resumed, on_row, stop):
                        summaries[s.run_id] = s
    return [summaries[r.run.id] for r in runs if r.run.id in summaries]


def in_its_precision(engine: Engine, cfg: DictConfig, runs: tuple[RunDir, ...]) -> Engine:
    """The engine for runs about to train: under `engine.precision: auto`, runs resumed from a checkpoint go
    on in the precision they started in. Auto decides by the machine, and a requeued job or a campaign can
    resume on another one (bf16 where it started, fp32 here): its arithmetic must not change midway."""
    trained = {run.read_summary().trained_in for run in runs if run.checkpoint.exists() and run.summary_file.exists()}
    if cfg.engine.precision != "auto" or not trained or trained == {engine.precision}:
        resumed = engine
    elif len(trained) > 1:
        raise UserError(f"the runs of this pack started in different precisions ({', '.join(sorted(trained))}): "
                        f"resume them with engine.pack=1")
    else:
        [precision] = trained
        resumed = dataclasses.replace(engine, precision=precision, precision_reason=(
            f"auto: {precision}, as the run trained before it resumed (on this machine alone: {engine.precision_text})"))
    set_tf32(resumed.precision)  # an earlier pack's may still be set
    return resumed


def progress_line(run_cfg: DictConfig, row: dict) -> str:
    """One metrics row as a line of a log (nohup, a cluster's log file, CI): how far, how well, how fast."""
    done, total = int(row["iteration"]), int(run_cfg.train.iterations)
    test = row.get("test_error")
    speed = row["images_per_s"]
    left = (total - done) * int(run_cfg.train.batch_size) / speed if speed else float("nan")
    return (f"{run_cfg.run.id}: iteration {done:,}/{total:,}, lr {row['lr']:g}, train error {row['train_error']:.2f}%"
            + (f", test error {test:.2f}%" if test is not None else "")
            + f", {speed:,.0f} images/s, {_clock(row['wall_s'])} trained, about {_clock(left)} left")


def _clock(seconds: float) -> str:
    if seconds != seconds:  # NaN: no speed yet
        return "?"
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}:{m:02d}:{s:02d}"


def finish(cfg: DictConfig) -> list[Path | FigureResult]:
    """After every run of `cfg` has trained (one process, rank 0): the ensemble of an experiment that
    has one, then its reports. Returns the files written and the figures drawn."""
    written: list[Path | FigureResult] = []
    if cfg.experiment.get("ensemble"):  # Table 5: the averaged scores of the runs just trained
        written.append(run_ensemble(cfg))
    return written + write_reports(cfg, list(cfg.experiment.reports))


def write_reports(cfg: DictConfig, names: list[str]) -> list[Path | FigureResult]:
    """Tables (`tableN`) and figures (`figN`) named by `names`, from the run directories of `cfg`."""
    runs_dir, results_dir = runs_root(cfg), Path(cfg.results_dir)
    written: list[Path | FigureResult] = []
    for name in names:
        if name == "table1":  # counted from the built models: no runs needed
            written += write_table1(results_dir)
        elif name in TABLES:
            written += write_tables(runs_dir, results_dir, [name])
        elif name in FIGURES:
            written += plot_figures(name, runs_dir, results_dir)
        else:
            raise UserError(f"experiment.reports names {name!r}: choose from table1, {', '.join(TABLES)}, "
                            f"{', '.join(FIGURES)}")
    return written
