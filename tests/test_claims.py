"""The paper's claims judged from synthetic run directories, one setting at a time."""

import pytest
from rundirs import make_run

from resnet_repro import claims
from resnet_repro.results import load_runs


def judge(tmp_path, check, *specs):
    """Build runs from (profile, model, kwargs) and judge them."""
    for profile, model, kwargs in specs:
        make_run(tmp_path / "runs", profile, model, **kwargs)
    return check(load_runs(tmp_path / "runs"))


@pytest.mark.parametrize("check, column", [
    (claims.plain_deeper_trains_worse, "final_train_error"),
    (claims.plain_deeper_tests_worse, "final_error"),
])
@pytest.mark.parametrize("e20, e56, expected", [(6.0, 9.0, True), (9.0, 6.0, False)])
def test_plain_degradation_claims(tmp_path, check, column, e20, e56, expected):
    other = "final_error" if column == "final_train_error" else "final_train_error"
    claim = judge(tmp_path, check, ("budget", "plain20", {column: e20, other: 7.5}),
                  ("budget", "plain56", {column: e56, other: 7.5}))
    assert claim.holds is expected
    assert f"plain-56 {e56:.2f}%, plain-20 {e20:.2f}%" in claim.evidence
    assert "profile `budget`" in claim.evidence and "not the paper's schedule" in claim.evidence


def test_claims_are_judged_within_one_profile_only(tmp_path):
    claim = judge(tmp_path, claims.plain_deeper_tests_worse, ("paper", "plain20", {"final_error": 6.0}),
                  ("budget", "plain56", {"final_error": 9.0}))
    assert claim.holds is None and "plain-56 and plain-20" in claim.evidence


def test_claims_prefer_the_paper_schedule_and_average_seeds(tmp_path):
    claim = judge(tmp_path, claims.plain_deeper_tests_worse,
                  ("budget", "plain20", {"final_error": 20.0}), ("budget", "plain56", {"final_error": 10.0}),
                  ("paper", "plain20", {"final_error": 7.0}), ("paper", "plain56", {"final_error": 7.5}),
                  ("paper", "plain56", {"final_error": 9.5, "seed": 1}))
    assert claim.holds is True and "plain-56 8.50%, plain-20 7.00%" in claim.evidence


def test_claims_prefer_full_data_to_a_sample_in_one_profile(tmp_path):
    claim = judge(tmp_path, claims.plain_deeper_tests_worse,
                  ("smoke", "plain20", {"final_error": 50.0, "dataset": "cifar10_sample", "seed": 1}),
                  ("smoke", "plain56", {"final_error": 40.0, "dataset": "cifar10_sample", "seed": 1}),
                  ("smoke", "plain20", {"final_error": 30.0}), ("smoke", "plain56", {"final_error": 35.0}))
    assert claim.holds is True and "plain-56 35.00%, plain-20 30.00%" in claim.evidence


def test_unfinished_runs_do_not_decide_claims(tmp_path):
    claim = judge(tmp_path, claims.plain_deeper_tests_worse, ("paper", "plain20", {}),
                  ("paper", "plain56", {"status": "running"}))
    assert claim.holds is None


@pytest.mark.parametrize("errors, expected", [
    ({20: 8.8, 32: 7.6, 44: 7.2, 56: 7.0, 110: 6.5}, True),
    ({20: 8.8, 56: 7.0, 110: 7.15}, True),  # within the 0.2-point tolerance
    ({20: 8.8, 56: 7.0, 110: 7.5}, False),
    ({20: 8.8}, None),
])
def test_resnet_error_falls_with_depth(tmp_path, errors, expected):
    specs = [("paper", f"resnet{d}-A", {"final_error": e}) for d, e in errors.items()]
    claim = judge(tmp_path, claims.resnet_error_falls_with_depth, *specs)
    assert claim.holds is expected
    if expected is not None:
        assert "tolerance 0.2 points" in claim.evidence and f"ResNet-20 {errors[20]:.2f}%" in claim.evidence


