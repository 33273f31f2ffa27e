"""Tables 2-6 and results/README.md, reduced from run directories and set beside the paper's numbers.

Our numbers come only from `<runs_dir>/<profile>/<run_id>/` (summary.json, metrics.csv, responses.csv);
the paper's come only from paper.py. Every row names its profile, so a shortened, sample or proxy run
is never read as the paper's schedule.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from . import paper
from .results import METRICS_COLUMNS

RUN_COLUMNS = ["run_id", "path", "status", "profile", "profile_label", "full_schedule", "dataset", "model", "family",
               "arch", "depth", "shortcut", "params", "seed", "iterations", "iterations_done", "final_train_error",
               "final_test_error", "final_test_top5_error", "eval_protocol", "wall_s", "device", "variant",
               "overrides", "ensemble", "mean_response_std"]
_NUMERIC = ["depth", "params", "seed", "iterations", "iterations_done", "final_train_error", "final_test_error",
            "final_test_top5_error", "wall_s", "mean_response_std"]
# ImageNet runs test their final model once more under each protocol of data.final_protocols
# (summary.json "final_eval"): 10-crop for Tables 2 and 3, multi-scale for Table 4.
FINAL_PROTOCOLS = ("center", "10crop", "multiscale")
_FINAL = [f"final_{p}_{k}" for p in FINAL_PROTOCOLS for k in ("error", "top5_error")]
RUN_COLUMNS += _FINAL
_NUMERIC += _FINAL
FULL_DATASETS = {"cifar10", "imagenet"}  # anything else is a bundled sample or a proxy
CIFAR_DEPTHS = (20, 32, 44, 56, 110)
# ImageNet experiments belong to the ImageNet side; these are the commands a missing row points to.
IMAGENET_COMMANDS = {name: f"resnet-repro run {name}" for name in ("table2", "table3", "table4", "table5", "fig4")}


# ---------------------------------------------------------------------------------------------- runs


def load_runs(runs_dir: Path) -> pd.DataFrame:
    """One row per run directory `<runs_dir>/<profile>/<run_id>/summary.json`, finished or not."""
    rows = []
    for path in sorted(Path(runs_dir).glob("*/*/summary.json")):
        try:
            s = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # summaries are written atomically: an unreadable one is not a run of ours
        model = s.get("model") or {}
        final_eval = dict(s.get("final_eval") or {})
        if s.get("status") == "finished" and s.get("eval_protocol") in FINAL_PROTOCOLS:  # the curves' own protocol
            final_eval.setdefault(s["eval_protocol"], {"top1_error": s.get("final_test_error"),
                                                       "top5_error": s.get("final_test_top5_error")})
        rows.append({
            "run_id": s.get("run_id", path.parent.name), "path": str(path.parent),
            "status": s.get("status", "unknown"), "profile": s.get("profile", path.parent.parent.name),
            "profile_label": s.get("profile_label") or s.get("profile", path.parent.parent.name),
            "full_schedule": bool(s.get("full_schedule", False)), "dataset": s.get("dataset", ""),
            "model": model.get("name", ""), "family": model.get("family", ""), "arch": model.get("arch", ""),
            "depth": model.get("depth"), "shortcut": model.get("shortcut", ""), "params": s.get("params"),
            "seed": s.get("seed", 0), "iterations": s.get("iterations"), "iterations_done": _iterations_done(s, path),
            "final_train_error": s.get("final_train_error"), "final_test_error": s.get("final_test_error"),
            "final_test_top5_error": s.get("final_test_top5_error"),
            "eval_protocol": s.get("eval_protocol") or "single", "wall_s": s.get("wall_s") or 0.0,
            "device": s.get("device", ""), "variant": s.get("variant") or "",
            "overrides": " ".join(s.get("overrides") or []), "ensemble": bool(s.get("ensemble", False)),
            "mean_response_std": load_responses(path.parent)["std"].mean(),
            **{f"final_{p}_{k}": (final_eval.get(p) or {}).get(f"top{n}_error")
               for p in FINAL_PROTOCOLS for k, n in (("error", 1), ("top5_error", 5))},
        })
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
    runs[_NUMERIC] = runs[_NUMERIC].apply(pd.to_numeric, errors="coerce")
    return runs.astype({"full_schedule": bool, "ensemble": bool})


def _iterations_done(summary: dict, path: Path):
    """A running run rewrites summary.json only when it stops; its metrics rows say how far it is."""
    done = summary.get("iterations_done")
    if summary.get("status") == "finished":
        return done
    logged = load_metrics(path.parent).iteration.max()
    return max(done or 0, int(logged)) if pd.notna(logged) else done


def load_metrics(run_dir: Path) -> pd.DataFrame:
    """metrics.csv as numbers (NaN where nothing was measured); empty when absent or header-only."""
    return _read_csv(Path(run_dir) / "metrics.csv", METRICS_COLUMNS)


def load_responses(run_dir: Path) -> pd.DataFrame:
    """Fig. 7's responses.csv (layer, std); empty when the run has none."""
    return _read_csv(Path(run_dir) / "responses.csv", ["layer", "std"])


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        df = pd.DataFrame(columns=columns)
    return df.reindex(columns=columns).apply(pd.to_numeric, errors="coerce")


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


