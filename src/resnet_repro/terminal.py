"""What the training commands show: a Rich bar on a terminal, plain progress lines in a log (nohup, a
cluster's log file, CI), then the files and figures written. Nothing below the CLI prints."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import config as config_mod

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

LOG_EVERY_S = 30  # where output is a log, not a terminal: a line per run at most this often, and every evaluation


def train_and_report(cfg, restart: bool) -> None:
    from . import runner
    from .engine import is_main_process  # torch is imported only by the commands that train

    if not is_main_process():  # under torchrun only rank 0 prints and writes tables
        runner.run_experiment(cfg, restart=restart)
        return

    interactive = console.is_terminal
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=console,
                        disable=not interactive)
    task = None

    def on_run(run_cfg, run, status):
        nonlocal task
        if status in ("skip", "busy"):
            why = "finished already" if status == "skip" else "being trained by another process"
            console.print(f"{run_cfg.run.id}: {why}, skipped ({run.path})", highlight=False)
            return
        if task is not None:
            progress.remove_task(task)
        task = progress.add_task(run_cfg.run.id, total=int(run_cfg.train.iterations), status=status)
        if not interactive:
            console.print(f"{run_cfg.run.id}: {status} ({run.path})", highlight=False)

    logged: dict[str, float] = {}  # run id -> when its last line was printed (output that is not a terminal)

    def on_row(run_cfg, row):
        err = row.get("test_error")
        status = f"train {row['train_error']:.1f}%" + (f" test {err:.2f}%" if err is not None else "")
        progress.update(task, completed=row["iteration"], status=status)
        last = logged.get(run_cfg.run.id)
        if not interactive and (last is None or err is not None or time.monotonic() - last >= LOG_EVERY_S):
            console.print(runner.progress_line(run_cfg, row), highlight=False)
            logged[run_cfg.run.id] = time.monotonic()

    with progress:
        summaries = runner.run_experiment(cfg, restart=restart, on_run=on_run, on_row=on_row)
    for s in summaries:
        console.print(f"{s.run_id}: test error {s.final_test_error:.2f}% after {s.iterations_done} "
                      f"iterations ({s.profile_label}, {s.wall_s:.0f} s)", highlight=False)
    asked = {r.run.model_name for r in config_mod.expand_runs(cfg)}
    print_written(runner.finish(cfg), config_mod.runs_root(cfg), asked)


def print_written(written: list, runs_dir: Path, asked: set[str] | None = None) -> None:
    """'wrote', 'note' and 'missing' lines for the files and figures made ('missing' only for the nets in
    `asked`, where a command trained some), then a warning for each run directory with a file that cannot
    be read (the tables and figures leave that run out)."""
    from .plots import output_lines
    from .runs import load_runs, unreadable

    styles = {"wrote": "wrote {}", "note": "note: {}", "missing": "[yellow]missing:[/yellow] {}"}
    for item in written:
        for kind, text in output_lines(item, asked):
            console.print(styles[kind].format(text), highlight=False)
    for problem in unreadable(load_runs(runs_dir)):
        err_console.print(f"[yellow]warning:[/yellow] {problem}", highlight=False, soft_wrap=True)
