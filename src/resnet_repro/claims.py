"""The paper's claims (Fig. 1, 6, 7, Tables 2 and 6) judged from our finished runs, one setting at a time.

A claim compares means over seeds of finished, unaltered runs within one profile and one dataset,
the paper's schedule first, and says what it judged on; with too few runs it says what is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import pandas as pd

from .paper import CIFAR_DEPTHS
from .results import FULL_DATASETS, dataset_text, finished, rank_profiles, schedule_text
from .spec import ModelSpec


def cifar_net(arch: str, depth: int) -> str:
    """The run name of a CIFAR-10 net of Table 6 and Fig. 6/7 (option A)."""
    return ModelSpec("cifar", arch, depth).name


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
    numbers = ", ".join(f"{ModelSpec.parse(m).pretty} {v:.2f}{unit}" for m, v in means.items())
    where = f"profile `{run.profile}`: {schedule_text(run)}"
    if dataset_text(run.dataset):
        where += f", {dataset_text(run.dataset)}"
    return Claim(holds, f"{what}: {numbers} (mean over seeds; {where})")


def _greater(runs: pd.DataFrame, high: str, low: str, column: str, what: str) -> Claim:
    picked = _means(runs, [high, low], column)
    if picked is None:
        high_name, low_name = ModelSpec.parse(high).pretty, ModelSpec.parse(low).pretty
        return Claim(None, f"needs finished {high_name} and {low_name} runs in one profile")
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
    models = [cifar_net(arch, d) for d in CIFAR_DEPTHS]
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
    pairs = [(cifar_net("plain", d), cifar_net("resnet", d)) for d in CIFAR_DEPTHS]
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
    models = [cifar_net("resnet", d) for d in (20, 56, 110)]
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
