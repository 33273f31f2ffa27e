"""The training engine: exact resume, durability, divergence, warm-up, signals, DDP, Hydra launch, bench.

Everything trains ResNet-8 (n=1) on the bundled sample with small batches, on the CPU, through the
real `fit` / runner / entry points: a stop arrives between steps exactly as a signal would.
"""

import csv
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from resnet_repro import runner, train
from resnet_repro.config import compose_experiment, expand_runs, runs_root
from resnet_repro.data import build_data
from resnet_repro.errors import TrainingDiverged, UserError
from resnet_repro.models import build_model
from resnet_repro.results import RunDir
from resnet_repro.errors import Interrupted
from resnet_repro.train import StopFlag, fit, lr_at, setup_engine

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
# crosses an epoch (31 batches of 32), a warm-up poll, log rows, evaluations and checkpoints.
RESUME = ["train.iterations=40", "train.milestones=[24,32]", "train.log_every=4", "train.eval_every=20",
          "train.checkpoint_every=16", "train.warmup.min_depth=8", "train.warmup.until_train_error=95"]


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    cfg, engine, data, whole = setup(tmp_path / "a", *RESUME)
    fit(cfg, whole, data, engine)

    _, _, _, parts = setup(tmp_path / "b", *RESUME)
    stop = StopFlag()
    # 1) a stop request after step 7: mid log-window, mid warm-up poll, mid epoch
    stopper = with_train(data, lambda it: stop.set() if it == 6 else None)
    with pytest.raises(Interrupted, match="interrupted at iteration 7/40"):
        fit(cfg, parts, stopper, engine, stop=stop)
    assert parts.summary()["status"] == "interrupted" and torch.load(parts.checkpoint)["iteration"] == 7
    # 2) resumed by a fresh call, stopped again from the on_row callback after the epoch boundary
    stop = StopFlag()
    with pytest.raises(Interrupted, match="at iteration 36/40"):
        fit(cfg, parts, data, engine, on_row=lambda row: stop.set() if row["iteration"] == 36 else None, stop=stop)
    # 3) and run to the end
    summary = fit(cfg, parts, data, engine, stop=StopFlag())
    assert summary["status"] == "finished" and summary["iterations_done"] == 40

    a, b = torch.load(whole.checkpoint), torch.load(parts.checkpoint)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    rows_a, rows_b = read_metrics(whole), read_metrics(parts)
    assert without_timing(rows_a) == without_timing(rows_b)
    # the warm-up ended and went back to the base LR, then the schedule divided it by 10 twice
    lrs = [float(r["lr"]) for r in rows_a]
    assert lrs[0] == 0.01 and 0.1 in lrs and lrs[-1] == pytest.approx(0.001)
    assert [r["iteration"] for r in rows_a] == [str(i) for i in range(4, 41, 4)]


def test_lr_at_warmup_then_schedule():
    cfg = tiny_cfg(Path("unused"), "train.milestones=[10,20]")
    assert lr_at(3, cfg.train, warming_up=True) == 0.01
    assert [lr_at(i, cfg.train, warming_up=False) for i in (3, 10, 20)] == pytest.approx([0.1, 0.01, 0.001])


def test_corrupt_checkpoint_is_a_user_error_naming_the_file(tmp_path):
    cfg, engine, data, run = setup(tmp_path / "runs")
    run.path.mkdir(parents=True)
    run.checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=re.escape(str(run.checkpoint))):
        fit(cfg, run, data, engine)


