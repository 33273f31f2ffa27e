"""The runner: skip finished runs, resume after Ctrl-C, one process per run (locks), and DDP through
the runner and under torchrun (two CPU processes with gloo)."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from training import TINY, with_train

from resnet_repro import runner, steppers
from resnet_repro.config import compose_experiment, expand_runs, runs_root
from resnet_repro.engine import STOP_POLL
from resnet_repro.errors import Interrupted
from resnet_repro.results import RunDir

def test_finished_run_is_skipped_and_left_unchanged(tmp_path):
    cfg = compose_experiment("custom", ["profile=smoke", *TINY, f"runs_dir={tmp_path / 'runs'}"])
    first = runner.run_experiment(cfg)
    run = RunDir.for_run(runs_root(cfg), expand_runs(cfg)[0])
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.path.iterdir()}
    statuses = []
    second = runner.run_experiment(cfg, on_run=lambda c, r, status: statuses.append(status))
    assert statuses == ["skip"] and second == first
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.path.iterdir()} == before



def test_sigint_during_training_checkpoints_and_the_same_call_resumes(tmp_path, monkeypatch):
    cfg = compose_experiment("custom", ["profile=smoke", *TINY, "train.iterations=12", "train.milestones=[8]",
                                        "engine.log_every=4", "engine.checkpoint_every=8", f"runs_dir={tmp_path}"])
    real_build = runner.build_data

    def build_data_with_sigint(run_cfg, engine):  # Ctrl-C arrives before step 6
        data = real_build(run_cfg, engine)
        return with_train(data, lambda it: os.kill(os.getpid(), signal.SIGINT) if it == 5 else None)

    monkeypatch.setattr(runner, "build_data", build_data_with_sigint)
    with pytest.raises(Interrupted, match="iteration 6/12"):
        runner.run_experiment(cfg)
    monkeypatch.setattr(runner, "build_data", real_build)
    statuses = []
    [summary] = runner.run_experiment(cfg, on_run=lambda c, r, status: statuses.append(status))
    assert statuses == ["resume"] and summary.status == "finished" and summary.iterations_done == 12


# --- DDP: two CPU processes with gloo, through the runner --------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, root: str) -> None:
    from resnet_repro import results

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    report = {"batches": [], "writes": []}
    real_step, real_write, real_build = steppers.train_step, results.atomic_write_bytes, runner.build_data

    def recording_step(model, optimizer, x, y, engine, scaler=None):
        report["batches"].append(len(y))
        return real_step(model, optimizer, x, y, engine, scaler)

    def recording_write(path, data):
        report["writes"].append(str(path))
        return real_write(path, data)

    def ctrl_c_on_rank0_only(run_cfg, engine):  # a signal that reaches one rank, before step 3
        return with_train(real_build(run_cfg, engine),
                          lambda it: os.kill(os.getpid(), signal.SIGINT) if it == 2 else None)

    steppers.train_step, results.atomic_write_bytes = recording_step, recording_write
    if rank == 0:
        runner.build_data = ctrl_c_on_rank0_only
    cfg = compose_experiment("custom", ["profile=smoke", *TINY, "engine.responses=true", "train.iterations=12",
                                        "train.milestones=[8]", "engine.log_every=4", f"runs_dir={root}"])
    try:
        runner.run_experiment(cfg)
    except Interrupted as e:
        report["interrupted"] = str(e)
    runner.build_data = real_build
    report["summary"] = runner.run_experiment(cfg)[0].to_json()  # resumed on both ranks
    torch.distributed.destroy_process_group()
    Path(root, f"rank{rank}.json").write_text(json.dumps(report))


@pytest.mark.slow
def test_ddp_two_processes_split_the_batch_stop_together_and_only_rank0_writes(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "runs")), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / "runs" / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        r["summary"] = json.loads(r["summary"])
    for r in ranks:  # global batch 32, half on each rank; both stopped at the same agreed step
        assert r["batches"] == [16] * 12
        assert f"interrupted at iteration {STOP_POLL}/12" in r["interrupted"]
        assert r["summary"]["status"] == "finished" and r["summary"]["world_size"] == 2
    assert ranks[0]["summary"]["final_test_error"] == ranks[1]["summary"]["final_test_error"]
    assert ranks[0]["writes"] and ranks[1]["writes"] == []
    [run] = (tmp_path / "runs" / "smoke").iterdir()
    assert {"config.yaml", "metrics.csv", "checkpoint.pt", "responses.csv", "summary.json"} <= {
        p.name for p in run.iterdir()}


@pytest.mark.slow
def test_torchrun_runs_the_cli_on_two_processes(tmp_path):
    """`python -m resnet_repro` under torchrun: one DDP run, written once."""
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node=2", f"--master_port={_free_port()}", "-m", "resnet_repro", "run",
           "custom", "profile=smoke", *TINY, "--runs-dir", str(tmp_path / "runs"),
           "--results-dir", str(tmp_path / "results")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    [run] = (tmp_path / "runs" / "smoke").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 2


def test_a_run_locked_by_another_process_is_skipped_not_shared(tmp_path):
    cfg = compose_experiment("custom", ["profile=smoke", "model.n=1", f"results_dir={tmp_path}/results"])
    run = RunDir.for_run(runs_root(cfg), expand_runs(cfg)[0])
    seen = []
    with run.lock() as mine:
        assert mine
        with run.lock() as other:  # a second open file description: as another process would see it
            assert not other
        assert runner.run_experiment(cfg, on_run=lambda c, r, status: seen.append(status)) == []
    assert seen == ["busy"] and not run.metrics.exists()
    assert runner.run_experiment(cfg)[0].status == "finished"


