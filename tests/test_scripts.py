"""scripts/reproduce_gpu.py: several runs side by side until a deadline (here on the CPU, smoke sized).

The stopping rule is tested with a made-up clock (`plan_stops`); the end-to-end tests assert only what
holds on any CPU, fast or slow: finished runs are ordinary run directories, stopped ones keep a checkpoint.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_gpu.py"
spec = importlib.util.spec_from_file_location("reproduce_gpu", SCRIPT)
reproduce_gpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reproduce_gpu)
plan_stops = reproduce_gpu.plan_stops


def side_by_side(tmp_path, data, deadline, *overrides):
    command = [sys.executable, str(SCRIPT), "--deadline", str(deadline), "--check", "1", "--n", "1,2",
               "--data-dir", str(data), "--log-dir", str(tmp_path / "logs"),
               "profile=smoke", "engine.threads=1", f"runs_dir={tmp_path / 'runs'}", *overrides]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    summaries = {p.parent.name.split("-seed")[0]: json.loads(p.read_text()) for p in (tmp_path / "runs" / "smoke").glob("*/summary.json")}
    return out.stdout, summaries


def test_a_run_that_cannot_make_the_deadline_is_stopped_first_the_slowest():
    etas = {"resnet20": 50.0, "resnet56": 300.0, "resnet110": 900.0}
    assert plan_stops(100, 400, etas, since_last_stop=100, check=15, slack=1.2) == (["resnet110"], "late")


def test_runs_on_time_or_without_a_speed_yet_keep_going():
    assert plan_stops(100, 400, {"resnet20": 350.0, "resnet56": None}, 100, 15, 1.2) == ([], "")


def test_a_second_stop_waits_two_checks_for_the_others_to_speed_up():
    etas = {"resnet56": 900.0}
    assert plan_stops(100, 400, etas, since_last_stop=20, check=15, slack=1.2) == ([], "")
    assert plan_stops(100, 400, etas, since_last_stop=30, check=15, slack=1.2) == (["resnet56"], "late")


def test_at_the_deadline_every_run_still_going_is_stopped():
    assert plan_stops(401, 400, {"a": 1.0, "b": None}, 0, 15, 1.2) == (["a", "b"], "deadline")


@pytest.mark.slow
def test_runs_that_make_the_deadline_finish_as_ordinary_run_directories(tmp_path, fake_cifar):
    stdout, summaries = side_by_side(tmp_path, fake_cifar, 240)
    assert sorted(summaries) == ["resnet14-A", "resnet8-A"]
    assert all(s["status"] == "finished" and s["iterations_done"] == 6 for s in summaries.values())
    assert "resnet8-A-seed0: exit 0, 6 iterations" in stdout


@pytest.mark.slow
def test_runs_still_going_at_the_deadline_are_stopped_with_a_checkpoint(tmp_path, fake_cifar):
    # neither can finish; whether each is stopped as late or at the deadline depends on this CPU's speed
    stdout, summaries = side_by_side(tmp_path, fake_cifar, 45, "train.iterations=1000000", "engine.log_every=5",
                                     "engine.eval_every=100000", "engine.checkpoint_every=100000",
                                     "engine.compile=false")
    assert ("cannot finish" in stdout or "deadline: stopping" in stdout) and sorted(summaries) == ["resnet14-A", "resnet8-A"]
    assert "exit 130" in stdout and "exit -" not in stdout  # each stopped once, cleanly
    for s in summaries.values():
        assert s["status"] == "interrupted" and 0 < s["iterations_done"] < 1000000
        assert (tmp_path / "runs" / "smoke" / s["run_id"] / "checkpoint.pt").is_file()
