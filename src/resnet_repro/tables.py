"""Tables 2-6: our runs reduced to rows and set beside the paper's numbers, as CSV and Markdown.

Our numbers come only from run directories (runs.load_runs), the paper's only from paper.py.
Every row names its profile and data, so a shortened, sample or proxy run is never read as the
paper's schedule; a net without a finished run gets a row that says which command makes it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from . import paper
from .config import make_dir, net_command, run_command
from .results import atomic_write_text
from .runs import finished, load_runs, rank_profiles, ranked_runs, schedule_text
from .spec import ModelSpec


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
    test_set: set[str] = frozenset(),
) -> pd.DataFrame:
    """Quoted rows, then one row per paper model (ours grouped by profile, dataset and variant, or a
    `missing` row), then models the paper's table does not have. `runs` holds this table's runs only.
    `paper_mean_std` holds the paper's "(mean±std)" of the first metric, `test_set` the rows it marks †."""
    paper_mean_std = paper_mean_std or {}
    rows = [_quoted_row(name, values, metrics, paper_mean_std.get(name), name in test_set)
            for name, values in quoted.items()]
    done = ranked_runs(finished(runs))
    profiles = rank_profiles(done)
    for model, values in paper_rows.items():
        paper_values = values if isinstance(values, tuple) else (values,)
        groups = _our_rows(done[done.model == model], metrics)
        if not groups:
            cmd = command(model, profiles[0] if profiles else None)
            unfinished = runs[(runs.model == model) & (runs.status != "unreadable")]
            groups = [_missing_row(model, unfinished, cmd, (paper_params or {}).get(model))]
        for row in groups:
            comparable = row.get("paper_images", False)  # a proxy or a sample is another task
            for metric, value in zip(metrics, paper_values):
                row[f"paper_{metric.key}"] = value
                row[f"diff_{metric.key}"] = _diff(row.get(f"{metric.key}_best"), value) if comparable else None
            if model in paper_mean_std:
                row[f"paper_{metrics[0].key}_mean"], row[f"paper_{metrics[0].key}_std"] = paper_mean_std[model]
            rows.append(row)
    if extras:
        others = done[~done.model.isin(list(paper_rows))].sort_values(["arch", "depth", "model"], kind="stable")
        for model in dict.fromkeys(others.model):
            for row in _our_rows(others[others.model == model], metrics):
                row["note"] = "; ".join(filter(None, ["not in the paper's table", row["note"]]))
                rows.append(row)
    columns = ["model", "params", "n_runs", "seeds"]
    for m in metrics:
        columns += [f"{m.key}_best", f"{m.key}_mean", f"{m.key}_std", f"paper_{m.key}", f"diff_{m.key}"]
        if paper_mean_std and m is metrics[0]:
            columns += [f"paper_{m.key}_mean", f"paper_{m.key}_std"]
    columns += ["paper_mark"] if test_set else []
    columns += ["profile", "profile_label", "full_schedule", "dataset", "precision", "eval_protocol", "note"]
    return pd.DataFrame(rows, columns=columns).astype({"params": "Int64", "n_runs": "Int64"})


def _our_rows(runs: pd.DataFrame, metrics: list[Metric]) -> list[dict]:
    """One row per (profile, dataset, variant) group of one model's finished runs, in the order of
    `ranked_runs` (which `runs` is in): the paper's schedule on the original pixels first, an untagged run
    before a precision control before another variant."""
    rows = []
    for _, g in runs.groupby(["profile", "dataset", "variant"], sort=False):
        first = g.iloc[0]
        row = {"model": first.model, "params": first.params, "n_runs": len(g),
               "seeds": " ".join(str(int(s)) for s in sorted(g.seed)), "profile": first.profile,
               "profile_label": schedule_text(first), "full_schedule": bool(first.full_schedule),
               "dataset": first.dataset, "paper_images": bool(first.paper_images),
               "precision": " ".join(sorted(set(g.precision))), "eval_protocol": " ".join(sorted(set(g.eval_protocol))),
               "note": f"variant {first.variant}" if first.variant else ""}
        for m in metrics:
            values = g[m.column].dropna()
            row[f"{m.key}_best"] = values.min() if len(values) else None
            row[f"{m.key}_mean"] = values.mean() if len(values) else None
            row[f"{m.key}_std"] = values.std(ddof=1) if len(values) > 1 else None
        rows.append(row)
    return rows


