"""The run-directory format, written and read here only: `<runs_dir>/<profile>/<run_id>/` holds
`config.yaml`, `metrics.csv`, `summary.json` (a `Summary`, with the data's `DataId`), `responses.csv`
(Fig. 7) and `checkpoint.pt` (not committed). Writes are atomic and a finished run is never rewritten;
readers name every file they cannot read instead of dropping its run. runs.py reads them all into one table.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
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
from .errors import UserError, WriteFailed

METRICS_COLUMNS = ["iteration", "epoch", "lr", "train_loss", "train_error", "test_error",
                   "test_top5_error", "images_per_s", "wall_s"]
RESPONSES_COLUMNS = ["layer", "std"]
# How a run's final model can be scored (Sec. 3.4): center crop (Fig. 4's curves), 10-crop (Tables 2, 3),
# fully-convolutional multi-scale (Table 4); summary.json's `final_eval` is keyed by these.
TEST_PROTOCOLS = ("center", "10crop", "multiscale")

PAPER_DATA = {"cifar10": "CIFAR-10", "imagenet": "ImageNet"}  # the paper's images, as titles name them
OTHER_DATA = {"imagenette": "Imagenette"}
CLASSES = {"cifar10": 10, "imagenet": 1000, "imagenette": 10}


@dataclass(frozen=True)
class DataId:
    """Which images a run trained and tested on: their `family` (cifar10, imagenet, imagenette), a `subset`
    or proxy of them ("" for all, "sample", "64px_proxy") and their `encoding` ("original", or a lossy copy
    such as "jpeg90"). summary.json keeps these fields; `name` is how tables and figures name the data."""

    family: str
    subset: str = ""
    encoding: str = "original"

    @property
    def name(self) -> str:
        """cifar10, cifar10_sample, cifar10_jpeg90, imagenette_64px_proxy, ..."""
        lossy = "" if self.encoding == "original" else self.encoding
        return "_".join(part for part in (self.family, self.subset, lossy) if part)

    @classmethod
    def from_name(cls, name: str) -> DataId:
        """The fields of a summary written before they were stored: its `dataset` name read back."""
        family, _, rest = name.partition("_")
        if rest.startswith("jpeg"):
            return cls(family, "", rest)
        return cls(family, rest)

    @property
    def paper_images(self) -> bool:
        """Every image of the paper's data (maybe re-encoded): a gap to the paper compares like with like."""
        return self.family in PAPER_DATA and not self.subset

    @property
    def original(self) -> bool:
        """The paper's data itself: every image, the original pixels."""
        return self.paper_images and self.encoding == "original"

    @property
    def rank(self) -> int:
        """The original first, then a lossy copy of every image, then a subset or a proxy."""
        return 0 if self.original else 1 if self.paper_images else 2

    @property
    def note(self) -> str:
        """How the data differs from the paper's ("" where it does not)."""
        if self.original:
            return ""
        if self.paper_images and self.encoding.startswith("jpeg"):
            return f"all of {self.family}, re-encoded as JPEG quality {self.encoding[4:]}: not the original pixels"
        return "not the paper's full data"

    @property
    def title(self) -> str:
        """'CIFAR-10', 'CIFAR-10 re-encoded as JPEG q90', 'Imagenette 64 px proxy'."""
        name = PAPER_DATA.get(self.family) or OTHER_DATA.get(self.family, self.family)
        if self.encoding.startswith("jpeg"):
            return f"{name} re-encoded as JPEG q{self.encoding[4:]}"
        return " ".join([name, *self.subset.replace("px", " px").split("_")]).strip()


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
    dataset: str = ""  # the data's name (DataId.name), as tables show it
    data: dict = field(default_factory=dict)  # the data's DataId fields; `dataset` read back for older summaries
    test_split: str = ""
    train_images: int | None = None
    model: dict = field(default_factory=dict)  # family, arch, depth, shortcut, stride_on, name (ModelSpec)
    params: int | None = None
    seed: int = 0
    iterations: int | None = None
    iterations_done: int | None = None
    batch_size: int | None = None
    eval_protocol: str = "single"
    amp: bool | None = None  # autocast on (bf16 or fp16)
    precision: str = ""  # bf16 | fp16 | tf32 | fp32, as engine.precision chose; "" in summaries before it existed
    amp_reason: str = ""  # why that precision
    compile: str = ""  # the torch.compile mode or eager, and why (engine.compile: auto decides)
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
    packed_with: list[str] | None = None  # engine.pack: the runs trained beside it in one packed net
    input_pipeline: str = ""  # ImageNet: CPU-worker or GPU (nvJPEG) decoding, as engine.decode chose
    weights: dict | None = None  # a finished CIFAR-10 run's committed weights: file, sha256, bytes, fp32 error (weights.py)
    # a run resumed elsewhere: from_iteration, device, world_size, precision, git_commit, torch of each stretch
    # (`device`, `git_commit`, `torch` above are the last stretch's); None: one stretch from iteration 0
    trained_on: list[dict] | None = None

    _WRITTEN_WHEN_SET = ("final_eval", "failure", "ensemble", "members", "images", "warmup_end", "packed_with",
                         "input_pipeline", "data", "precision", "weights", "trained_on")

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
        if not values.get("data") and values.get("dataset"):
            values["data"] = dataclasses.asdict(DataId.from_name(values["dataset"]))
        return cls(**values)

    @property
    def trained_in(self) -> str:
        """The precision it trained and scored in (summaries from before `precision` kept only `amp`)."""
        return self.precision or ("bf16" if self.amp else "fp32")

    @property
    def devices(self) -> str:
        """Where it trained: its device, or each stretch's where it moved ("A from 0; B from 40,000")."""
        stretches = self.trained_on or []
        if len({t["device"] for t in stretches}) < 2 and (not stretches or stretches[0]["from_iteration"] == 0):
            return self.device
        earlier = "" if stretches[0]["from_iteration"] == 0 else "unrecorded from 0; "
        return earlier + "; ".join(f"{t['device']} from {t['from_iteration']:,}" for t in stretches)

    @property
    def data_id(self) -> DataId:
        return DataId(**self.data) if self.data else DataId(self.dataset)


