"""The run-directory format, written and read here only: `<runs_dir>/<profile>/<run_id>/` holds
`config.yaml`, `metrics.csv`, `summary.json` (a `Summary`), `responses.csv` (Fig. 7) and
`checkpoint.pt` (not committed). Writes are atomic and a finished run is never rewritten; readers
name every file they cannot read instead of dropping its run.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import io
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from .config import make_dir
from .errors import UserError
from .spec import ModelSpec

METRICS_COLUMNS = ["iteration", "epoch", "lr", "train_loss", "train_error", "test_error",
                   "test_top5_error", "images_per_s", "wall_s"]
RESPONSES_COLUMNS = ["layer", "std"]
# How a run's final model can be scored (Sec. 3.4): center crop (Fig. 4's curves), 10-crop (Tables 2, 3),
# fully-convolutional multi-scale (Table 4); summary.json's `final_eval` is keyed by these.
TEST_PROTOCOLS = ("center", "10crop", "multiscale")


@dataclass
class Summary:
    """summary.json: what a run is, where it ran and how it ended. Reads files of older versions
    (missing keys take the defaults); the fields in `_WRITTEN_WHEN_SET` are written only when set."""

    run_id: str
    status: str = "unknown"  # running | interrupted | failed | finished
    experiment: str = ""
    profile: str = ""
    profile_label: str = ""
    full_schedule: bool = False  # the paper's recipe and schedule on the full data
    dataset: str = ""
    test_split: str = ""
    train_images: int | None = None
    model: dict = field(default_factory=dict)  # family, arch, depth, shortcut, stride_on, name (ModelSpec)
    params: int | None = None
    seed: int = 0
    iterations: int | None = None
    iterations_done: int | None = None
    batch_size: int | None = None
    eval_protocol: str = "single"
    amp: bool | None = None
    amp_reason: str = ""
    compile: str = ""  # the torch.compile mode or eager, and why (train.compile: auto decides)
    wall_s: float = 0.0
    device: str = ""
    world_size: int = 1
    git_commit: str = ""
    torch: str = ""
    started: str | None = None
    finished: str | None = None
    overrides: list[str] = field(default_factory=list)
    variant: str = ""
    final_test_error: float | None = None
    final_test_top5_error: float | None = None
    final_train_error: float | None = None
    best_test_error: float | None = None
    warmup_end: int | None = None  # ResNet-110/1202: the iteration the warm-up LR ended at
    final_eval: dict | None = None  # ImageNet: protocol -> {"top1_error", "top5_error"} of the final model
    failure: str | None = None  # why a failed run stopped
    ensemble: bool = False  # Table 5: averaged scores of `members`, tested on `images` images
    members: list[str] | None = None
    images: int | None = None
    packed_with: list[str] | None = None  # train.pack: the runs trained beside it in one packed net
    input_pipeline: str = ""  # ImageNet: CPU-worker or GPU (nvJPEG) decoding, as data.decode chose

    _WRITTEN_WHEN_SET = ("final_eval", "failure", "ensemble", "members", "images", "warmup_end", "packed_with",
                         "input_pipeline")

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        for key in self._WRITTEN_WHEN_SET:
            if not d[key]:
                del d[key]
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict, run_dir: Path) -> Summary:
        """A summary as read; `run_id` and `profile` default to the run directory's names."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known and v is not None}
        values.setdefault("run_id", run_dir.name)
        values.setdefault("profile", run_dir.parent.name)
        return cls(**values)