@pytest.mark.parametrize("errors, expected", [
    ({20: 17.5, 32: 30.0, 56: 57.1}, True),
    ({20: 17.5, 32: 17.4, 56: 57.1}, True),  # within the 0.2-point tolerance
    ({20: 17.5, 32: 12.0, 56: 57.1}, False),
    ({56: 57.1}, None),
])
def test_plain_training_error_rises_with_depth(tmp_path, errors, expected):
    specs = [("paper", f"plain{d}", {"final_train_error": e}) for d, e in errors.items()]
    claim = judge(tmp_path, claims.plain_training_error_rises_with_depth, *specs)
    assert claim.holds is expected
    if expected is None:
        assert "needs finished plain runs of at least two depths" in claim.evidence
    else:
        assert "final training error by depth" in claim.evidence and f"plain-56 {errors[56]:.2f}%" in claim.evidence


@pytest.mark.parametrize("resnet, plain, expected", [(0.5, 4.0, True), (4.0, 0.5, False), (None, 4.0, None)])
def test_resnet_trains_better_than_plain(tmp_path, resnet, plain, expected):
    specs = [("paper", "plain56", {"final_train_error": plain})]
    if resnet is not None:
        specs.append(("paper", "resnet56-A", {"final_train_error": resnet}))
    assert judge(tmp_path, claims.resnet_trains_better_than_plain, *specs).holds is expected


@pytest.mark.parametrize("resnet, plain, expected", [(0.5, 2.0, True), (2.0, 0.5, False), (None, 2.0, None)])
def test_resnet_responds_less_than_plain(tmp_path, resnet, plain, expected):
    specs = [("paper", "plain20", {"responses": [plain, plain]}),
             ("paper", "resnet20-A", {"responses": None if resnet is None else [resnet, resnet]})]
    claim = judge(tmp_path, claims.resnet_responds_less_than_plain, *specs)
    assert claim.holds is expected
    if expected is not None:
        assert f"plain-20 {plain:.2f}, ResNet-20 {resnet:.2f}" in claim.evidence


@pytest.mark.parametrize("stds, expected", [
    ({20: 1.0, 56: 0.7, 110: 0.5}, True),
    ({20: 1.0, 110: 0.5}, True),
    ({20: 1.0, 56: 0.7, 110: 0.9}, False),
    ({110: 0.5}, None),
])
def test_deeper_resnet_responds_less(tmp_path, stds, expected):
    specs = [("paper", f"resnet{d}-A", {"responses": [s, s]}) for d, s in stds.items()]
    assert judge(tmp_path, claims.deeper_resnet_responds_less, *specs).holds is expected


@pytest.mark.parametrize("errors, expected", [
    ({"plain18": 27.9, "plain34": 28.5, "resnet18-A": 27.9, "resnet34-A": 25.0}, True),
    ({"plain18": 27.9, "plain34": 26.0, "resnet18-A": 27.9, "resnet34-A": 25.0}, False),
    ({"plain18": 27.9, "plain34": 28.5, "resnet18-A": 27.9}, None),
])
def test_imagenet_depth_claim(tmp_path, errors, expected):
    specs = [("paper", m, {"final_error": e}) for m, e in errors.items()]
    assert judge(tmp_path, claims.imagenet_resnet34_beats_18_plain_does_not, *specs).holds is expected


def test_imagenet_depth_claim_reads_table2s_10crop_numbers(tmp_path):
    center = {"plain18": 27.9, "plain34": 26.0, "resnet18-A": 27.9, "resnet34-A": 25.0}  # does not hold
    ten_crop = {"plain18": 25.0, "plain34": 26.0, "resnet18-A": 25.0, "resnet34-A": 23.0}  # holds
    specs = [("paper", m, {"final_error": center[m], "final_eval": {"10crop": {"top1_error": ten_crop[m]}}})
             for m in center]
    claim = judge(tmp_path, claims.imagenet_resnet34_beats_18_plain_does_not, *specs)
    assert claim.holds is True and "10-crop top-1 error" in claim.evidence and "plain-34 26.00%" in claim.evidence


