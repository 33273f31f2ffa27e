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

import hashlib
import itertools
import logging
import os
import shutil
import sys

import hydra
from hydra._internal.utils import get_args_parser  # the parser @hydra.main reads sys.argv with
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, open_dict

from . import runner
from .config import compose_experiment, config_dir, expand_runs, refuse_moved, runs_root
from .engine import is_main_process
from .errors import Interrupted, UserError
from .signals import Signalled
from .plots import output_lines
from .results import RunDir, Summary, atomic_write_text
from .terminal import console

log = logging.getLogger("resnet_repro.launch")

# Keys that decide which experiment's reports are written where; a grid over them finishes each point.
_FINISH_KEYS = ("experiment", "profile", "results_dir", "runs_dir")


def _torch_env_from_slurm() -> None:
    """A SLURM job step of several tasks (tasks_per_node=GPUs) is one DDP run: give each task the torchrun
    variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) that setup_engine reads. Only inside a
    submitit job's step (`srun` sets SLURM_STEP_NUM_TASKS): a batch shell of an `sbatch -n 2` is one process."""
    tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1"))
    if "RANK" in os.environ or tasks <= 1 or os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return
    try:
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:
        return
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def chosen_runs(cfg: DictConfig, overrides: list[str]) -> list[DictConfig]:
    """The runs of one job composed from `overrides`: the `run_index`-th of the experiment's, or the one run
    its config makes. Run ids and variants come from the overrides, as in the CLI (run_index is not one)."""
    with open_dict(cfg):
        cfg.experiment.overrides = [o for o in overrides if not o.startswith("run_index=")]
    runs = expand_runs(cfg)
    index = cfg.get("run_index")
    if index is not None:
        if index >= len(runs):
            raise UserError(f"run_index={index}: experiment {cfg.experiment.name} makes {len(runs)} runs (0 to "
                            f"{len(runs) - 1})")
        return [runs[index]]
    if len(runs) != 1:
        raise UserError(f"a launch job trains one run, this config makes {len(runs)} "
                        f"({', '.join(r.run.id for r in runs)}); fan out with -m instead, "
                        f"e.g. -m model.n=3,5 seed=0,1, or run_index=range(0,{len(runs)})")
    return runs


def train_one(cfg: DictConfig, overrides: list[str]) -> Summary:
    """Train the single run `cfg` describes (as the CLI would for the same overrides)."""
    runs = chosen_runs(cfg, overrides)

    def on_run(run_cfg, run, status):
        if is_main_process():
            log.info(f"{run_cfg.run.id}: {status} ({run.path})")

    def on_row(run_cfg, row):
        log.info(runner.progress_line(run_cfg, row))

    return runner.run_experiment(cfg, on_run=on_run, on_row=on_row, runs=runs)[0]


FAILED = ".failed-jobs"  # under the runs folder: a job's one-line error, for the launching process to name


def _record_failure(cfg: DictConfig, overrides: list[str], message: str) -> None:
    text = " ".join(overrides)
    name = hashlib.sha1(text.encode()).hexdigest()[:12]
    atomic_write_text(runs_root(cfg) / FAILED / f"{name}.txt", f"{text}: {message}\n")


@hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
def job(cfg: DictConfig) -> float | None:
    """One point of the grid: train its run. A job that fails says why in one line, for the launching
    process to repeat, and returns: the other jobs of the grid go on."""
    _torch_env_from_slurm()
    overrides = list(HydraConfig.get().overrides.task)
    try:
        summary = train_one(cfg, overrides)
    except (Interrupted, Signalled) as e:
        log.warning(str(e))
        sys.exit(130)
    except UserError as e:
        log.error(f"error: {e}")
        if is_main_process():
            _record_failure(cfg, overrides, str(e))
        return None
    if is_main_process():  # every rank returns the same summary
        log.info(f"{summary.run_id}: test error {summary.final_test_error:.2f}% after "
                 f"{summary.iterations_done} iterations ({summary.wall_s:.0f} s)")
    return summary.final_test_error  # what a Hydra sweeper would minimise


