"""The paper's claims (Fig. 1, 6, 7, Tables 2 and 6) judged from our finished runs, one setting at a time.

A claim compares finished runs of the paper's recipe within one profile and one dataset, the paper's
schedule on the original pixels first, and says which nets and runs it used. A gap counts only when it
is larger than the noise: the seed spread where a net compared has several seeds, else an assumed
spread, stated. Verdicts: holds, does not hold, inconclusive (a gap inside the noise, or a net still
near chance), or not enough data.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pandas as pd

from . import paper
from .paper import CIFAR_DEPTHS
from .results import RunDir
from .runs import dataset_text, finished, ranked_runs, recipe_rank, schedule_text
from .spec import ModelSpec, pretty

HOLDS, FAILS, INCONCLUSIVE, NO_DATA = "holds", "does not hold", "inconclusive", "not enough data"

# Seed stds assumed where no net compared has two seeds. Errors: the paper's own spread over five
# ResNet-110 runs (Table 6). Layer responses: about twice the per-layer spread of ResNet-20's three
# budget seeds (0.026).
ERROR_SPREAD = paper.TABLE6_MEAN_STD["resnet110-A"][1]
RESPONSE_SPREAD = 0.05
# An error above 3/4 of chance's: the net has barely begun to learn and ranks nothing yet.
NEAR_CHANCE = 0.75
FIG7_PAIRS = (20, 56)  # the plain/ResNet twins Fig. 7 draws
FIG7_RESNETS = (20, 56, 110)


def cifar_net(arch: str, depth: int) -> str:
    """The run name of a CIFAR-10 net of Table 6 and Fig. 6/7 (option A)."""
    return ModelSpec("cifar", arch, depth).name


class Claim(NamedTuple):
    verdict: str  # HOLDS, FAILS, INCONCLUSIVE or NO_DATA
    evidence: str  # the numbers judged on, the runs and their setting, or what is missing


class Net(NamedTuple):
    """One net's value in one setting, over its finished seeds."""

    model: str
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else math.nan


def settings(runs: pd.DataFrame) -> list[pd.DataFrame]:
    """Finished runs of the paper's recipe, one frame per (profile, dataset), best first: the paper's
    schedule, then the full data (original pixels before a lossy copy or a sample). A precision
    control stands in for its net only where that net has no untagged run in the setting."""
    pool = finished(runs)
    pool = ranked_runs(pool[(pool.variant.map(recipe_rank) <= 1) & ~pool.ensemble])
    out = []
    for _, sub in pool.groupby(["profile", "dataset"], sort=False):
        out.append(sub[(sub.variant == "") | ~sub.model.isin(set(sub.model[sub.variant == ""]))])
    return out


def _pick(runs: pd.DataFrame, models: list[str], column: str,
          enough: Callable[[dict], bool] | None = None) -> tuple[pd.DataFrame, dict[str, Net]] | None:
    """The first setting whose nets with a `column` value are `enough` (default: all `models`)."""
    enough = enough or (lambda nets: len(nets) == len(models))
    for sub in settings(runs):
        sub = sub[sub.model.isin(models)].dropna(subset=[column])
        nets = {m: Net(m, tuple(sub[sub.model == m][column])) for m in models if (sub.model == m).any()}
        if enough(nets):
            return sub, nets
    return None


def _where(setting: pd.DataFrame) -> str:
    run = setting.iloc[0]
    where = f"profile `{run.profile}`: {schedule_text(run)}"
    return where + (f", {dataset_text(run)}" if dataset_text(run) else "")


def _chance(setting: pd.DataFrame) -> float | None:
    classes = setting.iloc[0].classes
    return 100 * (1 - 1 / classes) if pd.notna(classes) and classes else None


def seed_spread(nets: list[Net], assumed: float) -> tuple[float, str]:
    """Pooled seed std of the nets with several seeds, else `assumed`; and where it came from."""
    seeded = [x for x in nets if x.n > 1]
    if not seeded:
        return assumed, f"assumed seed std {assumed:g}"
    dof = sum(x.n - 1 for x in seeded)
    sigma = math.sqrt(sum((x.n - 1) * x.std ** 2 for x in seeded) / dof)
    return sigma, _seeds(seeded)


