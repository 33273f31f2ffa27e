"""On a real SLURM cluster (`slurm_env`: whatever cluster answers; scripts/slurm_local.sh start makes one of
this machine, CI starts it): Hydra's submitit launcher runs one job per run, started from the CLI or from
`python -m resnet_repro.launch`. A grid equals the same runs trained here; a job preempted (SIGUSR2, as a
cluster sends before preempting) or at its time limit is requeued and resumes to identical metrics; one run
over two SLURM tasks equals it under torchrun; a failing job is one line and the others finish; a job killed
without its result is named and the launcher ends."""

import csv
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from resnet_repro.cli import app
from resnet_repro.results import RunDir

pytestmark = pytest.mark.slurm

# What conf/hydra/launcher/slurm.yaml asks for that a one-node CPU test cluster cannot give: a GPU,
# 4 CPUs and 16 GB per job. timeout_min: a job left behind by a failed test ends by itself.
CPU_JOBS = ["hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
            "hydra.launcher.timeout_min=10"]
TIMING = {"images_per_s", "wall_s"}
# a run long enough to be stopped mid-way: ResNet-8 on the bundled sample
SHORT = ["profile=smoke", "model.n=1", "engine.device=cpu", "engine.threads=1", "engine.responses=false",
         "train.iterations=600", "train.milestones=[400]", "engine.log_every=50", "engine.eval_every=300",
         "engine.checkpoint_every=50"]


def rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def launch_command(tmp_path, name, *args) -> list[str]:
    """`python -m resnet_repro.launch -m hydra/launcher=slurm ...` with jobs named `name`."""
    return [sys.executable, "-m", "resnet_repro.launch", "-m", "hydra/launcher=slurm", *CPU_JOBS,
            f"hydra.launcher.name={name}", f"hydra.sweep.dir={tmp_path / 'hydra'}", *args]