def pretty(model: str) -> str:
    """'plain56' -> 'plain-56', 'resnet34-B' -> 'ResNet-34 B', 'resnet20-A' -> 'ResNet-20'."""
    m = re.fullmatch(r"(plain|resnet)(\d+)(?:-([ABC]))?(?:-(v1\.5))?", model)
    if not m:
        return model
    arch, depth, shortcut, stride = m.groups()
    if arch == "plain":
        return f"plain-{depth}"
    return f"ResNet-{depth}" + (f" {shortcut}" if shortcut and shortcut != "A" else "") + (" v1.5" if stride else "")


def cifar_command(model: str, profile: str | None = None) -> str:
    """The command that trains one CIFAR-10 net, e.g. `resnet-repro sweep cifar --n 9 --arch plain`."""
    if model == "resnet1202-A":
        return with_profile("resnet-repro run resnet1202", profile)
    arch, depth = re.match(r"(plain|resnet)(\d+)", model).groups()
    return with_profile(f"resnet-repro sweep cifar --n {(int(depth) - 2) // 6} --arch {arch}", profile)


def with_profile(command: str, profile: str | None) -> str:
    return command if profile in (None, "paper") else f"{command} profile={profile}"


# -------------------------------------------------------------------------------------------- tables


class Metric(NamedTuple):
    key: str  # column prefix in the CSV
    column: str  # summary field it is read from


TOP1 = Metric("top1", "final_test_error")
TOP5 = Metric("top5", "final_test_top5_error")
ERROR = Metric("error", "final_test_error")


def build_table(
    runs: pd.DataFrame,
    metrics: list[Metric],
    paper_rows: dict,
    quoted: dict,
    command: Callable[[str, str | None], str | None],
    extras: bool = True,
    paper_mean_std: dict | None = None,
    paper_params: dict | None = None,
) -> pd.DataFrame:
    """Quoted rows, then one row per paper model (ours grouped by profile, dataset and variant, or a
    `missing` row), then models the paper's table does not have. `runs` holds this table's runs only."""
    rows = [_quoted_row(name, values, metrics) for name, values in quoted.items()]
    done = finished(runs)
    profiles = rank_profiles(done)
    for model, values in paper_rows.items():
        paper_values = values if isinstance(values, tuple) else (values,)
        groups = _our_rows(done[done.model == model], metrics)
        if not groups:
            cmd = command(model, profiles[0] if profiles else None)
            groups = [_missing_row(model, runs[runs.model == model], cmd, (paper_params or {}).get(model))]
        for row in groups:
            for metric, value in zip(metrics, paper_values):
                row[f"paper_{metric.key}"] = value
                row[f"diff_{metric.key}"] = _diff(row.get(f"{metric.key}_best"), value)
            if paper_mean_std and model in paper_mean_std:
                row[f"paper_{metrics[0].key}_mean"], row[f"paper_{metrics[0].key}_std"] = paper_mean_std[model]
            rows.append(row)
    if extras:
        others = done[~done.model.isin(list(paper_rows))].sort_values(["arch", "depth", "model"])
        for model in dict.fromkeys(others.model):
            for row in _our_rows(others[others.model == model], metrics):
                row["note"] = "; ".join(filter(None, ["not in the paper's table", row["note"]]))
                rows.append(row)
    columns = ["model", "params", "n_runs", "seeds"]
    for m in metrics:
        columns += [f"{m.key}_best", f"{m.key}_mean", f"{m.key}_std", f"paper_{m.key}", f"diff_{m.key}"]
        if paper_mean_std and m is metrics[0]:
            columns += [f"paper_{m.key}_mean", f"paper_{m.key}_std"]
    columns += ["profile", "profile_label", "full_schedule", "dataset", "eval_protocol", "note"]
    return pd.DataFrame(rows, columns=columns).astype({"params": "Int64", "n_runs": "Int64"})