def _seeds(seeded) -> str:
    return "seed spread of " + " and ".join(f"{pretty(x.model)} over {x.n} seeds" for x in seeded)


def _compare(better: Net, worse: Net, chance: float | None) -> tuple[str, str]:
    """Is `better`'s mean below `worse`'s by more than the noise of the two means? (verdict, why)"""
    if chance and better.mean > NEAR_CHANCE * chance:
        return INCONCLUSIVE, (f"{pretty(better.model)} is near chance ({better.mean:.2f}% error, above "
                              f"{NEAR_CHANCE:g} x chance's {chance:.0f}%)")
    sigma, source = seed_spread([better, worse], ERROR_SPREAD)
    tolerance = sigma * math.sqrt(1 / better.n + 1 / worse.n)
    gap = worse.mean - better.mean
    verdict = HOLDS if gap > tolerance else FAILS if gap < -tolerance else INCONCLUSIVE
    side = "below" if gap > 0 else "above"
    return verdict, (f"{pretty(better.model)} {abs(gap):.2f} points {side} {pretty(worse.model)}, "
                     f"{'within' if verdict == INCONCLUSIVE else 'beyond'} the tolerance ±{tolerance:.2f} ({source})")


def combine(verdicts: list[str]) -> str:
    """Every part must hold; one part that fails fails the claim; anything else is inconclusive."""
    if FAILS in verdicts:
        return FAILS
    return HOLDS if verdicts and all(v == HOLDS for v in verdicts) else INCONCLUSIVE


def _values(nets: dict[str, Net], unit: str = "%") -> str:
    return ", ".join(f"{pretty(m)} {x.mean:.2f}{unit}" + (f" (mean of {x.n})" if x.n > 1 else "")
                     for m, x in nets.items())


def _greater(runs: pd.DataFrame, worse: str, better: str, column: str, what: str) -> Claim:
    picked = _pick(runs, [worse, better], column)
    if picked is None:
        return Claim(NO_DATA, f"needs finished {pretty(worse)} and {pretty(better)} runs in one profile")
    setting, nets = picked
    verdict, why = _compare(nets[better], nets[worse], _chance(setting))
    return Claim(verdict, f"{what}: {_values(nets)}; {why} ({_where(setting)})")


def plain_deeper_trains_worse(runs: pd.DataFrame) -> Claim:
    return _greater(runs, "plain56", "plain20", "final_train_error", "final training error")


def plain_deeper_tests_worse(runs: pd.DataFrame) -> Claim:
    return _greater(runs, "plain56", "plain20", "final_test_error", "final test error")


def resnet_trains_better_than_plain(runs: pd.DataFrame) -> Claim:
    return _greater(runs, "plain56", "resnet56-A", "final_train_error", "final training error")


def _depths_used(nets: dict[str, Net], models: list[str]) -> str:
    depths = "→".join(str(ModelSpec.parse(m).depth) for m in nets)
    return depths if len(nets) == len(models) else f"{depths} only"


def _trend_with_depth(runs: pd.DataFrame, arch: str, column: str, what: str, rising: bool) -> Claim:
    """`column` rising (or falling) with depth over 20..110: the deepest net beyond the shallowest by
    more than the noise, and no step between neighbours going the other way by more than the noise."""
    name = "plain" if arch == "plain" else "ResNet"
    models = [cifar_net(arch, d) for d in CIFAR_DEPTHS]
    picked = _pick(runs, models, column, enough=lambda nets: len(nets) >= 2)
    if picked is None:
        return Claim(NO_DATA, f"needs finished {name} runs of at least two depths among 20/32/44/56/110 in one "
                              "profile")
    setting, nets = picked
    chance, ordered = _chance(setting), list(nets.values())  # by depth
    if rising:
        ordered.reverse()
    # each net should be below the one before it in `ordered`
    steps = [_compare(b, a, chance) for a, b in itertools.pairwise(ordered)]
    ends = _compare(ordered[-1], ordered[0], chance)
    verdict = FAILS if FAILS in [v for v, _ in steps] else ends[0]
    shown = [why for v, why in steps if v != HOLDS] or [ends[1]]
    return Claim(verdict, f"{what} by depth, {_depths_used(nets, models)}: {_values(nets)}; "
                          f"{'; '.join(shown)} ({_where(setting)})")


