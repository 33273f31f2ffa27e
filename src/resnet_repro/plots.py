"""Figures 1, 4, 6 and 7 of He et al. 2015, redrawn from run directories (metrics.csv, responses.csv).

A figure draws one profile (schedule), never a mix: `<fig>.png` the profile covering most of its nets
(the paper's schedule first on ties), `<fig>-<profile>.png` each other profile with runs to draw. Each
net is drawn from one run (`select_runs`), the one the README's claims judge. Titles name the
profile and the data; captions name the runs, their schedule and seeds. A figure lacking runs is
drawn with what exists, marked partial, an empty panel says which command makes its runs, and
`FigureResult.missing` lists them all. A run whose files cannot be read is left out, and the
caption says so.
"""

from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global figure registry, no backend to choose
from matplotlib.ticker import MaxNLocator, NullFormatter

from .config import make_dir, net_command, run_command
from .paper import CIFAR_DEPTHS
from .results import RunDir, Unreadable, atomic_write_bytes, read_run_metrics
from .runs import dataset_text, load_runs, rank_profiles, ranked_runs, schedule_text
from .spec import ModelSpec, pretty

# The data and the schedule go on the title's second line (`_setting`), from the runs drawn.
FIGURES = {
    "fig1": "Fig. 1: training and test error, plain-20 vs plain-56",
    "fig4": "Fig. 4: training (thin) and validation (bold) error, plain vs ResNet-18/34",
    "fig6": "Fig. 6: training (dashed) and test (bold) error",
    "fig7": "Fig. 7: std of 3x3 layer responses",
}
PLAIN = [ModelSpec("cifar", "plain", d).name for d in CIFAR_DEPTHS]
RESNET = [ModelSpec("cifar", "resnet", d).name for d in CIFAR_DEPTHS]
# name -> (family, nets the figure needs, nets drawn only if present). Plain-110 is above 60% in the
# paper's Fig. 6 and not shown there.
_NETS = {
    "fig1": ("cifar", ["plain20", "plain56"], []),
    "fig4": ("imagenet", ["plain18", "plain34", "resnet18-A", "resnet34-A"], []),
    "fig6": ("cifar", [*PLAIN[:4], *RESNET, "resnet1202-A"], ["plain110"]),
    "fig7": ("cifar", ["plain20", "plain56", "resnet20-A", "resnet56-A", "resnet110-A"], []),
}


@dataclass
class FigureResult:
    name: str
    figure: Figure | None  # None when there was nothing to draw (then no files are written)
    paths: list[Path] = field(default_factory=list)
    drawn: list[str] = field(default_factory=list)  # "<profile>/<run_id>" of each run drawn
    missing: list[str] = field(default_factory=list)  # "<net>: `<command that makes it>`"
    missing_nets: list[str] = field(default_factory=list)  # the nets of `missing`, as runs name them
    notes: list[str] = field(default_factory=list)  # seeds left out, runs with nothing to draw yet, axes widened
    partial: bool = False  # some net is missing or drawn from an unfinished run


def output_lines(written: Path | FigureResult, asked: set[str] | None = None) -> list[tuple[str, str]]:
    """What to tell about a file written or a figure drawn, as (kind, text): "wrote", "note", "missing";
    with `asked` (the nets a command trains), "missing" only for those."""
    if not isinstance(written, FigureResult):
        return [("wrote", str(written))]
    paths = [("wrote", f"{p}" + (" (partial)" if written.partial else "")) for p in written.paths]
    missing = [m for m, net in zip(written.missing, written.missing_nets) if asked is None or net in asked]
    return paths + [("note", n) for n in written.notes] + [("missing", m) for m in missing]


def plot_all(runs_dir: Path, results_dir: Path, profile: str | None = None,
             formats: tuple[str, ...] = ("png", "pdf")) -> list[FigureResult]:
    return [result for name in FIGURES for result in plot_figures(name, runs_dir, results_dir, profile, formats)]