def _our_rows(runs: pd.DataFrame, metrics: list[Metric]) -> list[dict]:
    """One row per (profile, dataset, variant) group of one model's finished runs, paper schedule first."""
    rows = []
    order = runs.assign(_rank=~runs.full_schedule).sort_values(["_rank", "profile", "dataset", "variant"])
    for _, g in order.groupby(["profile", "dataset", "variant"], sort=False):
        first = g.iloc[0]
        row = {"model": first.model, "params": first.params, "n_runs": len(g),
               "seeds": " ".join(str(int(s)) for s in sorted(g.seed)), "profile": first.profile,
               "profile_label": schedule_text(first), "full_schedule": bool(first.full_schedule),
               "dataset": first.dataset,
               "eval_protocol": " ".join(sorted(set(g.eval_protocol))),
               "note": f"variant {first.variant}" if first.variant else ""}
        for m in metrics:
            values = g[m.column].dropna()
            row[f"{m.key}_best"] = values.min() if len(values) else None
            row[f"{m.key}_mean"] = values.mean() if len(values) else None
            row[f"{m.key}_std"] = values.std(ddof=1) if len(values) > 1 else None
        rows.append(row)
    return rows


def _quoted_row(name: str, values, metrics: list[Metric]) -> dict:
    values = values if isinstance(values, tuple) else (values,)
    return {"model": name, "note": "quoted", **{f"paper_{m.key}": v for m, v in zip(metrics, values)}}


def _missing_row(model: str, unfinished: pd.DataFrame, command: str | None, params: int | None) -> dict:
    note = "missing" + (f": `{command}`" if command else "")
    if len(unfinished):
        note += " (unfinished: " + ", ".join(
            f"{r.run_id} {r.status} {_int(r.iterations_done)}/{_int(r.iterations)} it" for r in unfinished.itertuples()
        ) + ")"
    return {"model": model, "params": params, "n_runs": 0, "note": note}


def _diff(ours, theirs):
    return None if ours is None or theirs is None or pd.isna(ours) else ours - theirs


def _int(value) -> str:
    return "?" if pd.isna(value) else str(int(value))


def _imagenet(runs: pd.DataFrame, protocol: str) -> tuple[pd.DataFrame, list[Metric]]:
    """ImageNet runs tested under `protocol`, and the metrics that read those numbers."""
    scope = (runs.family == "imagenet") & ~runs.ensemble & runs[f"final_{protocol}_error"].notna()
    metrics = [TOP1._replace(column=f"final_{protocol}_error"), TOP5._replace(column=f"final_{protocol}_top5_error")]
    return runs[scope].assign(eval_protocol=protocol), metrics


def table2(runs: pd.DataFrame) -> pd.DataFrame:
    ours, (top1, _) = _imagenet(runs, "10crop")
    return build_table(ours, [top1], paper.TABLE2_TOP1, {},
                       lambda _m, p: with_profile(IMAGENET_COMMANDS["table2"], p), extras=False)


def table3(runs: pd.DataFrame) -> pd.DataFrame:
    ours, metrics = _imagenet(runs, "10crop")
    return build_table(ours, metrics, paper.TABLE3, paper.TABLE3_QUOTED,
                       lambda _m, p: with_profile(IMAGENET_COMMANDS["table3"], p))


def table4(runs: pd.DataFrame) -> pd.DataFrame:
    ours, metrics = _imagenet(runs, "multiscale")
    return build_table(ours, metrics, paper.TABLE4, paper.TABLE4_QUOTED,
                       lambda _m, p: with_profile(IMAGENET_COMMANDS["table4"], p))


def table5(runs: pd.DataFrame) -> pd.DataFrame:
    return build_table(runs[runs.ensemble], [TOP5], paper.TABLE5_TOP5, paper.TABLE5_QUOTED,
                       lambda _m, p: with_profile(IMAGENET_COMMANDS["table5"], p))