class Unreadable(UserError):
    """A run-directory file that is damaged or cut short; the message names it and what to do."""

    def __init__(self, path: Path, why: str):
        self.path, self.why = Path(path), why
        super().__init__(f"{path} {why}: restore it from git or a backup, or delete {self.path.parent} "
                         f"to train the run again")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename: a reader sees the old file or the new, never half. A
    write that fails (full disk, read-only folder) is `WriteFailed`, the old file left whole."""
    make_dir(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise WriteFailed(write_failure(path, e)) from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: str | None) -> None:
    if tmp is not None:
        Path(tmp).unlink(missing_ok=True)


def write_failure(path: Path, error: OSError) -> str:
    """One line: the file, why it could not be written, and what to do."""
    why = {errno.ENOSPC: "no space left on its disk", errno.EDQUOT: "the disk quota is used up",
           errno.EROFS: "its file system is read-only", errno.EACCES: "permission denied",
           errno.EPERM: "permission denied"}.get(error.errno, error.strerror or type(error).__name__)
    return (f"cannot write {path}: {why}; free space or make the folder writable (or give another --results-dir "
            f"or --runs-dir), then run the same command again: finished runs and the last checkpoint are kept")


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
        self.weights = self.path / "weights.pt"  # a finished CIFAR-10 run's, committed (weights.py)
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
        try:
            f = open(self.path / ".lock", "w")  # held open for the whole block below
        except OSError as e:
            raise WriteFailed(write_failure(self.path / ".lock", e)) from None
        with f:
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

    def checkpoint_iteration(self) -> int:
        """The iteration the run's checkpoint holds (0 without one)."""
        state = self.load_checkpoint()
        return int(state["iteration"]) if state else 0

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