def plot_figures(name: str, runs_dir: Path, results_dir: Path, profile: str | None = None,
                 formats: tuple[str, ...] = ("png", "pdf")) -> list[FigureResult]:
    """Figure `name` once per profile with runs to draw (only `profile` if given): the profile covering
    most of its nets as `<name>.png`, every other one as `<name>-<profile>.png`."""
    if profile:
        return [plot_figure(name, runs_dir, results_dir, profile, formats)]
    runs, load = _figure_runs(name, runs_dir)
    required = _NETS[name][1]
    coverage = {p: sum(m in select_runs(runs, required, p, load)[0] for m in required) for p in rank_profiles(runs)}
    coverage = {p: n for p, n in coverage.items() if n}
    if len(coverage) <= 1:
        return [plot_figure(name, runs_dir, results_dir, None, formats)]
    main, *others = sorted(coverage, key=lambda p: -coverage[p])  # stable: rank_profiles breaks ties
    return [plot_figure(name, runs_dir, results_dir, main, formats),
            *(plot_figure(name, runs_dir, results_dir, p, formats, stem=f"{name}-{p}") for p in others)]


def _figure_runs(name: str, runs_dir: Path):
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}: choose one of {', '.join(FIGURES)}")
    runs = load_runs(runs_dir)
    runs = runs[(runs.family == _NETS[name][0]) & ~runs.ensemble]
    return runs, load_responses if name == "fig7" else load_metrics


def load_metrics(run) -> pd.DataFrame:
    """The curves of a row of the runs table (all of them, if it finished)."""
    done = run.status == "finished" and pd.notna(run.iterations_done)
    return read_run_metrics(RunDir(run.path), run.iterations_done if done else None)


def load_responses(run) -> pd.DataFrame:
    return RunDir(run.path).read_responses()


def plot_figure(name: str, runs_dir: Path, results_dir: Path, profile: str | None = None,
                formats: tuple[str, ...] = ("png", "pdf"), stem: str | None = None) -> FigureResult:
    """Draw figure `name` from the runs under `runs_dir` (only `profile`'s if given) into
    `results_dir/<stem>.png` and `.pdf` (or the given `formats`); `stem` defaults to `name`."""
    runs, load = _figure_runs(name, runs_dir)
    _, required, optional = _NETS[name]
    picked, data, notes = select_runs(runs, [*required, *optional], profile, load)
    # missing runs are best made in the profile the figure draws (else the one the family's runs use)
    command_profile = profile or (rank_profiles(pd.DataFrame(picked.values())) or rank_profiles(runs) or [None])[0]
    missing = [_missing(name, m, runs, profile, command_profile) for m in required if m not in picked]
    commands = {m: _run_command(name, m, command_profile) for m in required if m not in picked}
    result = FigureResult(name, None, drawn=[f"{r.profile}/{r.run_id}" for r in picked.values()], missing=missing,
                          missing_nets=[m for m in required if m not in picked], notes=notes)
    result.partial = bool(result.missing) or any(r.status != "finished" for r in picked.values())
    if not picked:
        return result
    fig = _DRAW[name](picked, data, result.notes, commands)
    title = f"{FIGURES[name]}, reproduced" + (" (partial)" if result.partial else "") + f"\n{_setting(picked)}"
    _caption(fig, title, picked, [m for m in required if m not in picked], result.notes)
    results_dir = make_dir(results_dir)
    for suffix in formats:
        path = results_dir / f"{stem or name}.{suffix}"
        buffer = io.BytesIO()
        # no creation date in the PDF, so regenerating unchanged runs leaves the committed files unchanged
        fig.savefig(buffer, format=suffix, dpi=150, metadata={"CreationDate": None} if suffix == "pdf" else None)
        atomic_write_bytes(path, buffer.getvalue())
        result.paths.append(path)
    result.figure = fig
    return result