def _split(args: list[str]) -> tuple[list, list]:
    """The command's non-Hydra overrides: (fixed ones, sweeps)."""
    parsed = get_args_parser().parse_args(args)
    if parsed.help or parsed.hydra_help or parsed.cfg or parsed.info or parsed.shell_completion:
        return [], []
    overrides = [o for o in OverridesParser.create().parse_overrides(parsed.overrides) if not o.is_hydra_override()]
    return [o for o in overrides if not o.is_sweep_override()], [o for o in overrides if o.is_sweep_override()]


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
        elif not o.is_sweep_override() and o.key_or_group != "run_index":
            fixed.append(o.input_line)
    configs = []
    for values in itertools.product(*choices.values()):
        chosen = dict(zip(choices, values))
        experiment = chosen.pop("experiment", "custom")
        configs.append(compose_experiment(experiment, [*fixed, *(f"{k}={v}" for k, v in chosen.items())]))
    return configs


def grid_runs(args: list[str]) -> list[DictConfig]:
    """Every run the grid's jobs train, in job order: one per point of the sweep."""
    fixed, sweeps = _split(args)
    runs = []
    for values in itertools.product(*(list(o.sweep_string_iterator()) for o in sweeps)):
        point = [o.input_line for o in fixed] + [f"{o.key_or_group}={v}" for o, v in zip(sweeps, values)]
        experiment = next((p.split("=", 1)[1] for p in point if p.startswith("experiment=")), "custom")
        overrides = [p for p in point if not p.startswith("experiment=")]
        try:
            runs += chosen_runs(compose_experiment(experiment, overrides), overrides)
        except UserError:  # its job failed for the same reason, and said so
            continue
    return runs


def _register_slurm_launcher() -> None:
    """Our SLURM launcher (hydra_plugins/resnet_repro_slurm), made known to Hydra by hand: Hydra finds plugins
    by walking the hydra_plugins package's folders, which misses ours in an editable install."""
    try:
        from hydra_plugins.resnet_repro_slurm.launcher import SlurmLauncher
    except ImportError:  # no hydra-submitit-launcher: hydra/launcher=slurm then says so itself
        return
    Plugins.instance().register(SlurmLauncher)


def main() -> None:
    args = sys.argv[1:]
    _register_slurm_launcher()
    try:
        for arg in args:  # sweeps included (Hydra would only say it cannot override a moved setting)
            if "=" in arg:
                refuse_moved(arg)
        configs = finish_configs(args)
        for cfg in configs:  # failures of an earlier grid are not this one's
            shutil.rmtree(runs_root(cfg) / FAILED, ignore_errors=True)
    except UserError as e:
        log.error(f"error: {e}")
        sys.exit(2)
    job()  # returns once every job of the grid has ended (-m: the launcher waits for its jobs)
    try:
        failed = [line for cfg in configs for path in sorted((runs_root(cfg) / FAILED).glob("*.txt"))
                  for line in path.read_text().splitlines()]
        for line in failed:
            log.error(f"job failed: {line}")
        runs = grid_runs(args)
        asked = {r.run.model_name for r in runs}
        for cfg in configs:
            for written in runner.finish(cfg):
                for kind, text in output_lines(written, asked):
                    log.info(f"{kind}: {text}")
        unfinished = [r.run.id for r in runs if not RunDir.for_run(runs_root(r), r).finished]
        for run_id in unfinished:
            log.error(f"missing: {run_id} did not finish (its job failed or was stopped); the same command "
                      f"trains it, the finished runs are skipped")
    except UserError as e:
        log.error(f"error: {e}")
        sys.exit(2)
    if failed or unfinished:
        sys.exit(1)


def submit(cfg: DictConfig, overrides: list[str], hydra_args: list[str]) -> None:
    """`resnet-repro run/sweep --launcher slurm`: the experiment `cfg` (composed from `overrides`) as one SLURM
    job per run, through this entry point and Hydra's submitit launcher: the same run ids and directories."""
    runs = expand_runs(cfg)
    if not runs:
        raise UserError(f"experiment {cfg.experiment.name} makes no runs: nothing to submit")
    sys.argv = ["resnet-repro", "-m", "hydra/launcher=slurm", *overrides, *hydra_args,
                f"run_index=range(0,{len(runs)})"]
    console.print(f"submitting {len(runs)} runs to SLURM: {', '.join(r.run.id for r in runs)}", highlight=False)
    main()


if __name__ == "__main__":
    main()