def test_divergence_keeps_last_good_checkpoint_and_records_failure(tmp_path):
    over = ["train.iterations=16", "train.milestones=[100]", "train.log_every=4", "train.checkpoint_every=4",
            "train.eval_every=16"]
    cfg, engine, data, run = setup(tmp_path / "runs", *over)

    def poison(it):  # from step 10 on the images are NaN: the loss is NaN from then on
        if it == 9:
            data.train.images.fill_(float("nan"))

    saved = data.train.images.clone()
    try:
        with pytest.raises(TrainingDiverged, match="by iteration 12"):
            fit(cfg, run, with_train(data, poison), engine)
    finally:
        data.train.images.copy_(saved)
    state = torch.load(run.checkpoint)
    assert state["iteration"] == 8 and all(t.isfinite().all() for t in state["model"].values())
    summary = run.summary()
    assert summary["status"] == "failed" and "12" in summary["failure"]

    # a learning rate that blows the weights up is caught too (finite loss, infinite weights)
    cfg, engine, data, run = setup(tmp_path / "lr", *over, "train.lr=1e6")
    with pytest.raises(TrainingDiverged):
        fit(cfg, run, data, engine)
    assert run.summary()["status"] == "failed"


def test_finished_run_is_skipped_and_left_unchanged(tmp_path):
    cfg = compose_experiment("custom", ["profile=smoke", *TINY, f"runs_dir={tmp_path / 'runs'}"])
    first = runner.run_experiment(cfg)
    run = RunDir.for_run(runs_root(cfg), expand_runs(cfg)[0])
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.path.iterdir()}
    statuses = []
    second = runner.run_experiment(cfg, on_run=lambda c, r, status: statuses.append(status))
    assert statuses == ["skip"] and second == first
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.path.iterdir()} == before


def test_sigint_sets_the_flag_and_restores_the_handler():
    stop = StopFlag()
    previous = signal.getsignal(signal.SIGINT)
    with stop.installed():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.requested and stop.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is previous


def test_a_schedulers_handler_gets_the_signal_after_the_checkpoint():
    """submitit's SIGUSR2 handler requeues the job: it must run after our checkpoint, not instead."""
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        with StopFlag().installed() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.01)
            assert stop.requested and calls == []  # held back while the loop saves its checkpoint
        assert calls == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_sigint_during_training_checkpoints_and_the_same_call_resumes(tmp_path, monkeypatch):
    cfg = compose_experiment("custom", ["profile=smoke", *TINY, "train.iterations=12", "train.milestones=[8]",
                                        "train.log_every=4", "train.checkpoint_every=8", f"runs_dir={tmp_path}"])
    real_build = runner.build_data

    def build_data_with_sigint(run_cfg, engine, seed):  # Ctrl-C arrives before step 6
        data = real_build(run_cfg, engine, seed)
        return with_train(data, lambda it: os.kill(os.getpid(), signal.SIGINT) if it == 5 else None)

    monkeypatch.setattr(runner, "build_data", build_data_with_sigint)
    with pytest.raises(Interrupted, match="iteration 6/12"):
        runner.run_experiment(cfg)
    monkeypatch.setattr(runner, "build_data", real_build)
    statuses = []
    [summary] = runner.run_experiment(cfg, on_run=lambda c, r, status: statuses.append(status))
    assert statuses == ["resume"] and summary["status"] == "finished" and summary["iterations_done"] == 12


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
    real_step, real_write, real_build = train.train_step, results.atomic_write_bytes, runner.build_data

    def recording_step(model, optimizer, x, y, engine):
        report["batches"].append(len(y))
        return real_step(model, optimizer, x, y, engine)

    def recording_write(path, data):
        report["writes"].append(str(path))
        return real_write(path, data)

    def ctrl_c_on_rank0_only(run_cfg, engine, seed):  # a signal that reaches one rank, before step 3
        return with_train(real_build(run_cfg, engine, seed),
                          lambda it: os.kill(os.getpid(), signal.SIGINT) if it == 2 else None)

    train.train_step, results.atomic_write_bytes = recording_step, recording_write
    if rank == 0:
        runner.build_data = ctrl_c_on_rank0_only
    cfg = compose_experiment("custom", ["profile=smoke", *TINY, "train.responses=true", "train.iterations=12",
                                        "train.milestones=[8]", "train.log_every=4", f"runs_dir={root}"])
    try:
        runner.run_experiment(cfg)
    except Interrupted as e:
        report["interrupted"] = str(e)
    runner.build_data = real_build
    [report["summary"]] = runner.run_experiment(cfg)  # resumed on both ranks
    torch.distributed.destroy_process_group()
    Path(root, f"rank{rank}.json").write_text(json.dumps(report))