def resnet_error_falls_with_depth(runs: pd.DataFrame) -> Claim:
    return _trend_with_depth(runs, "resnet", "final_test_error", "final test error", rising=False)


def plain_training_error_rises_with_depth(runs: pd.DataFrame) -> Claim:
    return _trend_with_depth(runs, "plain", "final_train_error", "final training error", rising=True)


# ------------------------------------------------------------------------------- Fig. 7, per layer


class Responses(NamedTuple):
    """One net's per-layer response stds in one setting: the lowest seed's (the run Fig. 7 draws)
    and the seed spread per layer over all its seeds (NaN with one seed)."""

    model: str
    run_id: str
    stds: np.ndarray
    n: int
    spread: float


def _responses(setting: pd.DataFrame, model: str) -> Responses | None:
    sub = setting[(setting.model == model) & setting.mean_response_std.notna()].sort_values("seed")
    curves = [RunDir(path).read_responses()["std"].to_numpy() for path in sub.path]
    if not curves:
        return None
    same = [c for c in curves if len(c) == len(curves[0])]
    spread = math.sqrt(np.var(same, axis=0, ddof=1).mean()) if len(same) > 1 else math.nan
    return Responses(model, sub.iloc[0].run_id, curves[0], len(same), spread)


def _layer_tolerance(nets: list[Responses]) -> tuple[float, str]:
    """Noise of one run's layer std minus another's: √2 x the pooled per-layer seed spread."""
    seeded = [x for x in nets if x.n > 1]
    if not seeded:
        return RESPONSE_SPREAD * math.sqrt(2), f"assumed per-layer seed std {RESPONSE_SPREAD}"
    sigma = math.sqrt(sum((x.n - 1) * x.spread ** 2 for x in seeded) / sum(x.n - 1 for x in seeded))
    return sigma * math.sqrt(2), _seeds(seeded)


def _per_layer(lower: np.ndarray, higher: np.ndarray, tolerance: float) -> tuple[str, str]:
    """Is `lower` below `higher` in most layers, and on average by more than the tolerance?"""
    below, layers, gap = int((lower < higher).sum()), len(lower), float(np.mean(higher - lower))
    if below > layers / 2 and gap > tolerance:
        verdict = HOLDS
    elif below < layers / 2 and gap < -tolerance:
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
    return verdict, (f"lower in {below}/{layers} layers ({100 * below / layers:.0f}%), on average {abs(gap):.2f} "
                     f"{'lower' if gap > 0 else 'higher'}, {'within' if abs(gap) <= tolerance else 'beyond'} the "
                     f"tolerance ±{tolerance:.2f}")


def _fig7_setting(runs: pd.DataFrame, models: list[str], enough: Callable[[dict], bool]):
    for setting in settings(runs):
        nets = {m: r for m in models if (r := _responses(setting, m)) is not None}
        if enough(nets):
            return setting, nets
    return None


def _runs_used(nets: dict[str, Responses]) -> str:
    return "runs " + ", ".join(r.run_id for r in nets.values()) + " (the lowest seed of each, as Fig. 7 draws)"


