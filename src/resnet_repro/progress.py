"""How far the paper's CIFAR-10 schedule on the original pixels has got: each run Table 6 needs
(every depth, ResNet-110 over five seeds as the paper reports it, the plain twins) and the two controls
on ResNet-20 (fp32, BN over 64), as finished, running or not run with its estimated cost; and what the
controls have shown wherever both sides of one have finished. A section of results/README.md."""

from __future__ import annotations

import math
from typing import NamedTuple

import pandas as pd

from .claims import ERROR_SPREAD, Net, seed_spread
from .runs import finished
from .tables import cost_basis, fastest_gpu_resnet20, paper_schedule_hours


class Wanted(NamedTuple):
    model: str
    variant: str  # "" for the paper's recipe, else the run id tag of the control
    seeds: int
    why: str


PLAN = [
    Wanted("resnet20-A", "", 3, "Table 6; three seeds measure the noise every other gap is judged against"),
    Wanted("resnet20-A", "fp32", 1, "control: bf16 against the paper's fp32"),
    Wanted("resnet20-A", "bn64", 1, "control: BN statistics over 64 images, as on the paper's two GPUs"),
    Wanted("resnet32-A", "", 1, "Table 6"),
    Wanted("resnet44-A", "", 1, "Table 6"),
    Wanted("resnet56-A", "", 1, "Table 6, Fig. 6"),
    Wanted("resnet110-A", "", 5, "Table 6: best (mean±std) of 5 runs"),
    Wanted("resnet1202-A", "", 1, "Table 6"),
    *(Wanted(f"plain{d}", "", 1, "Fig. 6 (the plain twins)") for d in (20, 32, 44, 56)),
]
CONTROLS = {"fp32": "fp32 (engine.precision=fp32)", "bn64": "BN over 64 (model.bn_group=64)"}


def original_paper_runs(runs: pd.DataFrame) -> pd.DataFrame:
    if runs.empty:
        return runs
    return runs[(runs.profile == "paper") & (runs.dataset == "cifar10") & ~runs.ensemble.astype(bool)]


def progress_section(runs: pd.DataFrame, bench: pd.DataFrame) -> list[str]:
    ours, fastest = original_paper_runs(runs), fastest_gpu_resnet20(bench)
    lines = ["Goal: every run below at the `paper` profile on the pixel-exact CIFAR-10 (`cifar10`). A run "
             "not yet trained shows what it would cost on one GPU, estimated" + (" (basis below)." if fastest is
                                                                                 not None else "; no GPU measured yet."),
             "", "| run | why | wanted | finished | test error (%) | in progress | not run yet |",
             "|---|---|---:|---:|---|---|---|"]
    for w in PLAN:
        mine = ours[(ours.model == w.model) & (ours.variant == w.variant)] if len(ours) else ours
        done = finished(mine) if len(mine) else mine
        errors = ", ".join(f"{e:.2f}" for e in done.final_test_error) if len(done) else ""
        going = mine[mine.status != "finished"] if len(mine) else mine
        running = ", ".join(f"{r.run_id} {int(r.iterations_done or 0):,}/{int(r.iterations or 0):,} it on "
                            f"{_short_device(r.device)}" for r in going.itertuples())
        left = max(0, w.seeds - len(done) - len(going))
        cost = ""
        if left and fastest is not None:
            hours = paper_schedule_hours(w.model, fastest)
            cost = f"{left} x about {_duration(hours)}" + (" (in bf16; fp32 is slower)" if w.variant == "fp32" else "")
        elif left:
            cost = f"{left}"
        name = w.model + (f", {CONTROLS[w.variant]}" if w.variant else "")
        lines.append(f"| {name} | {w.why} | {w.seeds} | {len(done)} | {errors} | {running} | {cost} |")
    if fastest is not None:
        lines += ["", cost_basis(fastest)]
    lines += ["", "What the controls showed (finished ResNet-20 runs with and without the change, in the same "
                  "profile and data):", ""]
    lines += control_lines(runs) or ["- Nothing yet: no setting has finished runs on both sides of a control."]
    return lines


def control_lines(runs: pd.DataFrame) -> list[str]:
    """For each control and each (profile, dataset) where both it and the plain recipe finished on
    ResNet-20: both errors and whether the gap is beyond the seed noise of the two means."""
    if runs.empty:
        return []
    done = finished(runs)
    done = done[(done.model == "resnet20-A") & ~done.ensemble.astype(bool)]
    out = []
    for variant, label in CONTROLS.items():
        for (profile, dataset), g in done.groupby(["profile", "dataset"]):
            base = Net("resnet20-A", tuple(g[g.variant == ""].final_test_error))
            ctrl = Net("resnet20-A", tuple(g[g.variant == variant].final_test_error))
            if not base.n or not ctrl.n:
                continue
            sigma, _ = seed_spread([base, ctrl], ERROR_SPREAD)
            seeded = [f"{n} over {x.n} seeds" for n, x in (("without", base), ("with", ctrl)) if x.n > 1]
            source = f"seed spread {' and '.join(seeded)}" if seeded else f"assumed seed std {ERROR_SPREAD:g}"
            tolerance = sigma * math.sqrt(1 / base.n + 1 / ctrl.n)
            gap = ctrl.mean - base.mean
            verdict = "within" if abs(gap) <= tolerance else "beyond"
            schedule = g.iloc[0].profile_label + ("" if g.iloc[0].full_schedule else ", not the paper's schedule")
            out.append(f"- {label}, profile `{profile}` ({schedule}), {dataset}: {_net(ctrl)} against "
                       f"{_net(base)} without it: {abs(gap):.2f} points {'lower' if gap < 0 else 'higher'}, "
                       f"{verdict} the seed noise (tolerance ±{tolerance:.2f}, {source}).")
    return out


def _net(net: Net) -> str:
    return f"{net.mean:.2f}% (mean of {net.n})" if net.n > 1 else f"{net.values[0]:.2f}%"


def _duration(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"


def _short_device(device: str) -> str:
    return "CPU" if str(device).startswith("cpu") else str(device)