def table6(runs: pd.DataFrame) -> pd.DataFrame:
    params = {m: paper.CIFAR_PARAMS[(int(re.search(r"\d+", m).group()) - 2) // 6] for m in paper.TABLE6}
    return build_table(runs[(runs.family == "cifar") & ~runs.ensemble], [ERROR], paper.TABLE6, paper.TABLE6_QUOTED,
                       cifar_command, paper_mean_std=paper.TABLE6_MEAN_STD, paper_params=params)


# name -> (title, builder). Table 1 (architectures) is the ImageNet side's: register it here as
# TABLES["table1"] = (title, builder) and write_tables picks it up.
TABLES: dict[str, tuple[str, Callable[[pd.DataFrame], pd.DataFrame]]] = {
    "table2": ("Table 2: ImageNet top-1 error (%), plain vs ResNet (option A); the paper tests with 10 crops",
               table2),
    "table3": ("Table 3: ImageNet error (%), top-1 and top-5; the paper tests with 10 crops", table3),
    "table4": ("Table 4: single-model ImageNet error (%), multi-scale testing", table4),
    "table5": ("Table 5: ensembles, ImageNet top-5 error (%); the paper's is on the test server", table5),
    "table6": ("Table 6: CIFAR-10 test error (%)", table6),
}


def write_tables(runs_dir: Path, results_dir: Path, tables: list[str] | None = None) -> list[Path]:
    """tableN.csv and tableN.md in `results_dir` for each requested table (default: all registered).
    Names with no registered builder (e.g. table1 until the ImageNet side adds it) are skipped."""
    runs = load_runs(runs_dir)
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in tables or list(TABLES):
        if name not in TABLES:
            if name == "table1":  # architectures, counted from the built models: no runs needed
                from .imagenet import write_table1

                paths += write_table1(results_dir)
            continue
        title, build = TABLES[name]
        table = build(runs)
        csv_path, md_path = results_dir / f"{name}.csv", results_dir / f"{name}.md"
        table.to_csv(csv_path, index=False, float_format="%.4g")
        md_path.write_text(table_markdown(title, table, runs))
        paths += [csv_path, md_path]
    return paths


def table_markdown(title: str, table: pd.DataFrame, runs: pd.DataFrame) -> str:
    """Ours beside the paper's, one cell per metric as the paper writes Table 6: best (mean±std, n).
    A table without our usual columns (e.g. a registered Table 1) is written as it is."""
    if not {"n_runs", "profile_label"} <= set(table.columns):
        body = [[_text(v) for v in row] for row in table.itertuples(index=False)]
        return "\n".join([f"# {title}", "", *_grid(list(table.columns), body, right=set())]) + "\n"
    metrics = [c[: -len("_best")] for c in table.columns if c.endswith("_best")]
    labels = {"top1": "top-1", "top5": "top-5", "error": "error"}
    head = ["model", "params"]
    for k in metrics:
        head += [f"{labels.get(k, k)} ours: best (mean±std, n)", f"{labels.get(k, k)} paper", "Δ"]
    head += ["profile", "dataset", "protocol", "note"]
    body = []
    for r in table.to_dict("records"):
        cells = [r["model"], _params(r["params"])]
        for k in metrics:
            theirs = _num(r.get(f"paper_{k}")) + _mean_std(r.get(f"paper_{k}_mean"), r.get(f"paper_{k}_std"))
            cells += [_ours(r, k), theirs, _num(r.get(f"diff_{k}"), sign=True)]
        cells += [_text(r["profile"]), _text(r["dataset"]), _text(r["eval_protocol"]), _text(r["note"])]
        body.append(cells)
    right = set(range(1, len(head) - 4))  # numbers right-aligned
    return "\n".join([f"# {title}", "", *_preamble(table, runs), "", *_grid(head, body, right)]) + "\n"


def _grid(head: list[str], body: list[list[str]], right: set[int]) -> list[str]:
    rule = "|" + "|".join("---:" if i in right else "---" for i in range(len(head))) + "|"
    return ["| " + " | ".join(head) + " |", rule,
            *("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body)]


def _preamble(table: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    out = ["Ours: error at the end of training, best over seeds (mean±std with the n−1 standard deviation, "
           "n runs); Δ = our best − the paper's. \"quoted\" rows are other methods, as the paper reports them.", ""]
    ours = table[table.n_runs.fillna(0) > 0]
    labels = list(dict.fromkeys(zip(ours.profile, ours.profile_label)))
    if not labels:
        out += ["No finished runs yet: every row of ours is missing (its note says which command makes it).", ""]
    out += [f"- profile `{profile}`: {label}." for profile, label in labels]
    out += [f"- dataset `{d}`: {dataset_note(d)}." for d in dict.fromkeys(ours.dataset) if dataset_note(d)]
    if not ours.full_schedule.astype(bool).all():
        out += ["", "Shortened, sample and proxy runs are not the paper's schedule: their numbers show the trend, "
                "not the paper's values."]
    pending = runs[(runs.status != "finished") & runs.model.isin(set(table.model))]
    if len(pending):
        out += ["", "Not counted (unfinished): " + ", ".join(f"{r.profile}/{r.run_id} ({r.status})"
                                                          for r in pending.itertuples()) + "."]
    return out


def _ours(r: dict, k: str) -> str:
    if not r.get("n_runs") or pd.isna(r.get(f"{k}_best")):
        return ""
    n, best = int(r["n_runs"]), r[f"{k}_best"]
    if n == 1:
        return f"{best:.2f} (n=1)"
    return f"{best:.2f} ({r[f'{k}_mean']:.2f}±{r[f'{k}_std']:.2f}, n={n})"


def _mean_std(mean, std) -> str:
    return "" if mean is None or pd.isna(mean) else f" ({mean:.2f}±{std:.2f})"


def _num(value, sign: bool = False) -> str:
    if value is None or pd.isna(value):
        return "–"
    return f"{value:+.2f}" if sign else f"{value:.2f}"


def _params(value) -> str:
    return "" if value is None or pd.isna(value) else f"{value / 1e6:.2f}M"


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


# -------------------------------------------------------------------------------------------- claims


class Claim(NamedTuple):
    holds: bool | None  # None: not enough finished runs to judge
    evidence: str  # the numbers judged on and their profile, or what is missing


def _means(runs: pd.DataFrame, models: list[str], column: str,
           enough: Callable[[dict], bool] | None = None) -> tuple[pd.Series, dict[str, float]] | None:
    """Mean of `column` per model in the best (profile, dataset) whose finished, unaltered runs are
    `enough` (default: all `models`). Returns (a run of that setting, {model: mean}) or None."""
    enough = enough or (lambda means: len(means) == len(models))
    pool = finished(runs)
    pool = pool[(pool.variant == "") & ~pool.ensemble & pool.model.isin(models)].dropna(subset=[column])
    for profile in rank_profiles(pool):
        in_profile = pool[pool.profile == profile]
        for dataset in sorted(set(in_profile.dataset), key=lambda d: (d not in FULL_DATASETS, d)):
            sub = in_profile[in_profile.dataset == dataset]
            means = sub.groupby("model")[column].mean().to_dict()
            if enough(means):
                return sub.iloc[0], {m: means[m] for m in models if m in means}
    return None


def _judged(run: pd.Series, means: dict[str, float], what: str, holds: bool, unit: str = "%") -> Claim:
    numbers = ", ".join(f"{pretty(m)} {v:.2f}{unit}" for m, v in means.items())
    where = f"profile `{run.profile}`: {schedule_text(run)}"
    if dataset_text(run.dataset):
        where += f", {dataset_text(run.dataset)}"
    return Claim(holds, f"{what}: {numbers} (mean over seeds; {where})")


def _greater(runs: pd.DataFrame, high: str, low: str, column: str, what: str) -> Claim:
    picked = _means(runs, [high, low], column)
    if picked is None:
        return Claim(None, f"needs finished {pretty(high)} and {pretty(low)} runs in one profile")
    run, means = picked
    return _judged(run, means, what, bool(means[high] > means[low]))


def plain_deeper_trains_worse(runs: pd.DataFrame) -> Claim:
    return _greater(runs, "plain56", "plain20", "final_train_error", "final training error")


def plain_deeper_tests_worse(runs: pd.DataFrame) -> Claim:
    return _greater(runs, "plain56", "plain20", "final_test_error", "final test error")


def resnet_trains_better_than_plain(runs: pd.DataFrame) -> Claim:
    return _greater(runs, "plain56", "resnet56-A", "final_train_error", "final training error")


def _trend_with_depth(runs: pd.DataFrame, arch: str, column: str, what: str, rising: bool,
                      tolerance: float = 0.2) -> Claim:
    """`column` rising (or falling) over the available depths 20..110, each step allowed `tolerance` points."""
    plain = arch == "plain"
    models = [f"plain{d}" if plain else f"resnet{d}-A" for d in CIFAR_DEPTHS]
    picked = _means(runs, models, column, enough=lambda means: len(means) >= 2)
    if picked is None:
        return Claim(None, f"needs finished {'plain' if plain else 'ResNet'} runs of at least two depths among "
                           "20/32/44/56/110 in one profile")
    run, means = picked
    values = list(means.values())
    sign = 1 if rising else -1
    holds = all(sign * (b - a) >= -tolerance for a, b in zip(values, values[1:]))
    return _judged(run, means, f"{what} by depth (tolerance {tolerance} points per step)", holds)


def resnet_error_falls_with_depth(runs: pd.DataFrame) -> Claim:
    return _trend_with_depth(runs, "resnet", "final_test_error", "final test error", rising=False)


def plain_training_error_rises_with_depth(runs: pd.DataFrame) -> Claim:
    return _trend_with_depth(runs, "plain", "final_train_error", "final training error", rising=True)


def resnet_responds_less_than_plain(runs: pd.DataFrame) -> Claim:
    """Mean layer-response std of each ResNet-N below that of plain-N, for every depth with both."""
    pairs = [(f"plain{d}", f"resnet{d}-A") for d in CIFAR_DEPTHS]
    models = [m for pair in pairs for m in pair]
    picked = _means(runs, models, "mean_response_std",
                    enough=lambda means: any(p in means and r in means for p, r in pairs))
    if picked is None:
        return Claim(None, "needs layer responses (responses.csv) of plain-N and ResNet-N of one depth in one profile")
    run, means = picked
    both = [(p, r) for p, r in pairs if p in means and r in means]
    shown = {m: means[m] for pair in both for m in pair}
    return _judged(run, shown, "mean std of 3x3 layer responses", all(means[r] < means[p] for p, r in both), unit="")


def deeper_resnet_responds_less(runs: pd.DataFrame) -> Claim:
    models = ["resnet20-A", "resnet56-A", "resnet110-A"]
    picked = _means(runs, models, "mean_response_std", enough=lambda means: len(means) >= 2)
    if picked is None:
        return Claim(None, "needs layer responses (responses.csv) of at least two of ResNet-20/56/110 in one profile")
    run, means = picked
    values = list(means.values())
    return _judged(run, means, "mean std of 3x3 layer responses", all(b < a for a, b in zip(values, values[1:])),
                   unit="")


def imagenet_resnet34_beats_18_plain_does_not(runs: pd.DataFrame) -> Claim:
    """Judged on Table 2's 10-crop numbers where they were measured, else on the curves' own final top-1."""
    models = ["plain18", "plain34", "resnet18-A", "resnet34-A"]
    imagenet = runs[runs.family == "imagenet"]
    for column, what in (("final_10crop_error", "10-crop top-1 error"), ("final_test_error", "final top-1 error")):
        picked = _means(imagenet, models, column)
        if picked is not None:
            run, means = picked
            holds = means["resnet34-A"] < means["resnet18-A"] and means["plain34"] > means["plain18"]
            return _judged(run, means, what, bool(holds))
    return Claim(None, "needs finished ImageNet plain-18/34 and ResNet-18/34 (option A) runs in one profile")


def judge_by_setting(runs: pd.DataFrame, check: Callable[[pd.DataFrame], Claim]) -> list[Claim]:
    """`check` on each (profile, dataset) of finished runs on its own, best setting first; the settings
    that cannot judge it are left out, and if none can, the one 'not enough data' answer remains."""
    done = finished(runs)
    settings = [(p, d) for p in rank_profiles(done)
                for d in sorted(set(done[done.profile == p].dataset), key=lambda d: (d not in FULL_DATASETS, d))]
    claims = [check(runs[(runs.profile == p) & (runs.dataset == d)]) for p, d in settings]
    return [c for c in claims if c.holds is not None] or [check(runs)]


CLAIMS: list[tuple[str, Callable[[pd.DataFrame], Claim]]] = [
    ("plain-56 has higher training error than plain-20 (Fig. 1, the degradation problem)", plain_deeper_trains_worse),
    ("plain-56 has higher test error than plain-20 (Fig. 1)", plain_deeper_tests_worse),
    ("deeper plain nets have higher training error (Fig. 6, left)", plain_training_error_rises_with_depth),
    ("ResNet test error falls with depth up to 110 layers (Table 6)", resnet_error_falls_with_depth),
    ("ResNet-56 has lower training error than plain-56 (Fig. 6)", resnet_trains_better_than_plain),
    ("ResNet layer responses are smaller than plain ones (Fig. 7)", resnet_responds_less_than_plain),
    ("deeper ResNets respond less per layer (Fig. 7)", deeper_resnet_responds_less),
    ("ImageNet: ResNet-34 beats ResNet-18 while plain-34 is worse than plain-18 (Table 2)",
     imagenet_resnet34_beats_18_plain_does_not),
]


# -------------------------------------------------------------------------------------------- README

_FIGURE_TITLES = {"fig1": "Fig. 1: plain-20 vs plain-56 on CIFAR-10", "fig4": "Fig. 4: ImageNet plain vs ResNet-18/34",
                  "fig6": "Fig. 6: CIFAR-10 plain and ResNet curves", "fig7": "Fig. 7: layer response std"}


def write_readme(runs_dir: Path, results_dir: Path) -> Path:
    """results/README.md: every table and figure present, the runs and hardware behind them, and the
    paper's claims judged from our runs."""
    runs = load_runs(runs_dir)
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# Results", "",
             "Reproduction of He et al. 2015, *Deep Residual Learning for Image Recognition*, regenerated from the "
             "run directories by `resnet-repro plot all && resnet-repro report`.", "", "## Tables", ""]
    tables = sorted(results_dir.glob("table*.md"), key=lambda p: p.stem)
    lines += [f"- [{_title(p)}]({p.name}) ([csv]({p.stem}.csv))" for p in tables] or ["None yet."]
    lines += ["", "## Figures", ""]
    figures = sorted(results_dir.glob("fig*.png"), key=lambda p: p.stem)
    lines += [f"- [{_figure_title(p.stem)}]({p.name})"
              + (f" ([pdf]({p.stem}.pdf))" if (results_dir / f"{p.stem}.pdf").exists() else "")
              for p in figures] or ["None yet."]
    lines += ["", "## Runs behind them", "", *_runs_section(runs), "", "## The paper's claims, checked from our runs",
              "", "Judged on finished runs without extra overrides, separately in each profile and dataset that has "
              "the runs needed (the paper's schedule first). A claim judged on a shortened run says so.", ""]
    verdicts = {True: "**holds**", False: "**does not hold**", None: "not enough data"}
    for statement, check in CLAIMS:
        claims = judge_by_setting(runs, check)
        if len(claims) == 1:
            lines.append(f"- {statement}: {verdicts[claims[0].holds]}. {claims[0].evidence}.")
        else:
            lines.append(f"- {statement}:")
            lines += [f"  - {verdicts[c.holds]}. {c.evidence}." for c in claims]
    path = results_dir / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _figure_title(stem: str) -> str:
    name, _, profile = stem.partition("-")  # plots.plot_figures: fig6-paper is Fig. 6 from profile paper
    title = _FIGURE_TITLES.get(name, name)
    return f"{title}, profile `{profile}`" if profile else title


def _title(md: Path) -> str:
    first = md.read_text().splitlines()[:1]
    return first[0].lstrip("# ").strip() if first else md.stem


def _runs_section(runs: pd.DataFrame) -> list[str]:
    if runs.empty:
        return ["No runs yet."]
    out = ["| profile | schedule | finished | unfinished | wall time |", "|---|---|---:|---:|---:|"]
    for profile, g in runs.groupby("profile"):
        done = g.status == "finished"
        label = g.iloc[0].profile_label + ("" if g.full_schedule.any() else ", not the paper's schedule")
        out.append(f"| `{profile}` | {label} | {int(done.sum())} | {int((~done).sum())} | {_hours(g.wall_s.sum())} |")
    devices = runs.groupby("device").size().sort_values(ascending=False)
    out += ["", f"Total wall time {_hours(runs.wall_s.sum())} over {len(runs)} runs. Hardware: "
            + "; ".join(f"{d or 'unknown'} ({n} runs)" for d, n in devices.items()) + "."]
    return out


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