class Unreadable(UserError):
    """A run-directory file that is damaged or cut short; the message names it and what to do."""

    def __init__(self, path: Path, why: str):
        self.path, self.why = Path(path), why
        super().__init__(f"{path} {why}: restore it from git or a backup, or delete {self.path.parent} "
                         f"to train the run again")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename: a reader sees the old file or the new, never half."""
    make_dir(path.parent)
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
CHECKOUT = Path(__file__).resolve().parents[2]


def git_commit(root: Path = CHECKOUT) -> str:
    """The checkout's commit, `-dirty` if src/conf/pyproject differ from it; else $RESNET_REPRO_GIT_COMMIT."""
    fallback = os.environ.get(GIT_COMMIT_ENV, "unknown")
    try:
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
    """One run's folder: its files' paths, the writers and the readers."""

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

    @contextlib.contextmanager
    def lock(self, take: bool = True):
        """An exclusive lock on the run for this process; yields False if another process holds it."""
        if not take:
            yield True
            return
        make_dir(self.path)
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
        summary = self.read_summary()
        return summary is not None and summary.status == "finished"

    # ------------------------------------------------------------------------------------- writers

    def write_summary(self, summary: Summary) -> None:
        atomic_write_text(self.summary_file, summary.to_json())

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
        lines = [",".join(RESPONSES_COLUMNS)] + [f"{i},{s:.6g}" for i, s in enumerate(stds, 1)]
        atomic_write_text(self.responses, "\n".join(lines) + "\n")

    def save_checkpoint(self, state: dict) -> None:
        import torch  # only checkpoints need torch: report and plot read run directories without it

        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.checkpoint, buf.getvalue())

    # ------------------------------------------------------------------------------------- readers

    def read_summary(self) -> Summary | None:
        """The summary, None before the run has written one; `Unreadable` if it is damaged."""
        if not self.summary_file.exists():
            return None
        try:
            d = json.loads(self.summary_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise Unreadable(self.summary_file, f"is not valid JSON ({e})")
        if not isinstance(d, dict):
            raise Unreadable(self.summary_file, "is not a JSON object")
        try:
            return Summary.from_dict(d, self.path)
        except TypeError as e:
            raise Unreadable(self.summary_file, f"does not hold a run summary ({e})")

    def read_metrics(self) -> pd.DataFrame:
        """metrics.csv as numbers (NaN where nothing was measured); empty when absent or header-only."""
        return _read_csv(self.metrics, METRICS_COLUMNS)

    def read_responses(self) -> pd.DataFrame:
        """Fig. 7's responses.csv (layer, std); empty when the run has none."""
        return _read_csv(self.responses, RESPONSES_COLUMNS)

    def load_checkpoint(self) -> dict | None:
        """The checkpoint dict `fit` saved (train.TrainState.to_checkpoint), None if there is none."""
        import torch

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


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    """A CSV this module wrote. Files are replaced whole, so a missing final newline or a short row
    means the file was cut or damaged afterwards: `Unreadable`, never a silently shorter table."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as e:
        raise Unreadable(path, f"cannot be read ({e})")
    if not text.strip():  # not written yet
        return pd.DataFrame(columns=columns).apply(pd.to_numeric, errors="coerce")
    lines = text.splitlines()
    width = len(lines[0].split(","))
    if not text.endswith("\n"):
        raise Unreadable(path, f"is cut short (line {len(lines)} ends without a newline)")
    ragged = next((i for i, line in enumerate(lines[1:], 2) if len(line.split(",")) != width), None)
    if ragged or columns[0] not in lines[0].split(","):
        raise Unreadable(path, f"is damaged (line {ragged or 1} does not match the header {columns})")
    df = pd.read_csv(io.StringIO(text))
    return df.reindex(columns=columns).apply(pd.to_numeric, errors="coerce")


def read_run_metrics(run: RunDir, finished_at: int | None = None) -> pd.DataFrame:
    """`RunDir.read_metrics`, checked to reach `finished_at`, the last iteration of a finished run."""
    metrics = run.read_metrics()
    if finished_at:
        last = metrics.iteration.max()
        if pd.isna(last) or last < finished_at:
            ends = "has no rows" if pd.isna(last) else f"ends at iteration {int(last)}"
            raise Unreadable(run.metrics, f"{ends}, but the run finished {int(finished_at)} iterations")
    return metrics


# ----------------------------------------------------------------------------------- the runs table

RUN_COLUMNS = ["run_id", "path", "status", "profile", "profile_label", "full_schedule", "dataset", "model", "family",
               "arch", "depth", "shortcut", "params", "seed", "iterations", "iterations_done", "final_train_error",
               "final_test_error", "final_test_top5_error", "eval_protocol", "wall_s", "device", "variant",
               "overrides", "ensemble", "mean_response_std",
               *(f"final_{p}_{k}" for p in TEST_PROTOCOLS for k in ("error", "top5_error")),
               "unreadable", "problem"]
_NUMERIC = ["depth", "params", "seed", "iterations", "iterations_done", "final_train_error", "final_test_error",
            "final_test_top5_error", "wall_s", "mean_response_std",
            *(f"final_{p}_{k}" for p in TEST_PROTOCOLS for k in ("error", "top5_error"))]


def load_runs(runs_dir: Path) -> pd.DataFrame:
    """One row per run directory `<runs_dir>/<profile>/<run_id>/`, finished or not. A run whose
    summary.json cannot be read has status "unreadable"; `unreadable` names the first damaged file of
    a run ("" if none) and `problem` says what to do."""
    rows = [_run_row(RunDir(path.parent)) for path in sorted(Path(runs_dir).glob("*/*/summary.json"))]
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
    runs[_NUMERIC] = runs[_NUMERIC].apply(pd.to_numeric, errors="coerce")
    return runs.astype({"full_schedule": bool, "ensemble": bool})


def unreadable(runs: pd.DataFrame) -> list[str]:
    """One line per run with a damaged file: the file, what is wrong, what to do."""
    return runs.problem[runs.unreadable != ""].tolist()


def _run_row(run: RunDir) -> dict:
    problems: list[Unreadable] = []
    try:
        s = run.read_summary()
    except Unreadable as e:
        problems.append(e)
        s = None
    try:
        done = s is not None and s.status == "finished" and not s.ensemble
        metrics = read_run_metrics(run, s.iterations_done if done else None)
    except Unreadable as e:
        problems.append(e)
        metrics = pd.DataFrame(columns=METRICS_COLUMNS)
    try:
        mean_response_std = run.read_responses()["std"].mean()
    except Unreadable as e:
        problems.append(e)
        mean_response_std = None
    first = problems[0] if problems else None
    problem = {"unreadable": first.path.name if first else "", "problem": str(first) if first else ""}
    if s is None:  # only the folder's names are known: the net from the run id, if it is one of ours
        return {"run_id": run.path.name, "path": str(run.path), "status": "unreadable",
                "profile": run.path.parent.name, "profile_label": run.path.parent.name, "full_schedule": False,
                "dataset": "", **_model_of(run.path.name), "ensemble": False, "eval_protocol": "single",
                "wall_s": 0.0, "variant": "", "overrides": "", "device": "", **problem}
    model = s.model or {}
    final_eval = dict(s.final_eval or {})
    if s.status == "finished" and s.eval_protocol in TEST_PROTOCOLS:  # the curves' own protocol
        final_eval.setdefault(s.eval_protocol, {"top1_error": s.final_test_error,
                                                "top5_error": s.final_test_top5_error})
    logged = metrics.iteration.max()
    iterations_done = s.iterations_done
    if s.status != "finished" and pd.notna(logged):  # a running run rewrites summary.json only when it stops
        iterations_done = max(iterations_done or 0, int(logged))
    return {
        "run_id": s.run_id, "path": str(run.path), "status": s.status, "profile": s.profile,
        "profile_label": s.profile_label or s.profile, "full_schedule": bool(s.full_schedule), "dataset": s.dataset,
        "model": model.get("name", ""), "family": model.get("family", ""), "arch": model.get("arch", ""),
        "depth": model.get("depth"), "shortcut": model.get("shortcut", ""), "params": s.params, "seed": s.seed,
        "iterations": s.iterations, "iterations_done": iterations_done, "final_train_error": s.final_train_error,
        "final_test_error": s.final_test_error, "final_test_top5_error": s.final_test_top5_error,
        "eval_protocol": s.eval_protocol or "single", "wall_s": s.wall_s or 0.0, "device": s.device,
        "variant": s.variant, "overrides": " ".join(s.overrides), "ensemble": bool(s.ensemble),
        "mean_response_std": mean_response_std,
        **{f"final_{p}_{k}": (final_eval.get(p) or {}).get(f"top{n}_error")
           for p in TEST_PROTOCOLS for k, n in (("error", 1), ("top5_error", 5))},
        **problem,
    }


def _model_of(run_id: str) -> dict:
    try:
        spec = ModelSpec.parse(run_id.split("-seed")[0])
    except ValueError:
        return {"model": "", "family": "", "arch": "", "depth": None, "shortcut": ""}
    return {"model": spec.name, "family": spec.family, "arch": spec.arch, "depth": spec.depth,
            "shortcut": "none" if spec.arch == "plain" else spec.shortcut}


# ------------------------------------------------------------------- what the runs table says of a run

FULL_DATASETS = {"cifar10", "imagenet"}  # anything else is a bundled sample, a proxy or a lossy copy


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs.status == "finished"]


def rank_profiles(runs: pd.DataFrame) -> list[str]:
    """Profiles best first: the paper's schedule on the full data, then the one covering most models,
    then the one with most runs (ties by name, so the choice is stable)."""
    if runs.empty:
        return []
    g = runs.groupby("profile").agg(full=("full_schedule", "any"), models=("model", "nunique"), n=("run_id", "size"))
    return list(g.sort_values(["full", "models", "n"], ascending=False, kind="stable").index)


def schedule_text(run) -> str:
    """How a run was trained, never calling a shortened or altered run the paper's."""
    if run.full_schedule:
        return run.profile_label
    if run.variant:
        return f"{run.profile_label} with overrides ({run.overrides}), not the paper's recipe"
    return f"{run.profile_label}, not the paper's schedule"


def dataset_note(dataset: str) -> str:
    """How `dataset` differs from the paper's data ("" where it does not)."""
    if dataset in FULL_DATASETS:
        return ""
    family, _, encoding = dataset.partition("_")
    if family in FULL_DATASETS and encoding.startswith("jpeg"):  # data.encoding: every image, lossy pixels
        return f"all of {family}, re-encoded as JPEG quality {encoding[4:]}: not the original pixels"
    return "not the paper's full data"


def dataset_text(dataset: str) -> str:
    return f"{dataset} ({dataset_note(dataset)})" if dataset_note(dataset) else ""