def start_launcher(tmp_path, env, name, *args) -> subprocess.Popen:
    """The launcher in the background, its output in one stream, for a test to act on its jobs meanwhile."""
    return subprocess.Popen(launch_command(tmp_path, name, *args), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def launch(tmp_path, env, name, *args, timeout=400):
    """The launcher to its end; its jobs cancelled afterwards in any case."""
    try:
        return subprocess.run(launch_command(tmp_path, name, *args), cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=timeout)
    finally:
        subprocess.run(["scancel", f"--name={name}"], env=env, capture_output=True, timeout=30)


def job_name(tmp_path) -> str:
    return f"rr-{tmp_path.name}"[:60]


def test_the_cli_submits_a_grid_whose_runs_equal_the_same_runs_trained_here(tmp_path, slurm_env, monkeypatch):
    for key, value in slurm_env.items():
        monkeypatch.setenv(key, value)
    grid = ["sweep", "cifar", "--n", "1", "--arch", "plain,resnet", "profile=smoke", "seeds=2", "engine.threads=1",
            "engine.responses=false"]
    name = job_name(tmp_path)
    try:
        there = CliRunner().invoke(app, [*grid, "--launcher", "slurm", *CPU_JOBS, f"hydra.launcher.name={name}",
                                         f"hydra.sweep.dir={tmp_path / 'hydra'}", "--results-dir",
                                         str(tmp_path / "slurm" / "results")])
    finally:
        subprocess.run(["scancel", f"--name={name}"], capture_output=True, timeout=30)
    assert there.exit_code == 0, there.output
    here = CliRunner().invoke(app, [*grid, "--results-dir", str(tmp_path / "local" / "results")])
    assert here.exit_code == 0, here.output
    ids = sorted(p.name for p in (tmp_path / "local" / "experiments" / "smoke").iterdir())
    assert ids == ["plain8-seed0-sample", "plain8-seed1-sample", "resnet8-A-seed0-sample", "resnet8-A-seed1-sample"]
    for run_id in ids:
        a, b = (tmp_path / w / "experiments" / "smoke" / run_id for w in ("slurm", "local"))
        assert RunDir(a).read_summary().status == "finished" and rows(a) == rows(b), run_id
    assert (tmp_path / "slurm" / "results" / "table6.md").exists()  # the reports, once every job had ended


def test_a_failing_job_is_one_line_and_the_others_finish(tmp_path, slurm_env):
    out = launch(tmp_path, slurm_env, job_name(tmp_path), "profile=smoke", "model.n=1,0", "engine.threads=1",
                 "engine.responses=false", f"results_dir={tmp_path / 'results'}")
    log = out.stdout + out.stderr
    assert out.returncode == 1, log
    failed = [line for line in log.splitlines() if "job failed:" in line]
    assert len(failed) == 1 and "model.n=0: use a whole number >= 1" in failed[0], log
    assert "Traceback" not in log
    [done] = (tmp_path / "experiments" / "smoke").iterdir()
    assert done.name == "resnet8-A-seed0-sample" and RunDir(done).finished


def here(root: Path, overrides: list[str]) -> subprocess.Popen:
    """The same run trained here without a stop, in the background, to compare the requeued one with."""
    return subprocess.Popen([sys.executable, "-m", "resnet_repro", "run", "custom", *overrides, "--results-dir",
                             str(root / "results")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=root.parent)


def uninterrupted(job: subprocess.Popen, root: Path) -> list[dict]:
    out = job.communicate(timeout=600)[0]
    assert job.returncode == 0, out
    [run] = (root / "experiments" / "smoke").iterdir()
    return rows(run)


def wait_for(path_glob, root: Path, timeout: float = 180) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = sorted(root.glob(path_glob))
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"nothing matched {path_glob} under {root} in {timeout} s")


def signal_once_checkpointed(launcher: subprocess.Popen, tmp_path, env, name, signal, run="*", task=None) -> str:
    """`signal` to the launcher's one job, or to its grid's point `task`, once `run` has a checkpoint; the
    launcher's output when it has ended. The jobs are cancelled afterwards in any case."""
    try:
        wait_for(f"experiments/smoke/{run}/checkpoint.pt", tmp_path)
        tasks = subprocess.run(["squeue", "-h", "--array", "-n", name, "-o", "%i"], env=env, capture_output=True,
                               text=True).stdout.split()
        [job] = tasks if task is None else [t for t in tasks if t.endswith(f"_{task}")]  # a grid: a job array
        subprocess.run(["scancel", f"--signal={signal}", job], env=env, check=True)
        return launcher.communicate(timeout=500)[0]
    finally:
        launcher.kill()
        subprocess.run(["scancel", f"--name={name}"], env=env, capture_output=True, timeout=30)


def test_a_preempted_job_checkpoints_is_requeued_and_resumes_to_identical_metrics(tmp_path, slurm_env):
    reference = here(tmp_path / "here", SHORT)
    name = job_name(tmp_path)
    launcher = start_launcher(tmp_path, slurm_env, name, *SHORT, f"results_dir={tmp_path / 'results'}")
    # what a cluster sends before preempting; not --batch or --full: the job's Python must get it
    log = signal_once_checkpointed(launcher, tmp_path, slurm_env, name, "USR2")
    assert launcher.returncode == 0, log
    [run] = (tmp_path / "experiments" / "smoke").iterdir()
    job_log = "".join(p.read_text() for p in (tmp_path / "hydra").glob("**/*.log"))
    assert "resume" in job_log, job_log  # the requeued job went on from the checkpoint
    assert RunDir(run).finished and rows(run) == uninterrupted(reference, tmp_path / "here")


def test_a_job_killed_before_it_writes_its_result_is_named_and_the_launcher_ends(tmp_path, slurm_env):
    """This cluster has no accounting, so sacct knows no job: one killed outright (as by an out-of-memory
    kill) writes no result file, and only squeue can tell that it has ended. The launcher waits for the
    other job, names the run that did not finish and exits 1."""
    name = job_name(tmp_path)
    launcher = start_launcher(tmp_path, slurm_env, name, *SHORT, "seed=0,1", f"results_dir={tmp_path / 'results'}")
    log = signal_once_checkpointed(launcher, tmp_path, slurm_env, name, "KILL", run="*-seed1-*", task=1)
    assert launcher.returncode == 1, log
    assert re.search(r"missing: resnet8-A-seed1-sample-\w+ did not finish", log) and "Traceback" not in log, log
    assert "accounting storage is disabled" not in log  # sacct is not asked where there is no accounting
    [seed0] = (tmp_path / "experiments" / "smoke").glob("resnet8-A-seed0-*")
    assert RunDir(seed0).finished


def test_a_job_at_its_time_limit_is_requeued_and_resumes_to_identical_metrics(tmp_path, slurm_env):
    """SLURM signals SIGUSR2 `signal_delay_s` before the limit, checked every 30 s or so: with a 2-minute limit
    and 50 s of warning, 40 to 70 s after the start. A job that ends sooner is never signalled, so this one is
    stopped (SIGSTOP) at its first checkpoint, to reach its limit on a CPU of any speed: SLURM continues a
    stopped job to signal it."""
    reference = here(tmp_path / "here", SHORT)
    name = job_name(tmp_path)
    launcher = start_launcher(tmp_path, slurm_env, name, *SHORT, f"results_dir={tmp_path / 'results'}",
                              "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=50",
                              "hydra.launcher.max_num_timeout=8")
    log = signal_once_checkpointed(launcher, tmp_path, slurm_env, name, "STOP")
    assert launcher.returncode == 0, log
    [run] = (tmp_path / "experiments" / "smoke").iterdir()
    job_logs = "".join(p.read_text() for p in (tmp_path / "hydra").glob("**/*_log.*"))
    assert "this job is timed-out" in job_logs, job_logs  # submitit's word for a signal near the limit
    hydra_log = "".join(p.read_text() for p in (tmp_path / "hydra").glob("**/*.log"))
    assert "resume" in hydra_log, hydra_log
    assert RunDir(run).finished and rows(run) == uninterrupted(reference, tmp_path / "here")


def test_one_run_over_two_slurm_tasks_equals_it_under_torchrun(tmp_path, slurm_env):
    run = ["profile=smoke", "model.n=1", "engine.device=cpu", "engine.threads=1", "engine.responses=false",
           "train.iterations=20", "train.milestones=[10]", "engine.log_every=5", "engine.eval_every=10"]
    (tmp_path / "slurm").mkdir()
    out = launch(tmp_path / "slurm", slurm_env, job_name(tmp_path), *run, "hydra.launcher.tasks_per_node=2",
                 f"results_dir={tmp_path / 'slurm' / 'results'}")
    assert out.returncode == 0, out.stdout + out.stderr
    torchrun = Path(sys.executable).with_name("torchrun")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    local = subprocess.run([str(torchrun), "--nproc_per_node=2", f"--master_port={port}", "-m", "resnet_repro", "run",
                            "custom", *run, "--results-dir", str(tmp_path / "local" / "results")],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path,
                           env={k: v for k, v in os.environ.items() if not k.startswith("SLURM")})
    assert local.returncode == 0, local.stdout + local.stderr
    [a] = (tmp_path / "slurm" / "experiments" / "smoke").iterdir()
    [b] = (tmp_path / "local" / "experiments" / "smoke").iterdir()
    assert RunDir(a).read_summary().world_size == RunDir(b).read_summary().world_size == 2
    assert rows(a) == rows(b)