def test_ddp_two_processes_split_the_batch_stop_together_and_only_rank0_writes(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "runs")), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / "runs" / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:  # global batch 32, half on each rank; both stopped at the same agreed step
        assert r["batches"] == [16] * 12
        assert f"interrupted at iteration {train.STOP_POLL}/12" in r["interrupted"]
        assert r["summary"]["status"] == "finished" and r["summary"]["world_size"] == 2
    assert ranks[0]["summary"]["final_test_error"] == ranks[1]["summary"]["final_test_error"]
    assert ranks[0]["writes"] and ranks[1]["writes"] == []
    [run] = (tmp_path / "runs" / "smoke").iterdir()
    assert {"config.yaml", "metrics.csv", "checkpoint.pt", "responses.csv", "summary.json"} <= {
        p.name for p in run.iterdir()}


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_step_never_syncs_with_the_host(tmp_path):
    cfg, engine, data, _ = setup(tmp_path, "device=cuda", "train.compile=false")
    model = build_model(cfg.model, 10).to(engine.device).to(memory_format=torch.channels_last)
    optimizer = train.build_optimizer(model, cfg.train)
    batches = data.train.epoch(0)
    window = torch.zeros(3, device=engine.device)
    for x, y in [next(batches) for _ in range(2)]:  # warm-up: cuDNN autotuning may sync
        window += train.train_step(model, optimizer, x, y, engine)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            x, y = next(batches)
            window += train.train_step(model, optimizer, x, y, engine)
        for _, _ in zip(range(2), data.train.epoch(1)):  # a new epoch's randomness reaches the GPU without a sync
            pass
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert window.tolist()[2] == 5 * 32


# --- Hydra entry point (what SLURM jobs run) -----------------------------------------------------