def _quoted_row(name: str, values, metrics: list[Metric], mean_std: tuple | None, test_set: bool) -> dict:
    values = values if isinstance(values, tuple) else (values,)
    row = {"model": name, "note": "quoted" + ("; on the test set" if test_set else ""), "paper_mark": "†" * test_set,
           **{f"paper_{m.key}": v for m, v in zip(metrics, values)}}
    if mean_std:
        row[f"paper_{metrics[0].key}_mean"], row[f"paper_{metrics[0].key}_std"] = mean_std
    return row


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
    return build_table(ours, [top1], paper.TABLE2_TOP1, {}, lambda _m, p: run_command("table2", p), extras=False)


def table3(runs: pd.DataFrame) -> pd.DataFrame:
    ours, metrics = _imagenet(runs, "10crop")
    return build_table(ours, metrics, paper.TABLE3, paper.TABLE3_QUOTED, lambda _m, p: run_command("table3", p))


def table4(runs: pd.DataFrame) -> pd.DataFrame:
    ours, metrics = _imagenet(runs, "multiscale")
    return build_table(ours, metrics, paper.TABLE4, paper.TABLE4_QUOTED, lambda _m, p: run_command("table4", p),
                       test_set=paper.TABLE4_TEST_SET)


def table5(runs: pd.DataFrame) -> pd.DataFrame:
    return build_table(runs[runs.ensemble], [TOP5], paper.TABLE5_TOP5, paper.TABLE5_QUOTED,
                       lambda _m, p: run_command("table5", p))


def table6(runs: pd.DataFrame) -> pd.DataFrame:
    params = {m: paper.CIFAR_PARAMS[ModelSpec.parse(m, "cifar").n] for m in paper.TABLE6}
    return build_table(runs[(runs.family == "cifar") & ~runs.ensemble], [ERROR], paper.TABLE6, paper.TABLE6_QUOTED,
                       net_command, paper_mean_std=paper.TABLE6_MEAN_STD, paper_params=params)


# name -> (title, builder). Table 1 needs no runs: it is counted from the built models (table1.py).
TABLES: dict[str, tuple[str, Callable[[pd.DataFrame], pd.DataFrame]]] = {
    "table2": ("Table 2: ImageNet top-1 error (%), plain vs ResNet (option A); the paper tests with 10 crops",
               table2),
    "table3": ("Table 3: ImageNet error (%), top-1 and top-5; the paper tests with 10 crops", table3),
    "table4": ("Table 4: single-model ImageNet error (%), multi-scale testing", table4),
    "table5": ("Table 5: ensembles, ImageNet top-5 error (%); the paper's is on the test server", table5),
    "table6": ("Table 6: CIFAR-10 test error (%)", table6),
}


def write_tables(runs_dir: Path, results_dir: Path, tables: list[str] | None = None) -> list[Path]:
    """tableN.csv and tableN.md in `results_dir` for each of `tables` (default: Tables 2-6)."""
    runs = load_runs(runs_dir)
    results_dir = make_dir(results_dir)
    paths = []
    for name in tables or list(TABLES):
        if name not in TABLES:
            raise ValueError(f"unknown table {name!r}: choose one of {', '.join(TABLES)}")
        title, build = TABLES[name]
        table, notes = build(runs), []
        if name == "table6":  # CIFAR nets not yet run: what the paper's schedule would cost them
            notes = add_cost_estimates(table, read_bench(results_dir / "bench.csv"))
        csv_path, md_path = results_dir / f"{name}.csv", results_dir / f"{name}.md"
        atomic_write_text(csv_path, table.to_csv(index=False, float_format="%.4g"))
        atomic_write_text(md_path, table_markdown(title, table, runs, notes))
        paths += [csv_path, md_path]
    return paths


