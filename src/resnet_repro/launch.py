"""`python -m resnet_repro.launch [-m] KEY=VALUE...`: one run per Hydra job, for Hydra's launchers.

`resnet-repro run` composes with Hydra's compose API and loops over runs itself; this entry point
is `@hydra.main` instead, so `-m` hands a grid to a Hydra launcher that starts one job per point:
the basic launcher locally (one after another), the submitit plugin as SLURM jobs:

    python -m resnet_repro.launch -m hydra/launcher=slurm model.arch=plain,resnet model.n=3,5,7 \
        seed=0,1,2 profile=paper data_dir=/data results_dir=$PWD/results

Each job composes the same config tree (experiment=custom unless given) and trains through the same
runner as the CLI, so run ids, run directories, resume and skip-if-finished are identical. When
every job has ended, this process runs the runner's `finish` once (the experiment's ensemble and
reports), as `resnet-repro run` does after its runs. A job that SLURM preempts or times out gets the
signal, saves a checkpoint at the next step and is requeued by submitit; the requeued job runs the
same overrides again and resumes from that checkpoint.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys

import hydra
from hydra._internal.utils import get_args_parser  # the parser @hydra.main reads sys.argv with
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, open_dict

from . import runner
from .config import compose_experiment, config_dir, expand_runs
from .engine import is_main_process
from .errors import Interrupted, UserError
from .signals import Signalled
from .plots import output_lines
from .results import Summary

log = logging.getLogger("resnet_repro.launch")

# Keys that decide which experiment's reports are written where; a grid over them finishes each point.
_FINISH_KEYS = ("experiment", "profile", "results_dir", "runs_dir")


def _torch_env_from_slurm() -> None:
    """A SLURM job with several tasks (tasks_per_node=GPUs) is one DDP run: give each task the
    torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) that setup_engine reads."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    try:
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:
        return
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def train_one(cfg: DictConfig, overrides: list[str]) -> Summary:
    """Train the single run `cfg` describes (as the CLI would for the same overrides)."""
    with open_dict(cfg):
        cfg.experiment.overrides = list(overrides)  # run ids and variants come from them, as in the CLI
    runs = expand_runs(cfg)
    if len(runs) != 1:
        raise UserError(f"a launch job trains one run, this config makes {len(runs)} "
                        f"({', '.join(r.run.id for r in runs)}); fan out with -m instead, "
                        f"e.g. -m model.n=3,5 seed=0,1")

    def on_run(run_cfg, run, status):
        if is_main_process():
            log.info(f"{run_cfg.run.id}: {status} ({run.path})")

    def on_row(run_cfg, row):
        log.info(runner.progress_line(run_cfg, row))

    return runner.run_experiment(cfg, on_run=on_run, on_row=on_row)[0]


@hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
def job(cfg: DictConfig) -> float | None:
    """One point of the grid: train its run."""
    _torch_env_from_slurm()
    try:
        summary = train_one(cfg, list(HydraConfig.get().overrides.task))
    except (Interrupted, Signalled) as e:
        log.warning(str(e))
        sys.exit(130)
    except UserError as e:
        log.error(f"error: {e}")
        sys.exit(2)
    if is_main_process():  # every rank returns the same summary
        log.info(f"{summary.run_id}: test error {summary.final_test_error:.2f}% after "
                 f"{summary.iterations_done} iterations ({summary.wall_s:.0f} s)")
    return summary.final_test_error  # what a Hydra sweeper would minimise


def finish_configs(args: list[str]) -> list[DictConfig]:
    """The configs to finish once the grid has run: the command's overrides without the grid's
    (a grid over the experiment, profile or folders gives one config per combination of those)."""
    parsed = get_args_parser().parse_args(args)
    if parsed.help or parsed.hydra_help or parsed.cfg or parsed.info or parsed.shell_completion:
        return []  # hydra printed something and trained nothing
    fixed, choices = [], {}
    for o in OverridesParser.create().parse_overrides(parsed.overrides):
        if o.is_hydra_override():
            continue
        if o.key_or_group in _FINISH_KEYS:
            choices[o.key_or_group] = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
        elif not o.is_sweep_override():
            fixed.append(o.input_line)
    configs = []
    for values in itertools.product(*choices.values()):
        chosen = dict(zip(choices, values))
        experiment = chosen.pop("experiment", "custom")
        configs.append(compose_experiment(experiment, [*fixed, *(f"{k}={v}" for k, v in chosen.items())]))
    return configs


def main() -> None:
    job()  # returns once every job of the grid has ended (-m: the launcher waits for its jobs)
    try:
        for cfg in finish_configs(sys.argv[1:]):
            for written in runner.finish(cfg):
                for kind, text in output_lines(written):
                    log.info(f"{kind}: {text}")
    except UserError as e:
        log.error(f"error: {e}")
        sys.exit(2)


if __name__ == "__main__":
    main()
