"""scripts/gpu_plan.py, dry-run on this CPU with everything shrunk: the probe writes each result as it is
measured and stays inside its time; the training call trains packs in one process, stops at its deadline
with checkpoints, and brings every run directory back in pieces that fit the device tool's limits."""

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_plan.py"


def plan(*args, out: Path, timeout: int = 120):
    return subprocess.run([sys.executable, str(SCRIPT), *args, "--dry-run"], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OUT": str(out)})


def test_the_probe_writes_every_result_as_it_goes_and_keeps_to_its_time(tmp_path):
    done = plan("probe", out=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    results = [json.loads(line) for line in (tmp_path / "probe.jsonl").read_text().splitlines()]
    checks = [r["check"] for r in results]
    assert checks[:3] == ["precision", "syncs per step", "nvjpeg race"] and checks[-1] == "done"
    # keeping to its time: a result is measured only if it starts with what it needs left of the budget,
    # and skipped only if it does not (when each starts, not how long each takes: that is the machine's)
    budget = results[0]["budget_s"]
    for r in results[1:-1]:
        needs = results[0]["speed_needs_s" if r["check"] == "images/s" else "check_needs_s"]
        assert ("skipped" in r) == (budget - r["at_s"] < needs), r
    speeds = [r for r in results if r["check"] == "images/s"]
    assert len(speeds) == 10 and all("images_per_s" in r or "skipped" in r for r in speeds)  # n 3, 9 x K 0,1,4,8,16
    measured = [r for r in speeds if "images_per_s" in r]  # on a loaded machine the short budget may allow none
    assert all(r["images_per_s"] > 0 for r in measured) and ("bench.csv" in os.listdir(tmp_path)) == bool(measured)


def test_training_stops_at_its_deadline_and_every_run_comes_back(tmp_path):
    done = plan("train", "--left", "93", out=tmp_path)  # 3 s before RETURN_S: no time for a run
    assert done.returncode == 0, done.stdout + done.stderr
    assert "not started, out of time" in (tmp_path / "train.log").read_text()

    done = plan("train", "--left", "150", out=tmp_path / "b")
    assert done.returncode == 0, done.stdout + done.stderr
    pieces = sorted((tmp_path / "b").glob("runs.tgz.*"))
    assert pieces and all(p.stat().st_size <= 15 * 2**20 for p in pieces)
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in pieces))) as tar:
        names = tar.getnames()
    finished = [n for n in names if n.endswith("summary.json")]
    assert len(finished) == 3  # two seeds packed, then the BN-64 control alone
    assert sum(n.endswith("checkpoint.pt") for n in names) == 3  # checkpoints come back too
    log = (tmp_path / "b" / "train.log").read_text()
    assert log.count("$ ") == 2 and "engine.pack=2" in log  # one process per command, the seeds packed


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10").is_dir(),
                    reason="needs ../shared/data/cifar10 (the pixel-exact CIFAR-10 and its tools)")
def test_the_committed_sha256_is_what_a_build_from_the_parts_must_match():
    lines = (SCRIPT.parent / "cifar10_lossless.sha256").read_text().splitlines()
    assert len(lines) == 7 and all(len(line.split()[0]) == 64 for line in lines)