# The lossy copy's own cost, measured with a published pretrained ResNet-20 (README, "Our reproduction").
DATA_EVIDENCE = {"cifar10_jpeg90": "a published pretrained ResNet-20 scores 8.27% on the original test images and "
                                   "11.23% on this copy, so part of any gap to the paper on it is the copy's"}


def read_bench(path: Path) -> pd.DataFrame:
    """bench.csv (bench.append_row writes it); empty if absent or unreadable."""
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return pd.DataFrame(columns=["device", "model", "ours_images_per_s", "ours_pipeline"])


def fastest_gpu_resnet20(bench: pd.DataFrame) -> pd.Series | None:
    """bench.csv's fastest ResNet-20 row on a GPU (our pipeline), the basis of every cost estimate."""
    if "ours_images_per_s" not in bench:
        return None
    gpu = bench[(bench.model == "resnet20-A") & ~bench.device.astype(str).str.startswith("cpu")
                & bench.ours_images_per_s.notna()]
    return None if gpu.empty else gpu.loc[gpu.ours_images_per_s.idxmax()]


def paper_schedule_hours(model: str, fastest: pd.Series) -> float:
    """Estimated hours of a CIFAR net's paper schedule on `fastest`'s GPU: ResNet-20's throughput there
    scaled by the number of 3x3 layers (6n), which carry nearly all the multiply-adds, each the same per
    image (`resnet-repro models cifar --n 3,200`)."""
    n, base = ModelSpec.parse(model, "cifar").n, ModelSpec.parse("resnet20-A", "cifar").n
    return paper.CIFAR_ITERATIONS * paper.CIFAR_BATCH / (fastest.ours_images_per_s * base / n) / 3600


def add_cost_estimates(table: pd.DataFrame, bench: pd.DataFrame) -> list[str]:
    """Adds to each missing CIFAR net's note its estimated time for the paper's schedule on one GPU
    (`paper_schedule_hours`). Returns the notes that say how."""
    fastest = fastest_gpu_resnet20(bench)
    missing = table.index[(table.n_runs == 0).fillna(False)]  # _missing_row
    if fastest is None or missing.empty:
        return []
    for i in missing:
        hours = paper_schedule_hours(table.at[i, "model"], fastest)
        table.at[i, "note"] += f"; about {hours:.1f} h on one {fastest.device} at the paper's schedule (estimated)"
    return [cost_basis(fastest)]


def cost_basis(fastest: pd.Series) -> str:
    return (f"Estimated GPU time of a missing net, not measured: the paper's schedule ({paper.CIFAR_ITERATIONS:,} "
            f"iterations of {paper.CIFAR_BATCH}) at ResNet-20's measured {fastest.ours_images_per_s:,.0f} images/s "
            f"on an {fastest.device} (results/bench.csv: {fastest.ours_pipeline}), divided by the ratio of the "
            f"net's 3x3 layers to ResNet-20's (6n: 18). Those layers carry nearly all the multiply-adds, each the "
            f"same per image (`resnet-repro models cifar`), and at CIFAR's widths each costs about the same time.")


