"""scripts/reproduce_gpu.py: several runs side by side until a deadline (here on the CPU, smoke sized)."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_gpu.py"


def side_by_side(tmp_path, data, deadline, *overrides):
    command = [sys.executable, str(SCRIPT), "--deadline", str(deadline), "--check", "1", "--n", "1,2",
               "--data-dir", str(data), "--log-dir", str(tmp_path / "logs"),
               "profile=smoke", "train.threads=1", f"runs_dir={tmp_path / 'runs'}", *overrides]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    summaries = {p.parent.name.split("-seed")[0]: json.loads(p.read_text()) for p in (tmp_path / "runs" / "smoke").glob("*/summary.json")}
    return out.stdout, summaries


def test_runs_that_make_the_deadline_finish_as_ordinary_run_directories(tmp_path, fake_cifar):
    stdout, summaries = side_by_side(tmp_path, fake_cifar, 240)
    assert sorted(summaries) == ["resnet14-A", "resnet8-A"]
    assert all(s["status"] == "finished" and s["iterations_done"] == 6 for s in summaries.values())
    assert "resnet8-A-seed0: exit 0, 6 iterations" in stdout


def test_runs_still_going_at_the_deadline_are_stopped_with_a_checkpoint(tmp_path, fake_cifar):
    # neither can finish: each is stopped once its speed is known (or at the deadline, if never known)
    stdout, summaries = side_by_side(tmp_path, fake_cifar, 60, "train.iterations=1000000", "train.log_every=50",
                                     "train.eval_every=100000", "train.checkpoint_every=100000")
    assert "cannot finish" in stdout and sorted(summaries) == ["resnet14-A", "resnet8-A"]
    assert "exit 130" in stdout and "exit -" not in stdout  # each stopped once, cleanly
    for s in summaries.values():
        assert s["status"] == "interrupted" and 0 < s["iterations_done"] < 1000000
        assert (tmp_path / "runs" / "smoke" / s["run_id"] / "checkpoint.pt").is_file()