def _launch(*overrides, cwd):
    return subprocess.Popen([sys.executable, "-m", "resnet_repro.launch", *overrides], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_launch_trains_one_run_and_a_requeued_job_resumes(tmp_path):
    args = ["profile=smoke", *TINY, "train.iterations=40", "train.milestones=[30]", "train.log_every=10",
            "train.checkpoint_every=2", "train.eval_every=40", f"runs_dir={tmp_path / 'runs'}",
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
    first = run.summary()
    assert first["status"] == "interrupted" and 0 < first["iterations_done"] < 40

    job = _launch(*args, cwd=tmp_path)  # the requeued job: the same command again
    out = job.communicate(timeout=120)[0]
    assert job.returncode == 0, out
    assert "resume" in out and "test error" in out
    summary = run.summary()
    assert summary["status"] == "finished" and summary["iterations_done"] == 40
    assert [int(r["iteration"]) for r in read_metrics(run)] == list(range(10, 41, 10))


def test_launch_refuses_a_config_that_makes_several_runs(tmp_path):
    from resnet_repro.launch import train_one

    cfg = compose_experiment("custom", ["profile=smoke", *TINY, "seeds=2", f"runs_dir={tmp_path}"])
    with pytest.raises(UserError, match="fan out with -m"):
        train_one(cfg, ["seeds=2"])
    assert not any(tmp_path.iterdir())


# --- bench ---------------------------------------------------------------------------------------

def test_bench_times_both_pipelines_and_appends_a_row(tmp_path):
    from resnet_repro.bench import run_bench

    lines = []
    result = run_bench(n=1, batch_size=16, steps=2, warmup=1, workers=0, results_dir=tmp_path, log=lines.append)
    assert lines[-1] == f"speedup: {result.speedup:.2f}x" and result.speedup > 0
    assert any(line.startswith("reference") and "64k iterations" in line for line in lines)
    with open(tmp_path / "bench.csv") as f:
        [row] = list(csv.DictReader(f))
    assert row["model"] == "resnet8-A" and row["batch"] == "16" and float(row["ours_images_per_s"]) > 0
    assert row["torch"] == torch.__version__ and row["git_commit"] and row["precision"].startswith(("bf16", "fp32"))
    assert any(line.startswith("precision (ours): ") for line in lines)


def test_a_run_locked_by_another_process_is_skipped_not_shared(tmp_path):
    from resnet_repro.config import compose_experiment, expand_runs, runs_root
    from resnet_repro.results import RunDir
    from resnet_repro.runner import run_experiment

    cfg = compose_experiment("custom", ["profile=smoke", "model.n=1", f"results_dir={tmp_path}/results"])
    run = RunDir.for_run(runs_root(cfg), expand_runs(cfg)[0])
    seen = []
    with run.lock() as mine:
        assert mine
        with run.lock() as other:  # a second open file description: as another process would see it
            assert not other
        assert run_experiment(cfg, on_run=lambda c, r, status: seen.append(status)) == []
    assert seen == ["busy"] and not run.metrics.exists()
    assert run_experiment(cfg)[0]["status"] == "finished"


def test_git_commit_falls_back_to_the_environment_without_git(monkeypatch):
    from resnet_repro.results import git_commit

    assert git_commit() not in ("unknown", "0123abcd")  # this checkout
    monkeypatch.setenv("PATH", "")  # no git: as on a copy of the tree without .git
    monkeypatch.setenv("RESNET_REPRO_GIT_COMMIT", "0123abcd")
    assert git_commit() == "0123abcd"
    monkeypatch.delenv("RESNET_REPRO_GIT_COMMIT")
    assert git_commit() == "unknown"


def test_compile_setting_is_a_mode_or_off():
    from resnet_repro.train import compile_mode

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_mode("auto", cpu) is None and compile_mode("auto", cuda) == "default"
    assert compile_mode("auto", cuda, graphs=True) == "reduce-overhead" and compile_mode("auto", cpu, True) is None
    assert compile_mode(True, cpu) == "default" and compile_mode(False, cuda) is None
    assert compile_mode("reduce-overhead", cuda) == "reduce-overhead"
    with pytest.raises(UserError, match="train.compile='fast'"):
        compile_mode("fast", cuda)


# --- precision: bf16 only where the hardware runs it natively ------------------------------------

AVX2_ONLY = {"capability": "AVX2", "avx512_bf16": False, "amx": False, "onednn_bf16": False}
SAPPHIRE_RAPIDS = {"capability": "AVX512", "avx512_bf16": True, "amx": True, "onednn_bf16": True}


@pytest.mark.parametrize("cpu, bf16", [
    (AVX2_ONLY, False),
    (SAPPHIRE_RAPIDS, True),
    ({**SAPPHIRE_RAPIDS, "capability": "AVX2", "onednn_bf16": False}, False),  # capped: ATEN_CPU_CAPABILITY=avx2
    ({**AVX2_ONLY, "capability": "AVX512", "onednn_bf16": True}, False),  # AVX-512 that only emulates bf16
])
def test_auto_precision_follows_the_cpu(monkeypatch, tmp_path, cpu, bf16):
    from resnet_repro import hardware

    monkeypatch.setattr(hardware, "cpu_features", lambda: cpu)
    amp, reason = train.choose_amp("auto", torch.device("cpu"))
    assert amp is bf16 and reason.startswith("auto: bf16, native" if bf16 else "auto: fp32, bf16 not native")
    assert train.choose_amp(True, torch.device("cpu"))[0] and not train.choose_amp(False, torch.device("cpu"))[0]
    cfg = compose_experiment("custom", ["profile=smoke", *TINY, f"runs_dir={tmp_path}"])
    [summary] = runner.run_experiment(cfg)  # the run's summary says which precision it used and why
    assert summary["amp"] is bf16 and summary["amp_reason"] == reason
    assert ("no native bf16" in summary["device"]) is not bf16