def select_runs(runs: pd.DataFrame, models: list[str], profile: str | None = None, load=load_metrics):
    """One run per net with something to draw, the first in `runs.ranked_runs`' order (the run tables and
    claims put first). A run whose files cannot be read is left out, with a note. Returns ({net: run},
    {net: its data}, notes)."""
    pool = runs[runs.model.isin(models)]
    if profile:
        pool = pool[pool.profile == profile]
    loaded, left_out = {}, []
    for r in pool.itertuples():
        try:
            if r.status == "unreadable":
                raise Unreadable(Path(r.path) / r.unreadable, "cannot be read")
            loaded[r.Index] = load(r)
        except Unreadable as e:
            left_out.append(f"{r.profile}/{r.run_id} left out: {e.path.name} {e.why}")
    pool = pool.loc[list(loaded)]
    usable = ranked_runs(pool.loc[[i for i in pool.index if not loaded[i].empty]])
    picked, data, notes = {}, {}, []
    for model in models:
        sub = usable[usable.model == model]
        if sub.empty:
            continue
        run = sub.iloc[0]
        picked[model], data[model] = run, loaded[run.name]
        same = sub[sub.profile == run.profile]
        if len(same) > 1:  # seeds alone do not tell the runs apart: a control shares the seed it checks
            others = ", ".join(sorted(same.run_id[same.run_id != run.run_id]))
            notes.append(f"{pretty(model)}: {len(same)} runs in profile `{run.profile}`; drawn: {run.run_id}; "
                         f"not drawn: {others}")
    notes += [f"{r.profile}/{r.run_id} ({r.status}) has nothing to draw yet"
              for r in pool.drop(usable.index).itertuples() if r.model not in picked]
    return picked, data, notes + left_out


def _missing(name: str, model: str, runs: pd.DataFrame, profile: str | None, command_profile: str | None) -> str:
    """'<net>: why: `<command>`'; `profile` is the one asked for, `command_profile` the one drawn."""
    where = f" in profile `{profile}`" if profile else ""
    if name == "fig7":  # a trained run without responses.csv only needs the analysis
        trained = runs[(runs.model == model) & (runs.status == "finished")]
        trained = trained[trained.profile == profile] if profile else trained
        if len(trained):
            return f"{pretty(model)}: no responses.csv{where}: `resnet-repro analyze responses {trained.iloc[0].path}`"
    command = _run_command(name, model, command_profile)
    damaged = runs[(runs.model == model) & (runs.unreadable != "")]
    damaged = damaged[damaged.profile == profile] if profile else damaged
    if len(damaged):
        r = damaged.iloc[0]
        return (f"{pretty(model)}: {r.profile}/{r.run_id} cannot be read ({r.unreadable}): restore it, or delete "
                f"it and run `{command}`")
    return f"{pretty(model)}: no run{where}: `{command}`"


def _run_command(name: str, model: str, profile: str | None) -> str:
    return run_command("fig4", profile) if name == "fig4" else net_command(model, profile)


# -------------------------------------------------------------------------------------------- drawing


def _fig1(picked, data, notes, commands) -> Figure:
    fig = Figure(figsize=(10, 4), layout="constrained")
    scale = _scale(data)
    axes, values = fig.subplots(1, 2, sharey=True), []  # one y-range, as in the paper, so panels compare
    for ax, column, what in zip(axes, ["train_error", "test_error"], ["training", "test"]):
        for model, run in picked.items():
            m = data[model].dropna(subset=[column])
            ax.plot(m.iteration / scale, m[column], color=_color(model), lw=1.5, label=_label(run, picked))
            values += m[column].tolist()  # the whole curve stays in view, not only where it ends
        ax.set(xlabel=_xlabel(scale), ylabel=f"{what} error (%)", title=f"{what} error")
        ax.yaxis.set_tick_params(labelleft=True)
        _legend(ax)
    _ylim(axes[0], (0, 20), values, notes)
    return fig


def _fig4(picked, data, notes, commands) -> Figure:
    fig = Figure(figsize=(10, 4), layout="constrained")
    scale = _scale(data)
    panels = [("plain", ["plain18", "plain34"]), ("ResNet", ["resnet18-A", "resnet34-A"])]
    for ax, (title, models) in zip(fig.subplots(1, 2), panels):
        finals = [v for m in models if m in picked for v in _curves(ax, m, picked, data, scale, train_ls="-")]
        ax.set(xlabel=_xlabel(scale), ylabel="error (%)", title=title)
        _ylim(ax, (20, 60), finals, notes)
        _legend(ax) or _empty(ax, models, commands)
    return fig


