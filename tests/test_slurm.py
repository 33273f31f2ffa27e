"""`python -m resnet_repro.launch -m hydra/launcher=slurm`: a grid as real SLURM jobs, through Hydra's
submitit plugin, on whatever cluster `slurm_env` reaches (scripts/slurm_local.sh start: this machine)."""

import subprocess
import sys

import pytest
from slurm_cluster import slurm_env  # noqa: F401

from resnet_repro.results import RunDir

# What conf/hydra/launcher/slurm.yaml asks for that a one-node CPU test cluster cannot give: a GPU,
# 4 CPUs and 16 GB per job. timeout_min: a job left behind by a failed test ends by itself.
CPU_JOBS = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10"]


@pytest.mark.slurm
def test_a_two_seed_grid_trains_as_two_slurm_jobs(tmp_path, slurm_env):  # noqa: F811
    name = f"resnet-repro-test-{tmp_path.name}"
    args = ["-m", *CPU_JOBS, f"hydra.launcher.name={name}", "profile=smoke", "model.n=1", "seed=0,1",
            "engine.device=cpu", "engine.threads=1", "engine.responses=false",
            f"results_dir={tmp_path / 'results'}", f"hydra.sweep.dir={tmp_path / 'hydra'}"]
    try:
        out = subprocess.run([sys.executable, "-m", "resnet_repro.launch", *args], cwd=tmp_path, env=slurm_env,
                             capture_output=True, text=True, timeout=300)
    finally:  # a job the launcher gave up on (timeout, error) must not outlive the test
        subprocess.run(["scancel", f"--name={name}"], env=slurm_env, capture_output=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    runs = sorted((tmp_path / "experiments" / "smoke").iterdir())
    assert [p.name.split("-")[2] for p in runs] == ["seed0", "seed1"], runs
    for path in runs:
        summary = RunDir(path).read_summary()
        assert summary.status == "finished" and summary.iterations_done == summary.iterations, path
    results = sorted(p.name for p in (tmp_path / "hydra" / ".submitit").glob("*/*_0_result.pkl"))
    assert len(results) == 2, results  # one array job, two tasks: each returned through submitit