def table_markdown(title: str, table: pd.DataFrame, runs: pd.DataFrame, notes: list[str] = ()) -> str:
    """Ours beside the paper's, one cell per metric as the paper writes Table 6: one run's number, or
    best (mean±std) of several; n runs in its own column. `notes` go under the table."""
    metrics = [c[: -len("_best")] for c in table.columns if c.endswith("_best")]
    labels = {"top1": "top-1", "top5": "top-5", "error": "error"}
    head = ["model", "params", "n"]
    for k in metrics:
        head += [f"{labels.get(k, k)} ours", f"{labels.get(k, k)} paper", "Δ"]
    head += ["profile", "dataset", "precision", "protocol", "note"]
    body = []
    for r in table.to_dict("records"):
        cells = [r["model"], _params(r["params"]), str(int(r["n_runs"])) if r.get("n_runs") else ""]
        mark = _text(r.get("paper_mark"))
        for k in metrics:
            theirs = _num(r.get(f"paper_{k}"))
            theirs += (mark if theirs != "–" else "") + _mean_std(r.get(f"paper_{k}_mean"), r.get(f"paper_{k}_std"))
            cells += [_ours(r, k), theirs, _num(r.get(f"diff_{k}"), sign=True)]
        cells += [_text(r["profile"]), _text(r["dataset"]), _text(r["precision"]), _text(r["eval_protocol"]),
                  _text(r["note"])]
        body.append(cells)
    right = set(range(1, len(head) - 5))  # numbers right-aligned
    notes = ["", "Notes:", "", *(f"- {n}" for n in notes)] if notes else []
    return "\n".join([f"# {title}", "", *_preamble(table, runs), "", *_grid(head, body, right), *notes]) + "\n"


def _grid(head: list[str], body: list[list[str]], right: set[int]) -> list[str]:
    rule = "|" + "|".join("---:" if i in right else "---" for i in range(len(head))) + "|"
    return ["| " + " | ".join(head) + " |", rule,
            *("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body)]


def _preamble(table: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    out = [("Ours: error at the end of training, written as the paper writes Table 6: the number itself where "
            "there is one run (n = 1), \"best (mean±std)\" over n runs where there are more (std with n−1). Δ = our "
            "best − the paper's, left blank where our data is a proxy or a sample rather than the paper's images. "
            "\"quoted\" rows are other methods, as the paper reports them."), ""]
    if "paper_mark" in table and (table.paper_mark == "†").any():
        out[0] += " † marks a number the paper gives on the test set, not the validation set."
    ours = table[table.n_runs.fillna(0) > 0]
    labels = list(dict.fromkeys(zip(ours.profile, ours.profile_label)))
    if not labels:
        out += ["No finished runs yet: every row of ours is missing (its note says which command makes it).", ""]
    out += [f"- profile `{profile}`: {label}." for profile, label in labels]
    notes = dict(zip(runs.dataset, runs.data_note))
    out += [f"- dataset `{d}`: {notes[d]}" + (f"; {DATA_EVIDENCE[d]}" if d in DATA_EVIDENCE else "") + "."
            for d in dict.fromkeys(ours.dataset) if notes.get(d)]
    if ours.full_schedule.astype(bool).any():
        out += ["", "Within a model, rows of the paper's schedule come first, the original pixels before a lossy copy."]
    if not ours.full_schedule.astype(bool).all():
        out += ["", "Shortened, sample and proxy runs are not the paper's schedule: their numbers show the trend, "
                "not the paper's values."]
    in_table = runs[runs.model.isin(set(table.model))]
    pending = in_table[~in_table.status.isin(["finished", "unreadable"])]
    if len(pending):
        out += ["", "Not counted (unfinished): " + ", ".join(f"{r.profile}/{r.run_id} ({r.status})"
                                                          for r in pending.itertuples()) + "."]
    unreadable = in_table[in_table.status == "unreadable"]
    if len(unreadable):
        out += ["", "Left out, unreadable: " + ", ".join(f"{r.profile}/{r.run_id} ({r.unreadable})"
                                                       for r in unreadable.itertuples()) + "."]
    return out


def _ours(r: dict, k: str) -> str:
    if not r.get("n_runs") or pd.isna(r.get(f"{k}_best")):
        return ""
    best = r[f"{k}_best"]
    if int(r["n_runs"]) == 1:
        return f"{best:.2f}"
    return f"{best:.2f} ({r[f'{k}_mean']:.2f}±{r[f'{k}_std']:.2f})"


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