def _fig6(picked, data, notes, commands) -> Figure:
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    scale = _scale(data)
    panels = [("plain", [*PLAIN[:4], "plain110"]), ("ResNet", RESNET),
              ("ResNet-110 vs 1202", ["resnet110-A", "resnet1202-A"])]
    axes, finals = fig.subplots(1, 3, sharey=True), []  # one y-range, as in the paper, so panels compare
    for ax, (title, models) in zip(axes, panels):
        for m in (m for m in models if m in picked):
            ends = _curves(ax, m, picked, data, scale, train_ls="--")
            finals += [] if m == "plain110" else ends  # plain-110 may leave the chart, as in the paper
        ax.set(xlabel=_xlabel(scale), ylabel="error (%)", title=title)
        ax.yaxis.set_tick_params(labelleft=True)
        _legend(ax) or _empty(ax, models, commands)
    top = _ylim(axes[0], (0, 20), finals, notes)
    last = data["plain110"].test_error.dropna() if "plain110" in picked else []
    if len(last) and last.iloc[-1] > top:
        notes.append(f"plain-110 ends at {last.iloc[-1]:.1f}% test error, above the chart (as in the paper)")
    return fig


# Fig. 7 draws plain and ResNet twins together: one colour per net (not per depth), plain dashed.
_FIG7_COLORS = {"plain20": "C1", "plain56": "k", "resnet20-A": "C0", "resnet56-A": "C3", "resnet110-A": "C4"}