def test_the_campaign_status_says_what_is_finished_stopped_and_queued_with_times(tmp_path):
    from rundirs import make_run

    make_run(tmp_path, "paper", "resnet20-A")  # metrics rows at 5,000 images/s, wall_s = iteration / 100
    make_run(tmp_path, "paper", "resnet32-A", status="running")  # half-way, and no process holds its lock
    status = SCRIPT.parent / "campaign_status.py"
    done = subprocess.run([sys.executable, str(status), str(tmp_path / "paper"), str(tmp_path), "model.n=3 seed=0",
                           "model.n=5 seed=0", "model.arch=plain model.n=3 seed=0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    table = [line.split() for line in done.stdout.splitlines()[1:-1]]
    # run, state, iteration, test error, images/s, trained (from the last metrics row), left
    assert table[0] == ["resnet20-A-seed0", "finished", "64,000/", "64,000", "10.00", "5000", "0.2", "h", "0.0", "h"]
    assert table[1] == ["resnet32-A-seed0", "stopped", "32,000/", "64,000", "10.00", "5000", "0.1", "h", "0.2", "h"]
    # not started: estimated from the nearest depth's speed (ResNet-20's 3x3 layers for plain-20)
    assert table[2] == ["plain20-seed0", "queued", "0/", "64,000", "-", "-", "-", "0.5", "h"]
    assert done.stdout.splitlines()[-1].startswith("left in all: 0.7 h")


@pytest.mark.slow  # half a minute: a clone, two trainings and the status calls, each its own process
def test_the_campaign_trains_its_queue_from_frozen_code_and_reports_it(tmp_path, fake_cifar):
    """`reproduce_cpu.sh paper start` with the machinery shrunk: the code frozen, a worker in the background
    training the queue's first runs in order, `status` saying when they are finished, `stop` ending only
    this campaign's processes."""
    script = SCRIPT.parent / "reproduce_cpu.sh"
    campaign = tmp_path / "campaign"
    env = {**os.environ, "CAMPAIGN": str(campaign), "PROFILE": "smoke", "DATA": str(fake_cifar), "RUNS": "2",
           "WORKERS": "1", "PYTHON": sys.executable, "STATE": str(tmp_path / "state")}  # this checkout's HEAD

    def call(*args):
        return subprocess.run(["bash", str(script), "paper", *args], env=env, capture_output=True, text=True,
                              timeout=120)

    started = call("start")
    assert started.returncode == 0 and "froze the code at" in started.stdout, started.stdout + started.stderr
    deadline = time.monotonic() + 180
    try:
        while True:
            status = call("status").stdout
            table = [line.split() for line in status.splitlines()[1:-1]]  # run, state, ...
            if all(row[1] == "finished" for row in table):
                break
            assert time.monotonic() < deadline, status + (campaign / "logs" / "worker0.log").read_text()
            time.sleep(1)
    finally:
        call("stop")
    assert [row[0] for row in table] == ["resnet20-A-seed0", "resnet32-A-seed0"]  # the queue's first two
    frozen = subprocess.run(["git", "-C", str(campaign / "code"), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(SCRIPT.parents[1]), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    assert frozen == head and (tmp_path / "state" / "code.commit").read_text().strip() == head
    for run_id in ("resnet20-A-seed0", "resnet32-A-seed0"):
        summary = json.loads((campaign / "runs" / "smoke" / run_id / "summary.json").read_text())
        assert summary["profile"] == "smoke" and summary["git_commit"].startswith(frozen[:7])
    # the paper's runs train on the pixel-exact copy only
    refused = subprocess.run(["bash", str(script), "paper", "start"], env={**env, "PROFILE": "paper"},
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "pixel-exact" in refused.stderr


def test_a_saved_campaign_starts_again_on_a_new_machine_where_it_stopped(tmp_path, fake_cifar):
    """What outlives a session's machine is committed: `paper save` packs the runs experiments/ lacks
    (unfinished, or finished and not collected) with their checkpoints beside the frozen commit, and `start`
    on a machine that never saw the campaign clones that commit, unpacks them, and takes the runs collected
    into experiments/ as finished."""
    from rundirs import make_run

    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(SCRIPT.parents[1]), str(repo)], check=True, timeout=60)
    make_run(repo / "experiments", "smoke", "resnet20-A")  # collected and committed on an earlier machine
    old, new, state = tmp_path / "old", tmp_path / "new", tmp_path / "state"
    stopped = make_run(old / "runs", "smoke", "resnet32-A", status="running")
    (stopped / "checkpoint.pt").write_bytes(b"iteration 500")
    (stopped / ".lock").touch()
    uncollected = make_run(old / "runs", "smoke", "plain20")  # finished on the old machine, never collected
    (uncollected / "checkpoint.pt").write_bytes(b"iteration 1000")
    collected = make_run(old / "runs", "smoke", "resnet20-A")  # in experiments/ already: not saved again
    (collected / "checkpoint.pt").write_bytes(b"iteration 1000")
    env = {**os.environ, "REPO": str(repo), "STATE": str(state), "PROFILE": "smoke", "DATA": str(fake_cifar),
           "RUNS": "0", "WORKERS": "1", "PYTHON": sys.executable}  # no run trained: the worker ends at once

    def call(*args, campaign):
        return subprocess.run(["bash", str(SCRIPT.parent / "reproduce_cpu.sh"), "paper", *args],
                              env={**env, "CAMPAIGN": str(campaign)}, capture_output=True, text=True, timeout=120)

    saved = call("save", campaign=old)
    assert saved.returncode == 0 and "saved plain20-seed0 resnet32-A-seed0 " in saved.stdout, saved.stdout + saved.stderr
    status = call("status", campaign=old)
    assert status.stdout.splitlines()[-1].startswith("saved for the next machine") and \
        status.stdout.splitlines()[-1].endswith(": plain20-seed0 resnet32-A-seed0"), status.stdout + status.stderr
    parent = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD~1"], capture_output=True, text=True,
                            check=True).stdout.strip()
    (state / "code.commit").write_text(parent + "\n")  # the campaign froze an older commit than this checkout's
    make_run(repo / "experiments", "smoke", "plain20")  # collected since: its saved copy is not unpacked over it

    started = call("start", campaign=new)
    assert started.returncode == 0, started.stdout + started.stderr
    frozen = subprocess.run(["git", "-C", str(new / "code"), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    assert frozen == parent
    runs = new / "runs" / "smoke"
    assert (runs / "resnet32-A-seed0" / "checkpoint.pt").read_bytes() == b"iteration 500"
    assert not (runs / "resnet32-A-seed0" / ".lock").exists()
    assert json.loads((runs / "resnet20-A-seed0" / "summary.json").read_text())["status"] == "finished"
    assert not (runs / "resnet20-A-seed0" / "checkpoint.pt").exists()  # the collected copy, not the old one
    assert not (runs / "plain20-seed0" / "checkpoint.pt").exists()
    # a state that cannot be read is one line before anything trains
    (state / "smoke-uncollected.tar").write_bytes(b"not a tar")
    broken = call("start", campaign=tmp_path / "third")
    assert broken.returncode == 2 and len(broken.stderr.splitlines()) == 1 and "remove it" in broken.stderr


PAPER_CAMPAIGN_COMMIT = "f5f3066690d75d32b84755c984c0d82cf3ffe70c"  # frozen before runs kept their precision


@pytest.mark.skipif(subprocess.run(["git", "-C", str(SCRIPT.parents[1]), "cat-file", "-e", PAPER_CAMPAIGN_COMMIT],
                                   capture_output=True).returncode != 0, reason="a shallow clone lacks that commit")
def test_frozen_code_that_would_change_a_resumed_runs_precision_does_not_start(tmp_path, fake_cifar):
    """The paper campaign's code picks `auto`'s precision by the machine a run resumes on: a run started in
    another precision is refused before anything trains (fp16 stands for one that auto never picks on a CPU)."""
    from rundirs import make_run

    repo, state, campaign = tmp_path / "repo", tmp_path / "state", tmp_path / "campaign"
    subprocess.run(["git", "clone", "-q", str(SCRIPT.parents[1]), str(repo)], check=True, timeout=60)
    state.mkdir()
    (state / "code.commit").write_text(PAPER_CAMPAIGN_COMMIT + "\n")
    started_elsewhere = make_run(campaign / "runs", "smoke", "resnet32-A", status="running", precision="fp16")
    (started_elsewhere / "checkpoint.pt").write_bytes(b"iteration 500")
    env = {**os.environ, "REPO": str(repo), "STATE": str(state), "CAMPAIGN": str(campaign), "PROFILE": "smoke",
           "DATA": str(fake_cifar), "RUNS": "0", "WORKERS": "1", "PYTHON": sys.executable}
    refused = subprocess.run(["bash", str(SCRIPT.parent / "reproduce_cpu.sh"), "paper", "start"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stdout + refused.stderr
    assert "would resume resnet32-A-seed0 (fp16, here " in refused.stderr and not (campaign / "logs").exists()
