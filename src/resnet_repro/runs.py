"""The runs table: every run directory under a runs folder as one row (`load_runs`), read through
results.py's readers, and the one order in which tables, claims and figures choose a net's runs
(`ranked_runs`). A run whose files cannot be read keeps its row, marked, so no report drops it silently.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .config import PRECISION_TAGS, recipe_overrides
from .results import CLASSES, METRICS_COLUMNS, TEST_PROTOCOLS, DataId, RunDir, Unreadable, read_run_metrics
from .spec import ModelSpec

RUN_COLUMNS = ["run_id", "path", "status", "profile", "profile_label", "full_schedule", "dataset", "data_rank",
               "paper_images", "data_note", "data_title", "classes", "model", "family",
               "arch", "depth", "shortcut", "params", "seed", "iterations", "iterations_done", "final_train_error",
               "final_test_error", "final_test_top5_error", "eval_protocol", "wall_s", "device", "variant",
               "overrides", "ensemble", "mean_response_std", "precision", "weights_sha256", "weights_bytes",
               "weights_fp32_error", "git_commit", "torch", "started", "finished",
               *(f"final_{p}_{k}" for p in TEST_PROTOCOLS for k in ("error", "top5_error")),
               "unreadable", "problem"]
_NUMERIC = ["data_rank", "classes", "depth", "params", "seed", "iterations", "iterations_done", "final_train_error",
            "final_test_error",
            "final_test_top5_error", "wall_s", "mean_response_std", "weights_fp32_error",
            *(f"final_{p}_{k}" for p in TEST_PROTOCOLS for k in ("error", "top5_error"))]


def load_runs(runs_dir: Path) -> pd.DataFrame:
    """One row per run directory `<runs_dir>/<profile>/<run_id>/`, finished or not. A run whose
    summary.json cannot be read has status "unreadable"; `unreadable` names the first damaged file of
    a run ("" if none) and `problem` says what to do."""
    rows = [_run_row(RunDir(path.parent)) for path in sorted(Path(runs_dir).glob("*/*/summary.json"))]
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
    runs[_NUMERIC] = runs[_NUMERIC].apply(pd.to_numeric, errors="coerce")
    return runs.astype({"full_schedule": bool, "ensemble": bool, "paper_images": bool})


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
                **_data_columns(DataId("")), **_model_of(run.path.name), "ensemble": False, "eval_protocol": "single",
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
        "profile_label": s.profile_label or s.profile, "full_schedule": bool(s.full_schedule), **_data_columns(s.data_id),
        "model": model.get("name", ""), "family": model.get("family", ""), "arch": model.get("arch", ""),
        "depth": model.get("depth"), "shortcut": model.get("shortcut", ""), "params": s.params, "seed": s.seed,
        "iterations": s.iterations, "iterations_done": iterations_done, "final_train_error": s.final_train_error,
        "final_test_error": s.final_test_error, "final_test_top5_error": s.final_test_top5_error,
        "eval_protocol": s.eval_protocol or "single", "wall_s": s.wall_s or 0.0, "device": s.devices,
        "variant": s.variant, "overrides": " ".join(recipe_overrides(s.overrides)), "ensemble": bool(s.ensemble),
        "mean_response_std": mean_response_std,
        "precision": s.trained_in, "weights_sha256": (s.weights or {}).get("sha256", ""),
        "weights_bytes": (s.weights or {}).get("bytes"), "weights_fp32_error": (s.weights or {}).get("fp32_test_error"),
        "git_commit": s.git_commit, "torch": s.torch, "started": s.started or "", "finished": s.finished or "",
        **{f"final_{p}_{k}": (final_eval.get(p) or {}).get(f"top{n}_error")
           for p in TEST_PROTOCOLS for k, n in (("error", 1), ("top5_error", 5))},
        **problem,
    }


def _data_columns(data: DataId) -> dict:
    return {"dataset": data.name, "data_rank": data.rank, "paper_images": data.paper_images, "data_note": data.note,
            "data_title": data.title, "classes": CLASSES.get(data.family)}


def _model_of(run_id: str) -> dict:
    try:
        spec = ModelSpec.parse(run_id.split("-seed")[0])
    except ValueError:
        return {"model": "", "family": "", "arch": "", "depth": None, "shortcut": ""}
    return {"model": spec.name, "family": spec.family, "arch": spec.arch, "depth": spec.depth,
            "shortcut": "none" if spec.arch == "plain" else spec.shortcut}


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs.status == "finished"]


def rank_profiles(runs: pd.DataFrame) -> list[str]:
    """Profiles best first: the paper's schedule on the full data, then the one covering most models,
    then the one with most runs (ties by name, so the choice is stable)."""
    if runs.empty:
        return []
    g = runs.groupby("profile").agg(full=("full_schedule", "any"), models=("model", "nunique"), n=("run_id", "size"))
    return list(g.sort_values(["full", "models", "n"], ascending=False, kind="stable").index)


def recipe_rank(variant: str) -> int:
    """0 for the paper's recipe as written, 1 for a precision control (`-fp32`: the arithmetic changes,
    not the recipe), 2 for any other variant."""
    tags = [tag for tag in variant.split("-") if tag]
    return 0 if not tags else 1 if all(tag in PRECISION_TAGS for tag in tags) else 2


def ranked_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs best first, the one order in which tables, claims and figures choose a net's runs: by
    profile (`rank_profiles`), finished before unfinished, the paper's recipe (a precision control keeps it)
    before another variant, the original pixels before a lossy copy before a subset or proxy, an untagged
    run before a precision control, then by data, variant and seed."""
    if runs.empty:
        return runs
    profile_rank = {p: i for i, p in enumerate(rank_profiles(runs))}
    recipe = runs.variant.map(recipe_rank)
    keys = runs.assign(_profile=runs.profile.map(profile_rank), _unfinished=runs.status != "finished",
                       _altered=recipe > 1, _recipe=recipe)
    keys = keys.sort_values(["_profile", "_unfinished", "_altered", "data_rank", "_recipe", "dataset", "variant",
                             "seed"], kind="stable")
    return runs.loc[keys.index]


def schedule_text(run) -> str:
    """How a run was trained, never calling a shortened or altered run the paper's."""
    if run.full_schedule:
        return run.profile_label
    if run.variant:
        return f"{run.profile_label} with overrides ({run.overrides}), not the paper's recipe"
    return f"{run.profile_label}, not the paper's schedule"


def dataset_text(run) -> str:
    """'cifar10_jpeg90 (all of cifar10, re-encoded ...)' for a run of the runs table not on the paper's data."""
    return f"{run.dataset} ({run.data_note})" if run.data_note else ""
