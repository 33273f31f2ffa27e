"""Signals at any moment: before training a command ends at once in one line; while a run trains it
checkpoints at the next step and stops; a scheduler's handler gets the signal afterwards, only if the
command stopped for it."""

import os
import signal
import subprocess
import sys
import time

import pytest

from resnet_repro.errors import Interrupted
from resnet_repro.signals import Signalled, StopFlag


def send(signum):
    os.kill(os.getpid(), signum)
    time.sleep(0.01)  # the handler runs between bytecodes


def test_while_training_a_signal_sets_the_flag_and_the_handler_comes_back():
    stop, previous = StopFlag(), signal.getsignal(signal.SIGINT)
    with stop.installed(), stop.training():
        send(signal.SIGINT)
        assert stop.requested and stop.signum == signal.SIGINT
        stop.requested = False  # the loop stopped at the next step (here: nobody did)
    assert signal.getsignal(signal.SIGINT) is previous


def test_before_training_a_signal_ends_the_command_at_once():
    with pytest.raises(Signalled, match=r"interrupted \(SIGTERM\) before training started"):
        with StopFlag().installed():
            send(signal.SIGTERM)
            raise AssertionError("the signal should have ended this block")


def test_a_signal_after_the_last_step_ends_the_command_when_the_run_is_done():
    stop = StopFlag()
    with pytest.raises(Signalled):
        with stop.installed(), stop.training():
            send(signal.SIGTERM)  # during the final evaluation: no step left to stop at


@pytest.fixture
def scheduler():
    """A handler installed before ours, as submitit's requeue handler is."""
    calls = []
    previous = {s: signal.signal(s, lambda signum, frame: calls.append(signum)) for s in (signal.SIGUSR2, signal.SIGTERM)}
    yield calls
    for s, handler in previous.items():
        signal.signal(s, handler)


def test_the_schedulers_handler_gets_the_signal_after_the_checkpoint(scheduler):
    with pytest.raises(Interrupted):
        with StopFlag().installed() as stop, stop.training():
            send(signal.SIGUSR2)
            assert stop.requested and scheduler == []  # held back while the loop saves its checkpoint
            raise Interrupted("checkpoint saved")  # what fit raises at the next step
    assert scheduler == [signal.SIGUSR2]


def test_submitits_preemption_sigterm_then_sigusr2_hands_on_the_requeue_signal(scheduler):
    with pytest.raises(Interrupted):
        with StopFlag().installed() as stop, stop.training():
            send(signal.SIGTERM)
            send(signal.SIGUSR2)
            raise Interrupted("checkpoint saved")
    assert scheduler == [signal.SIGUSR2]


def test_a_run_that_finished_is_not_requeued(scheduler):
    stop = StopFlag()
    with pytest.raises(Signalled):  # the signal came after the last step: the run is done
        with stop.installed(), stop.training():
            send(signal.SIGUSR2)
            stop.requested = True
    assert scheduler == []


def catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM yet (Linux: the SigCgt mask of /proc/PID/status)."""
    try:
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(mask & (1 << (signal.SIGTERM - 1)))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to know when the CLI has started")
@pytest.mark.parametrize("after", [0.0, 1.5])  # as soon as the CLI runs (imports, composing); building the net
def test_a_signal_during_setup_ends_the_cli_at_once_in_one_line(tmp_path, after):
    """A net big enough that building and setting it up takes seconds; SIGTERM arrives meanwhile."""
    cmd = [sys.executable, "-m", "resnet_repro", "run", "custom", "profile=smoke", "model.n=60", "engine.device=cpu",
           "engine.threads=1", "--results-dir", str(tmp_path / "results")]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 30
    while not catches_sigterm(job.pid) and time.monotonic() < deadline:  # before that, Python's own start-up
        time.sleep(0.01)
    time.sleep(after)
    sent = time.monotonic()
    job.send_signal(signal.SIGTERM)
    out, err = job.communicate(timeout=30)
    assert time.monotonic() - sent < 3, "the command did not end at once"
    assert job.returncode == 130, out + err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "interrupted (SIGTERM) before training started" in err
    assert not list((tmp_path / "experiments").glob("smoke/*/checkpoint.pt"))
