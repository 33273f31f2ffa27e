"""The engine: signals become a stop flag, the compile setting, and precision chosen by the hardware."""

import os
import signal
import time

import pytest
import torch
from training import TINY

from resnet_repro import hardware, runner
from resnet_repro.config import compose_experiment
from resnet_repro.engine import StopFlag, choose_amp, compile_mode, setup_engine
from resnet_repro.errors import UserError


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


def test_compile_setting_is_a_mode_or_off():
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
    monkeypatch.setattr(hardware, "cpu_features", lambda: cpu)
    amp, reason = choose_amp("auto", torch.device("cpu"))
    assert amp is bf16 and reason.startswith("auto: bf16, native" if bf16 else "auto: fp32, bf16 not native")
    assert choose_amp(True, torch.device("cpu"))[0] and not choose_amp(False, torch.device("cpu"))[0]
    cfg = compose_experiment("custom", ["profile=smoke", *TINY, f"runs_dir={tmp_path}"])
    [summary] = runner.run_experiment(cfg)  # the run's summary says which precision it used and why
    assert summary.amp is bf16 and summary.amp_reason == reason
    assert ("no native bf16" in summary.device) is not bf16


def test_auto_threads_leave_the_busy_cores_alone(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 1.0, 1.0))  # another process keeps one core busy
    before = torch.get_num_threads()
    try:
        setup_engine(compose_experiment("custom", ["device=cpu", "train.threads=auto"]))
        assert torch.get_num_threads() == 1
        setup_engine(compose_experiment("custom", ["device=cpu", "train.threads=2"]))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
