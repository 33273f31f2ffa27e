"""Train several CIFAR-10 depths side by side on one GPU until a deadline (a lent GPU with minutes to spare).

One process per depth (what `resnet-repro run custom model.n=N` runs, through the runner without the
CLI), all at once: a small CIFAR net leaves a big
GPU mostly idle between kernel launches, so running several overlaps their launch overheads. Every
`--check` seconds each run's finish is projected from its metrics; while some run cannot make the
deadline at its current speed, the slowest such one is stopped (SIGTERM: it checkpoints and a later
call resumes it), which speeds up the rest. At the deadline every run still going is stopped the same
way. A run that fails on its own (not stopped) is started once more with `engine.compile=false`, in case
torch.compile is what broke on this GPU's software. Finished runs are ordinary run directories: `resnet-repro report` reads them like any other.

    python scripts/reproduce_gpu.py --deadline 420 --n 3,5,7,9 [--seeds 0,1,2] --data-dir DIR [overrides ...]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from resnet_repro.config import compose_experiment, expand_runs, runs_root
from resnet_repro.errors import Interrupted, UserError
from resnet_repro.results import RunDir


def worker(overrides: list[str]) -> None:
    """One run: compose, train (resuming if checkpointed), print its metrics rows."""
    from resnet_repro.runner import run_experiment  # torch: only in the processes that train

    try:
        run_experiment(compose_experiment("custom", overrides), on_row=lambda _, row: print(row, flush=True))
    except UserError as e:
        print(f"error: {e}", flush=True)
        sys.exit(130 if isinstance(e, Interrupted) else 2)


def progress(run: RunDir) -> tuple[int, float | None]:
    """(iterations done, iterations per second over the last two metrics rows)."""
    rows = run.read_metrics()
    if len(rows) < 2:
        return (int(rows.iteration.iloc[-1]) if len(rows) else 0), None
    a, b = rows.iloc[-2], rows.iloc[-1]
    dt = b.wall_s - a.wall_s
    return int(b.iteration), (b.iteration - a.iteration) / dt if dt > 0 else None


def plan_stops(elapsed: float, deadline: float, etas: dict[str, float | None], since_last_stop: float,
               check: float, slack: float) -> tuple[list[str], str]:
    """Which running runs to stop now, and why ("deadline" or "late"). At the deadline every run stops;
    before it, only the one furthest from finishing among those that cannot make it (needing more than
    `slack` times the time left), and not sooner than two checks after the last stop, so the others
    have time to speed up first. A pure function of the clock and the projections, so tests drive it
    with made-up numbers instead of this CPU's speed."""
    left = deadline - elapsed
    if left <= 0:
        return list(etas), "deadline"
    late = [(eta, run_id) for run_id, eta in etas.items() if eta is not None and eta > slack * left]
    if late and since_last_stop >= 2 * check:
        return [max(late)[1]], "late"
    return [], ""


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        return worker(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--deadline", type=float, required=True, help="seconds from now when every run is stopped")
    p.add_argument("--n", default="3,5,7,9", help="comma-separated n (depth 6n+2)")
    p.add_argument("--arch", default="resnet")
    p.add_argument("--seeds", default="0", help="comma-separated seeds: one run per (n, seed)")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--log-dir", default="logs/gpu")
    p.add_argument("--check", type=float, default=15.0, help="seconds between projections")
    p.add_argument("--slack", type=float, default=1.2, help="stop a run only if it needs this times the time left")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every run (default profile=paper)")
    args = p.parse_args()
    overrides = args.overrides if any(o.startswith("profile=") for o in args.overrides) else ["profile=paper",
                                                                                              *args.overrides]
    start, log_dir = time.monotonic(), Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)

    jobs, commands = {}, {}  # run id -> (process, RunDir, iterations); run id -> command

    def launch(run_id: str, run: RunDir, total: int, command: list[str]) -> None:
        log = open(log_dir / f"{run_id}.log", "a")
        jobs[run_id] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), run, total)
        print(f"started {run_id}: {' '.join(command)}", flush=True)

    for n, seed in [(int(n), int(s)) for n in args.n.split(",") for s in args.seeds.split(",")]:
        run_overrides = [f"model.arch={args.arch}", f"model.n={n}", f"seed={seed}", *overrides]
        run_overrides.append(f"data_dir={args.data_dir}")
        [cfg] = expand_runs(compose_experiment("custom", run_overrides))
        commands[cfg.run.id] = [sys.executable, __file__, "--worker", *run_overrides]
        launch(cfg.run.id, RunDir.for_run(runs_root(cfg), cfg), int(cfg.train.iterations), commands[cfg.run.id])

    last_stop, stopped, retried = 0.0, set(), set()
    while any(proc.poll() is None for proc, _, _ in jobs.values()):
        time.sleep(args.check)
        elapsed = time.monotonic() - start
        left = args.deadline - elapsed
        etas = {}
        for run_id, (proc, run, total) in list(jobs.items()):
            if proc.poll() not in (None, 0) and run_id not in stopped | retried and left > 0:
                print(f"{elapsed:6.0f}s {run_id} failed (exit {proc.returncode}); again without torch.compile",
                      flush=True)
                retried.add(run_id)
                launch(run_id, run, total, [*commands[run_id], "engine.compile=false"])
            if jobs[run_id][0].poll() is not None or run_id in stopped:  # stopped: saving its checkpoint
                continue
            done, rate = progress(run)
            etas[run_id] = (total - done) / rate if rate else None
            print(f"{elapsed:6.0f}s {run_id}: {done}/{total}"
                  + (f", {rate:.1f} it/s, eta {etas[run_id]:.0f}s" if rate else ""), flush=True)
        to_stop, why = plan_stops(elapsed, args.deadline, etas, elapsed - last_stop, args.check, args.slack)
        for run_id in to_stop:
            print(f"deadline: stopping {run_id}" if why == "deadline" else
                  f"{elapsed:6.0f}s stopping {run_id}: it cannot finish in the {left:.0f}s left", flush=True)
            jobs[run_id][0].send_signal(signal.SIGTERM)
            stopped.add(run_id)
            last_stop = elapsed
        if why == "deadline":
            break
    for run_id, (proc, run, _) in jobs.items():
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        print(f"{run_id}: exit {proc.returncode}, {progress(run)[0]} iterations", flush=True)


if __name__ == "__main__":
    main()
