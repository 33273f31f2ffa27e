"""What the commands show: an error as one line and an exit code, never a traceback; while training, a Rich
bar on a terminal or plain progress lines in a log (nohup, a cluster's log file, CI); then the files and
figures written. Nothing below the CLI prints."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import config as config_mod
from .errors import Interrupted, UserError
from .signals import Signalled

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

def friendly_errors(fn: Callable) -> Callable:
    """User errors become one line on stderr and a non-zero exit, never a traceback."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            result = fn(*args, **kwargs)
            _end_process_group(together=True)
            return result
        except (Interrupted, Signalled) as e:
            err_console.print(f"[yellow]{e}[/yellow]", highlight=False, soft_wrap=True)
            raise typer.Exit(130)
        except UserError as e:
            err_console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        finally:
            _end_process_group()

    return wrapper


def _end_process_group(together: bool = False) -> None:
    """Under torchrun, end the process group before the process exits, after a good run all ranks at
    once (rank 0 writes the reports last): a rank leaving while a peer still holds the group can abort
    ("terminate called without an active exception")."""
    dist = sys.modules.get("torch.distributed")  # never imported: nothing to end, and no torch import
    if dist is not None and dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


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