def resnet_responds_less_than_plain(runs: pd.DataFrame) -> Claim:
    """Per layer index, ResNet-N against plain-N for the pairs Fig. 7 draws (20 and 56)."""
    pairs = [(cifar_net("plain", d), cifar_net("resnet", d)) for d in FIG7_PAIRS]
    picked = _fig7_setting(runs, [m for pair in pairs for m in pair],
                           lambda nets: any(p in nets and r in nets for p, r in pairs))
    if picked is None:
        return Claim(NO_DATA, "needs layer responses (responses.csv) of plain-20 and ResNet-20, or plain-56 and "
                              "ResNet-56, in one profile")
    setting, nets = picked
    verdicts, parts, used = [], [], []
    for p, r in pairs:
        if p in nets and r in nets:
            tolerance, source = _layer_tolerance([nets[p], nets[r]])
            verdict, counts = _per_layer(nets[r].stds, nets[p].stds, tolerance)
            verdicts.append(verdict)
            used.append(str(ModelSpec.parse(p).depth))
            parts.append(f"{pretty(r)} vs {pretty(p)}: {counts} ({source})")
    depths = " and ".join(used) + ("" if len(used) == len(pairs) else " only")
    return Claim(combine(verdicts), f"std of 3x3 layer responses, per layer index, depth {depths}: "
                                    f"{'; '.join(parts)}; {_runs_used(nets)} ({_where(setting)})")


def _sorted_at(deeper: np.ndarray, layers: int) -> np.ndarray:
    """The deeper net's stds sorted largest first, read at the shallower net's relative ranks."""
    values = np.sort(deeper)[::-1]
    return np.interp((np.arange(layers) + 0.5) / layers, (np.arange(len(values)) + 0.5) / len(values), values)


def deeper_resnet_responds_less(runs: pd.DataFrame) -> Claim:
    """Each deeper ResNet below the next shallower one at the same relative rank of the sorted curves
    (Fig. 7 bottom), in most of the shallower net's layers."""
    models = [cifar_net("resnet", d) for d in FIG7_RESNETS]
    picked = _fig7_setting(runs, models, lambda nets: len(nets) >= 2)
    if picked is None:
        return Claim(NO_DATA, "needs layer responses (responses.csv) of at least two of ResNet-20/56/110 in one "
                              "profile")
    setting, nets = picked
    ordered, verdicts, parts = list(nets.values()), [], []
    for shallow, deep in itertools.pairwise(ordered):
        tolerance, source = _layer_tolerance([shallow, deep])
        shallow_sorted = np.sort(shallow.stds)[::-1]
        verdict, counts = _per_layer(_sorted_at(deep.stds, len(shallow_sorted)), shallow_sorted, tolerance)
        verdicts.append(verdict)
        parts.append(f"{pretty(deep.model)} vs {pretty(shallow.model)}: {counts} ({source})")
    return Claim(combine(verdicts), f"sorted std of 3x3 layer responses at equal relative rank, "
                                    f"{_depths_used(nets, models)}: {'; '.join(parts)}; {_runs_used(nets)} "
                                    f"({_where(setting)})")


def imagenet_resnet34_beats_18_plain_does_not(runs: pd.DataFrame) -> Claim:
    """Judged on Table 2's 10-crop numbers where they were measured, else on the curves' own final top-1."""
    models = ["plain18", "plain34", "resnet18-A", "resnet34-A"]
    imagenet = runs[runs.family == "imagenet"]
    for column, what in (("final_10crop_error", "10-crop top-1 error"), ("final_test_error", "final top-1 error")):
        picked = _pick(imagenet, models, column)
        if picked is not None:
            setting, nets = picked
            chance = _chance(setting)
            parts = [_compare(nets["resnet34-A"], nets["resnet18-A"], chance),
                     _compare(nets["plain18"], nets["plain34"], chance)]
            return Claim(combine([v for v, _ in parts]), f"{what}: {_values(nets)}; "
                                                         f"{'; '.join(why for _, why in parts)} ({_where(setting)})")
    return Claim(NO_DATA, "needs finished ImageNet plain-18/34 and ResNet-18/34 (option A) runs in one profile")


def judge_by_setting(runs: pd.DataFrame, check: Callable[[pd.DataFrame], Claim]) -> list[Claim]:
    """`check` on each (profile, dataset) on its own, best setting first; the settings that cannot
    judge it are left out, and if none can, the one 'not enough data' answer remains."""
    claims = [check(setting) for setting in settings(runs)]
    return [c for c in claims if c.verdict != NO_DATA] or [check(runs)]


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
