"""The engine: signals become a stop flag, the compile setting, and precision chosen by the hardware."""

import os

import pytest
import torch
from training import TINY

from resnet_repro import engine as engine_module
from resnet_repro import hardware, runner
from resnet_repro.config import compose_experiment
from resnet_repro.engine import choose_precision, compile_mode, set_tf32, setup_engine
from resnet_repro.errors import UserError
from resnet_repro.runs import load_runs


def test_compile_setting_is_a_mode_or_off():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_mode("auto", cuda)[0] == "default"
    assert compile_mode("auto", cuda, graphs=True)[0] == "reduce-overhead"
    assert compile_mode(True, cpu) == ("default", "engine.compile=true") and compile_mode(False, cuda)[0] is None
    assert compile_mode("reduce-overhead", cuda)[0] == "reduce-overhead"
    with pytest.raises(UserError, match="engine.compile='fast'"):
        compile_mode("fast", cuda)


def test_auto_compiles_long_cpu_runs_where_a_cpp_compiler_exists(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(engine_module.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.delenv("CXX", raising=False)
    assert compile_mode("auto", cpu, iterations=64_000) == ("default", "auto: default on CPU with g++")
    mode, why = compile_mode("auto", cpu, iterations=120)
    assert mode is None and "120 iterations < 2,000" in why
    monkeypatch.setattr(engine_module.shutil, "which", lambda name: None)
    mode, why = compile_mode("auto", cpu, iterations=64_000)
    assert mode is None and "no C++ compiler" in why


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
    monkeypatch.setattr(hardware, "cpu_features", lambda: cpu)
    precision, reason = choose_precision("auto", torch.device("cpu"))
    assert precision == ("bf16" if bf16 else "fp32")
    assert reason.startswith("auto: bf16, native" if bf16 else "auto: fp32, bf16 not native")
    assert [choose_precision(p, torch.device("cpu"))[0] for p in ("bf16", "fp16", "fp32")] == ["bf16", "fp16", "fp32"]
    cfg = compose_experiment("custom", ["profile=smoke", *TINY, f"runs_dir={tmp_path}"])
    [summary] = runner.run_experiment(cfg)  # the run's summary says which precision it used and why
    assert summary.precision == precision and summary.amp is bf16 and summary.amp_reason == reason
    assert summary.compile == "eager (auto: eager, 6 iterations < 2,000 do not repay compiling)"
    assert ("no native bf16" in summary.device) is not bf16


def test_a_run_resumed_on_another_cpu_goes_on_in_the_precision_it_started_in(monkeypatch, tmp_path):
    """Killed after its checkpoint at 4 on a CPU where auto picks bf16, resumed where auto picks fp32 (a
    requeued job on another node, a campaign on a new machine): it trains on in bf16, says why, and ends
    with the metrics of the same run uninterrupted."""
    schedule = ["profile=smoke", *TINY, "train.iterations=8", "train.milestones=[6]", "engine.log_every=2",
                "engine.eval_every=8", "engine.checkpoint_every=4"]

    class Killed(Exception):
        pass

    def killed_at_6(_, row):
        if row["iteration"] == 6:
            raise Killed

    monkeypatch.setattr(hardware, "cpu_features", lambda: SAPPHIRE_RAPIDS)
    [whole] = runner.run_experiment(compose_experiment("custom", [*schedule, f"runs_dir={tmp_path / 'a'}"]))
    parts = compose_experiment("custom", [*schedule, f"runs_dir={tmp_path / 'b'}"])
    with pytest.raises(Killed):
        runner.run_experiment(parts, on_row=killed_at_6)
    monkeypatch.setattr(hardware, "cpu_features", lambda: AVX2_ONLY)
    [resumed] = runner.run_experiment(parts)
    assert whole.precision == resumed.precision == "bf16"
    assert resumed.amp_reason.startswith("auto: bf16, as the run trained before it resumed (on this machine "
                                         "alone: fp32 (auto: fp32, bf16 not native")
    assert (whole.final_test_error, whole.final_train_error) == (resumed.final_test_error, resumed.final_train_error)
    # where each stretch trained stays in the run's record, not only the last machine
    assert whole.trained_on is None and whole.devices == whole.device
    first, second = resumed.trained_on
    assert (first["from_iteration"], second["from_iteration"]) == (0, 4)
    assert "no native bf16" not in first["device"] and "no native bf16" in second["device"]
    assert second["device"] == resumed.device
    assert first["precision"] == second["precision"] == "bf16"
    [row] = load_runs(tmp_path / "b").itertuples()
    assert row.device == resumed.devices == f"{first['device']} from 0; {second['device']} from 4"


@pytest.mark.parametrize("capability, native_bf16, expected", [
    ((9, 0), True, "bf16"),  # H100
    ((8, 0), True, "bf16"),  # A100
    ((7, 5), False, "fp16"),  # T4: bf16 only emulated
    ((7, 0), False, "fp16"),  # V100
    ((6, 0), False, "fp32"),  # P100
])
def test_auto_precision_follows_the_gpu_generation(monkeypatch, capability, native_bf16, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or native_bf16)
    precision, reason = choose_precision("auto", torch.device("cuda"))
    assert precision == expected and f"compute capability {capability[0]}.{capability[1]}" in reason
    if capability >= (8, 0):
        assert choose_precision("tf32", torch.device("cuda"))[0] == "tf32"
    else:
        with pytest.raises(UserError, match="compute capability 8.0"):
            choose_precision("tf32", torch.device("cuda"))


def test_fp32_means_fp32_tf32_is_its_own_value():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        set_tf32("fp32")
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        set_tf32("tf32")
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
    with pytest.raises(UserError, match="tf32 needs a CUDA GPU"):
        choose_precision("tf32", torch.device("cpu"))
    with pytest.raises(UserError, match="choose one of auto, bf16, fp16, tf32, fp32"):
        choose_precision("fp8", torch.device("cpu"))


def fake_proc_stat(tmp_path, monkeypatch, busy_share):
    """/proc/stat as it reads before and after the sample, with `busy_share` of 2 cores' time busy."""
    snapshots = iter([(1000, 0), (1000 + 40 * busy_share, 40 * (1 - busy_share))])

    def cpu_times():
        busy, idle = next(snapshots)
        path = tmp_path / "stat"  # the real parser reads it: user nice system idle iowait irq softirq steal ...
        path.write_text(f"cpu  {busy:.0f} 0 0 {idle + 5000:.0f} 0 0 0 0 0 0\ncpu0 1 2 3\n")
        return real_cpu_times(path)

    real_cpu_times = hardware.cpu_times
    monkeypatch.setattr(hardware, "cpu_times", cpu_times)
    monkeypatch.setattr(hardware.time, "sleep", lambda s: None)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)


@pytest.mark.parametrize("busy_share, threads", [(0.5, 1), (0.05, 2), (1.0, 1)])
def test_auto_threads_leave_the_busy_cores_alone(tmp_path, monkeypatch, busy_share, threads):
    fake_proc_stat(tmp_path, monkeypatch, busy_share)  # another process keeps one core busy, or none
    before = torch.get_num_threads()
    try:
        setup_engine(compose_experiment("custom", ["engine.device=cpu", "engine.threads=auto"]))
        assert torch.get_num_threads() == threads
        setup_engine(compose_experiment("custom", ["engine.device=cpu", "engine.threads=2"]))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_without_proc_stat_the_load_average_counts_the_busy_cores(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_times", lambda: (_ for _ in ()).throw(OSError("no /proc")))
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 1.0, 1.0))
    assert hardware.cpu_threads("auto") == 1 and hardware.cpu_threads(2) == 2
    with pytest.raises(UserError, match="engine.threads=3: this process may use 2 cores"):
        hardware.cpu_threads(3)  # more threads than cores only wait on each other
