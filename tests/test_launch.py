"""`python -m resnet_repro.launch`: the Hydra entry point SLURM jobs run (here with Hydra's basic launcher)."""

import signal
import subprocess
import sys
import time

import pytest
from training import TINY, read_metrics

from resnet_repro.config import compose_experiment
from resnet_repro.errors import UserError
from resnet_repro.results import RunDir


def _launch(*overrides, cwd):
    return subprocess.Popen([sys.executable, "-m", "resnet_repro.launch", *overrides], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_launch_trains_one_run_and_a_requeued_job_resumes(tmp_path):
    args = ["profile=smoke", *TINY, "train.iterations=40", "train.milestones=[30]", "engine.log_every=10",
            "engine.checkpoint_every=2", "engine.eval_every=40", f"runs_dir={tmp_path / 'runs'}",
            f"hydra.run.dir={tmp_path / 'hydra'}"]
    job = _launch(*args, cwd=tmp_path)
    checkpoint = None
    deadline = time.time() + 60
    while checkpoint is None and time.time() < deadline and job.poll() is None:
        time.sleep(0.05)
        checkpoint = next((tmp_path / "runs").glob("smoke/*/checkpoint.pt"), None)
    assert checkpoint is not None, job.communicate()[0]
    job.send_signal(signal.SIGTERM)  # what SLURM sends on preemption or scancel
    out = job.communicate(timeout=60)[0]
    assert job.returncode == 130, out
    run = RunDir(checkpoint.parent)
    first = run.read_summary()
    assert first.status == "interrupted" and 0 < first.iterations_done < 40

    job = _launch(*args, cwd=tmp_path)  # the requeued job: the same command again
    out = job.communicate(timeout=120)[0]
    assert job.returncode == 0, out
    assert "resume" in out and "test error" in out
    summary = run.read_summary()
    assert summary.status == "finished" and summary.iterations_done == 40
    assert [int(r["iteration"]) for r in read_metrics(run)] == list(range(10, 41, 10))


def test_launch_refuses_a_config_that_makes_several_runs(tmp_path):
    from resnet_repro.launch import train_one

    cfg = compose_experiment("custom", ["profile=smoke", *TINY, "seeds=2", f"runs_dir={tmp_path}"])
    with pytest.raises(UserError, match="fan out with -m"):
        train_one(cfg, ["seeds=2"])
    assert not any(tmp_path.iterdir())




def test_the_finish_step_composes_the_command_without_its_grid():
    from resnet_repro.launch import finish_configs

    [cfg] = finish_configs(["-m", "hydra/launcher=basic", "model.n=3,5", "seed=0,1", "profile=smoke",
                            "results_dir=/tmp/r"])
    assert (cfg.experiment.name, cfg.profile.name, cfg.results_dir) == ("custom", "smoke", "/tmp/r")
    assert cfg.experiment.overrides == ["profile=smoke", "results_dir=/tmp/r"]  # no model.n, no seed
    both = finish_configs(["-m", "experiment=fig1,table6", "model.arch=plain"])
    assert [c.experiment.name for c in both] == ["fig1", "table6"]
    assert finish_configs(["--help"]) == [] and finish_configs(["--cfg", "job"]) == []


@pytest.mark.slow
def test_a_grid_trains_one_run_per_job_then_writes_the_reports_once(tmp_path):
    args = ["-m", "experiment=fig1", "model.arch=plain", "model.n=3,9", "profile=smoke",
            "engine.device=cpu", "engine.responses=false", "engine.threads=1", "engine.eval_batch_size=500",
            f"results_dir={tmp_path / 'results'}", f"hydra.sweep.dir={tmp_path / 'hydra'}"]
    out = subprocess.run([sys.executable, "-m", "resnet_repro.launch", *args], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    runs = sorted(p.name for p in (tmp_path / "experiments" / "smoke").iterdir())
    assert runs == ["plain20-seed0-sample", "plain56-seed0-sample"]
    log = out.stdout + out.stderr
    assert log.count(f"wrote: {tmp_path / 'results' / 'fig1.png'}") == 1  # once, after both jobs
    assert "(partial)" not in log and (tmp_path / "results" / "fig1.pdf").exists()