def _fig7(picked, data, notes, commands) -> Figure:
    fig = Figure(figsize=(8, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1)
    stds = []
    for model, run in picked.items():
        r = data[model].dropna(subset=["std"]).sort_values("layer")
        style = dict(color=_FIG7_COLORS.get(model, _color(model)), marker=".", ms=4, lw=1.2,
                     ls="--" if run.arch == "plain" else "-", label=_label(run, picked))
        top.plot(r.layer, r["std"], **style)
        bottom.plot(range(1, len(r) + 1), r["std"].sort_values(ascending=False), **style)
        stds += r["std"].tolist()
    top.set(xlabel="layer index (original)", ylabel="std (log scale)", title="in network order")
    bottom.set(xlabel="layer index (sorted by magnitude)", ylabel="std (log scale)", title="sorted, largest first")
    # a log axis keeps plain-56's first layers (std up to ~8) from flattening the curves near 1
    stds = [v for v in stds if v > 0 and math.isfinite(v)] or [1.0]
    lo, hi = min(stds) / 1.25, max(stds) * 1.25
    ticks = [t for t in (0.125, 0.25, 0.5, 1, 2, 4, 8, 16, 32) if lo <= t <= hi]
    for ax in (top, bottom):
        ax.set_yscale("log")
        ax.set_ylim(lo, hi)
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        _legend(ax)
    notes.append("Each net is drawn from one run, its lowest seed (named above); results/README.md judges "
                 "Fig. 7's claims on these same runs")
    return fig


_DRAW = {"fig1": _fig1, "fig4": _fig4, "fig6": _fig6, "fig7": _fig7}


def _curves(ax, model, picked, data, scale, train_ls) -> list[float]:
    """Training error thin, test error bold, one colour per net; returns the final values."""
    m = data[model]
    test = m.dropna(subset=["test_error"])
    ax.plot(m.iteration / scale, m.train_error, color=_color(model), ls=train_ls, lw=0.8)
    ax.plot(test.iteration / scale, test.test_error, color=_color(model), lw=2.2, label=_label(picked[model], picked))
    return m.train_error.dropna().tail(1).tolist() + test.test_error.tail(1).tolist()


# One colour per depth, so a net keeps its colour across panels and figures.
_COLORS = {"20": "C0", "32": "C1", "44": "C2", "56": "C3", "110": "C4", "1202": "C5", "18": "C0", "34": "C3"}


def _color(model: str) -> str:
    return _COLORS.get(str(ModelSpec.parse(model).depth), "k")


def _label(run, picked) -> str:
    label = pretty(run.model)
    if len({r.profile for r in picked.values()}) > 1:  # say which curve is which schedule
        label += f" [{run.profile}]"
    if len({r.dataset for r in picked.values()}) > 1:  # and which data
        label += f" [{run.data_title}]"
    if run.status == "failed":
        return label + " (failed)"
    return label if run.status == "finished" else label + " (partial)"


def _empty(ax, models: list[str], commands: dict[str, str]) -> None:
    """A panel none of whose nets has a run: say so and how to make them, instead of a bare axis."""
    todo = list(dict.fromkeys(commands[m] for m in models if m in commands))
    ax.set_xticks([])
    ax.text(0.5, 0.5, "\n".join(["no runs yet", *todo]), transform=ax.transAxes, ha="center", va="center",
            fontsize=7.5, color="0.35", wrap=True)


def _setting(picked: dict) -> str:
    """The title's second line: profile, schedule length and data of the runs drawn."""
    schedules = dict.fromkeys(_schedule_title(r) for r in picked.values())
    datasets = dict.fromkeys(r.data_title for r in picked.values())
    return f"{' / '.join(schedules)}; data: {' and '.join(datasets)}"


def _schedule_title(run) -> str:
    n = run.iterations
    length = "" if pd.isna(n) else f", {n / 1000:g}k iterations" if n >= 1000 else f", {int(n)} iterations"
    return f"profile {run.profile}{length}" + (" (the paper's schedule)" if run.full_schedule else "")


def _legend(ax) -> bool:
    """A legend if the panel has curves; False for a panel with none of its nets yet."""
    if not ax.get_legend_handles_labels()[0]:
        return False
    ax.legend(fontsize=8)
    return True


def _scale(data: dict) -> float:
    """The paper's axes are in 1e4 iterations; far shorter runs keep plain iteration counts."""
    longest = max((d.iteration.max() for d in data.values() if "iteration" in d and len(d)), default=0)
    return 1e4 if longest >= 1e4 else 1


def _xlabel(scale: float) -> str:
    return "iter. (1e4)" if scale > 1 else "iterations"


def _ylim(ax, paper: tuple[float, float], values: list[float], notes: list[str]) -> float:
    """The paper's y-range, widened (and said so) to fit `values`: where curves end, or whole curves."""
    lo, hi = paper
    values = [v for v in values if math.isfinite(v)]  # a diverged run may log NaN or inf
    if values and min(values) < lo:
        lo = 0
    if values and max(values) > hi:
        hi = min(100, 10 * math.ceil((max(values) + 5) / 10))
    if (lo, hi) != paper:
        note = f"y-axis widened from the paper's {paper[0]:g}-{paper[1]:g}% to {lo:g}-{hi:g}% to fit these runs"
        if note not in notes:
            notes.append(note)
    ax.set_ylim(lo, hi)
    return hi


def _caption(fig: Figure, title: str, picked: dict, missing: list[str], notes: list[str]) -> None:
    """Suptitle plus a caption under the axes: schedule, data and seed of every run drawn."""
    groups: dict[tuple[str, str], list[str]] = {}
    for model, run in picked.items():
        text = f"{pretty(model)} seed {int(run.seed)}"
        if run.status != "finished":
            text += f" ({run.status}, {_it(run.iterations_done)}/{_it(run.iterations)} iterations)"
        groups.setdefault((schedule_text(run), dataset_text(run) or run.dataset), []).append(text)
    lines = [f"{', '.join(items)}: {schedule}; data {dataset}." for (schedule, dataset), items in groups.items()]
    lines += [f"Not drawn, no data yet: {', '.join(pretty(m) for m in missing)}."] if missing else []
    lines += [f"{n}." for n in notes]
    width = int(fig.get_figwidth() * 15)
    wrapped = [w for line in lines for w in textwrap.wrap(line, width)]
    height = (len(wrapped) * 0.14 + 0.1) / fig.get_figheight()
    fig.get_layout_engine().set(rect=(0, height, 1, 1 - height))
    fig.suptitle(title, fontsize=11)
    fig.text(0.01, height - 0.02 / fig.get_figheight(), "\n".join(wrapped), va="top", fontsize=7.5)


def _it(value) -> str:
    return "?" if pd.isna(value) else f"{int(value):,}"
