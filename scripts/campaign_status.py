"""What the paper-schedule CPU campaign has done, is doing and has left (`reproduce_cpu.sh paper status`).

    python scripts/campaign_status.py RUNS_DIR DATA_DIR "model.n=3 seed=0" "model.n=5 seed=0" ...

RUNS_DIR is the campaign's runs/<profile>/ (runs/paper/), DATA_DIR the workers' --data-dir; each further argument is one run's overrides, in queue order.
A run is "running" while a process holds its lock; the time left is its remaining iterations at the speed
of its last ten metrics rows (the median), and a run not started yet is estimated from the nearest depth that has rows
(time per iteration grows with the number of 3x3 layers).
"""

from __future__ import annotations

import csv
import fcntl
import signal
import statistics
import sys
from pathlib import Path

from resnet_repro.config import compose_experiment, expand_runs
from resnet_repro.results import RunDir


def held(lock: Path) -> bool:
    if not lock.exists():
        return False
    with open(lock) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def main(runs_dir: Path, data_dir: Path, queue: list[str]) -> None:
    planned = []
    for overrides in queue:  # composed as the workers compose them, so the run ids are theirs
        (cfg,) = expand_runs(compose_experiment("custom", [f"profile={runs_dir.name}", f"data_dir={data_dir}",
                                                           *overrides.split()]))
        planned.append((cfg.run.id, int(cfg.run.depth), int(cfg.train.iterations), int(cfg.train.batch_size)))
    s_per_iter_by_depth = {}
    for run_id, depth, _, batch in planned:
        r = rows(runs_dir / run_id / "metrics.csv")[1:][-10:]  # the first row holds the compile
        if r:  # the median: a row that spans a pause or a busy minute must not set the estimate
            s_per_iter_by_depth.setdefault(depth, statistics.median(batch / float(x["images_per_s"]) for x in r))
    total_left = 0.0
    print(f"{'run':<24} {'state':<12} {'iteration':>15} {'test err':>8} {'img/s':>6} {'trained':>8} {'left':>8}")
    for run_id, depth, iterations, _ in planned:
        path = runs_dir / run_id
        summary = RunDir(path).read_summary()
        r = rows(path / "metrics.csv")
        done = int(r[-1]["iteration"]) if r else 0
        tested = [x["test_error"] for x in r if x.get("test_error")]
        recent = r[1:][-10:]
        speed = statistics.median(float(x["images_per_s"]) for x in recent) if recent else None
        if summary is not None and summary.status == "finished":
            state, left = "finished", 0.0
        else:
            state = "running" if held(path / ".lock") else ("stopped" if r else "queued")
            known = s_per_iter_by_depth.get(depth) or next(
                (s * (depth - 2) / (d - 2) for d, s in sorted(s_per_iter_by_depth.items(), key=lambda kv: abs(kv[0] - depth))), None)
            left = (iterations - done) * known if known else float("nan")
        total_left += left if left == left else 0.0
        trained = hours(float(r[-1]["wall_s"])) if r else "-"  # the summary's wall_s is only as of the last start
        print(f"{run_id:<24} {state:<12} {done:>7,}/{iterations:>7,} {f'{float(tested[-1]):.2f}' if tested else '-':>8} "
              f"{f'{speed:.0f}' if speed else '-':>6} {trained:>8} {hours(left) if left == left else '?':>8}")
    print(f"left in all: {hours(total_left)} of one core's time (divide by the workers running)")


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `status | head` ends quietly, as other commands do
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
