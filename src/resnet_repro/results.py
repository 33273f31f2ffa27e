"""Run directories: resolved config, metrics CSV, summary and checkpoint, all written atomically.

`<runs_dir>/<profile>/<run_id>/` holds `config.yaml`, `metrics.csv`, `summary.json`,
`responses.csv` (Fig. 7) and `checkpoint.pt` (not committed). A finished run is never rewritten.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .errors import UserError
from .hardware import device_name  # noqa: F401  (run summaries and bench rows name the device)

METRICS_COLUMNS = ["iteration", "epoch", "lr", "train_loss", "train_error", "test_error",
                   "test_top5_error", "images_per_s", "wall_s"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename: a reader sees the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


GIT_COMMIT_ENV = "RESNET_REPRO_GIT_COMMIT"  # for a copy of the checkout without .git (a GPU box, a container)


def git_commit() -> str:
    """The checkout's commit, `-dirty` if src/conf/pyproject differ from it; else $RESNET_REPRO_GIT_COMMIT."""
    fallback = os.environ.get(GIT_COMMIT_ENV, "unknown")
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        # "dirty" means edited code or configs; run directories and results change as runs train
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                "src", "conf", "pyproject.toml"], capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return fallback
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return fallback


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.metrics = self.path / "metrics.csv"
        self.summary_file = self.path / "summary.json"
        self.checkpoint = self.path / "checkpoint.pt"
        self.responses = self.path / "responses.csv"

    @classmethod
    def for_run(cls, runs_root: Path, cfg: DictConfig) -> RunDir:
        return cls(Path(runs_root) / cfg.profile.name / cfg.run.id)

    def summary(self) -> dict:
        if not self.summary_file.exists():
            return {}
        try:
            return json.loads(self.summary_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"unreadable {self.summary_file} ({e}); fix or delete it")

    @contextlib.contextmanager
    def lock(self, take: bool = True):
        """An exclusive lock on the run for this process; yields False if another process holds it."""
        if not take:
            yield True
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def clear(self) -> None:
        """Remove an unfinished run's files (--restart), keeping the lock file."""
        for path in (self.config, self.metrics, self.summary_file, self.checkpoint, self.responses):
            path.unlink(missing_ok=True)

    @property
    def finished(self) -> bool:
        return self.summary().get("status") == "finished"

    def write_summary(self, summary: dict) -> None:
        atomic_write_text(self.summary_file, json.dumps(summary, indent=2, sort_keys=True) + "\n")

    def write_config(self, cfg: DictConfig) -> None:
        atomic_write_text(self.config, OmegaConf.to_yaml(cfg, resolve=True))

    def write_metrics(self, rows: list[dict]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRICS_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k)) for k in METRICS_COLUMNS})
        atomic_write_text(self.metrics, buf.getvalue())

    def write_responses(self, stds: list[float]) -> None:
        lines = ["layer,std"] + [f"{i},{s:.6g}" for i, s in enumerate(stds, 1)]
        atomic_write_text(self.responses, "\n".join(lines) + "\n")

    def save_checkpoint(self, state: dict) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.checkpoint, buf.getvalue())

    def load_checkpoint(self) -> dict | None:
        if not self.checkpoint.exists():
            return None
        try:
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=False)
            if not isinstance(state, dict) or "model" not in state or "iteration" not in state:
                raise ValueError("not a resnet-repro checkpoint")
            return state
        except Exception as e:  # torch raises many types for a damaged file
            raise UserError(f"corrupt or incompatible checkpoint {self.checkpoint} ({type(e).__name__}); "
                            f"delete it or re-run with --restart")


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
