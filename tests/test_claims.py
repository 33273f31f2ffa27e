"""The paper's claims judged from synthetic run directories, one setting at a time, against the noise."""

import pytest
from rundirs import make_run

from resnet_repro import claims
from resnet_repro.claims import FAILS, HOLDS, INCONCLUSIVE, NO_DATA
from resnet_repro.runs import load_runs


def judge(tmp_path, check, *specs):
    """Build runs from (profile, model, kwargs) and judge them."""
    for profile, model, kwargs in specs:
        make_run(tmp_path / "runs", profile, model, **kwargs)
    return check(load_runs(tmp_path / "runs"))


@pytest.mark.parametrize("check, column", [
    (claims.plain_deeper_trains_worse, "final_train_error"),
    (claims.plain_deeper_tests_worse, "final_error"),
])
@pytest.mark.parametrize("e20, e56, expected", [(6.0, 9.0, HOLDS), (9.0, 6.0, FAILS), (6.0, 6.2, INCONCLUSIVE)])
def test_plain_degradation_claims(tmp_path, check, column, e20, e56, expected):
    other = "final_error" if column == "final_train_error" else "final_train_error"
    claim = judge(tmp_path, check, ("budget", "plain20", {column: e20, other: 7.5}),
                  ("budget", "plain56", {column: e56, other: 7.5}))
    assert claim.verdict == expected
    assert f"plain-56 {e56:.2f}%, plain-20 {e20:.2f}%" in claim.evidence
    assert "profile `budget`" in claim.evidence and "not the paper's schedule" in claim.evidence
    # one run a side: the tolerance comes from the stated assumed spread, √2 x 0.16
    assert f"tolerance ±{claims.ERROR_SPREAD * 2 ** 0.5:.2f} (assumed seed std {claims.ERROR_SPREAD:g})" \
        in claim.evidence


def test_claims_are_judged_within_one_profile_only(tmp_path):
    claim = judge(tmp_path, claims.plain_deeper_tests_worse, ("paper", "plain20", {"final_error": 6.0}),
                  ("budget", "plain56", {"final_error": 9.0}))
    assert claim.verdict == NO_DATA and "plain-56 and plain-20" in claim.evidence


def test_claims_prefer_the_paper_schedule_and_take_the_tolerance_from_seeds(tmp_path):
    claim = judge(tmp_path, claims.plain_deeper_tests_worse,
                  ("budget", "plain20", {"final_error": 20.0}), ("budget", "plain56", {"final_error": 10.0}),
                  ("paper", "plain20", {"final_error": 7.0}), ("paper", "plain56", {"final_error": 9.0}),
                  ("paper", "plain56", {"final_error": 9.2, "seed": 1}))
    assert claim.verdict == HOLDS and "plain-56 9.10% (mean of 2), plain-20 7.00%" in claim.evidence
    # pooled std 0.141 over plain-56's two seeds, times √(1/2 + 1/1)
    assert "beyond the tolerance ±0.17 (seed spread of plain-56 over 2 seeds)" in claim.evidence


def test_a_gap_inside_the_seed_spread_is_inconclusive(tmp_path):
    claim = judge(tmp_path, claims.plain_deeper_tests_worse,
                  ("paper", "plain20", {"final_error": 7.0}), ("paper", "plain20", {"final_error": 9.0, "seed": 1}),
                  ("paper", "plain56", {"final_error": 9.0}))
    assert claim.verdict == INCONCLUSIVE and "within the tolerance" in claim.evidence


def test_claims_prefer_full_data_to_a_sample_in_one_profile(tmp_path):
    claim = judge(tmp_path, claims.plain_deeper_tests_worse,
                  ("smoke", "plain20", {"final_error": 50.0, "dataset": "cifar10_sample", "seed": 1}),
                  ("smoke", "plain56", {"final_error": 40.0, "dataset": "cifar10_sample", "seed": 1}),
                  ("smoke", "plain20", {"final_error": 30.0}), ("smoke", "plain56", {"final_error": 35.0}))
    assert claim.verdict == HOLDS and "plain-56 35.00%, plain-20 30.00%" in claim.evidence


def test_unfinished_runs_do_not_decide_claims(tmp_path):
    claim = judge(tmp_path, claims.plain_deeper_tests_worse, ("paper", "plain20", {}),
                  ("paper", "plain56", {"status": "running"}))
    assert claim.verdict == NO_DATA


def test_a_precision_control_keeps_the_recipe_and_original_pixels_come_first(tmp_path):
    """resnet20-A-seed0-fp32 (engine.precision=fp32) on the original pixels is a paper-schedule ResNet-20:
    judged before the JPEG copy; a BN-grouping variant changes the recipe and is left out."""
    paper = {"full_schedule": True}
    runs = tmp_path / "runs"
    make_run(runs, "paper", "resnet20-A", variant="fp32", final_error=8.3, amp=False, **paper)
    make_run(runs, "paper", "resnet32-A", final_error=7.6)
    make_run(runs, "paper", "resnet32-A", variant="bn64", final_error=9.9, **paper)
    make_run(runs, "paper", "resnet20-A", dataset="cifar10_jpeg90", final_error=9.6)
    make_run(runs, "paper", "resnet32-A", dataset="cifar10_jpeg90", final_error=8.3)
    judged = claims.judge_by_setting(load_runs(runs), claims.resnet_error_falls_with_depth)
    assert [c.verdict for c in judged] == [HOLDS, HOLDS]
    assert "ResNet-20 8.30%, ResNet-32 7.60%" in judged[0].evidence and "cifar10_jpeg90" not in judged[0].evidence
    assert "20→32 only" in judged[0].evidence and "cifar10_jpeg90" in judged[1].evidence
    # with an untagged run of the same net, the precision control steps aside
    make_run(runs, "paper", "resnet20-A", final_error=8.9)
    assert "ResNet-20 8.90%," in claims.resnet_error_falls_with_depth(load_runs(runs)).evidence


@pytest.mark.parametrize("errors, expected", [
    ({20: 8.8, 32: 7.6, 44: 7.2, 56: 7.0, 110: 6.5}, HOLDS),  # 44→56 is inside the noise, the trend is not
    ({20: 8.8, 56: 7.0, 110: 7.15}, HOLDS),  # a rise within the tolerance
    ({20: 8.8, 56: 7.0, 110: 7.5}, FAILS),  # a rise beyond it
    ({20: 8.8, 32: 8.7}, INCONCLUSIVE),
    ({20: 8.8}, NO_DATA),
])
def test_resnet_error_falls_with_depth(tmp_path, errors, expected):
    specs = [("paper", f"resnet{d}-A", {"final_error": e}) for d, e in errors.items()]
    claim = judge(tmp_path, claims.resnet_error_falls_with_depth, *specs)
    assert claim.verdict == expected
    if expected != NO_DATA:
        assert f"ResNet-20 {errors[20]:.2f}%" in claim.evidence
        assert ("only" in claim.evidence) == (len(errors) < 5)
    if expected == FAILS:
        assert "ResNet-110 0.50 points above ResNet-56, beyond the tolerance" in claim.evidence


@pytest.mark.parametrize("errors, expected", [
    ({20: 17.5, 32: 30.0, 56: 57.1}, HOLDS),
    ({20: 17.5, 32: 17.4, 56: 57.1}, HOLDS),  # a step within the tolerance
    ({20: 17.5, 32: 12.0, 56: 57.1}, FAILS),
    ({56: 57.1}, NO_DATA),
])
def test_plain_training_error_rises_with_depth(tmp_path, errors, expected):
    specs = [("paper", f"plain{d}", {"final_train_error": e}) for d, e in errors.items()]
    claim = judge(tmp_path, claims.plain_training_error_rises_with_depth, *specs)
    assert claim.verdict == expected
    if expected == NO_DATA:
        assert "needs finished plain runs of at least two depths" in claim.evidence
    else:
        assert "final training error by depth, 20→32→56 only" in claim.evidence
        assert f"plain-56 {errors[56]:.2f}%" in claim.evidence


@pytest.mark.parametrize("resnet, plain, expected", [(0.5, 4.0, HOLDS), (4.0, 0.5, FAILS), (None, 4.0, NO_DATA)])
def test_resnet_trains_better_than_plain(tmp_path, resnet, plain, expected):
    specs = [("paper", "plain56", {"final_train_error": plain})]
    if resnet is not None:
        specs.append(("paper", "resnet56-A", {"final_train_error": resnet}))
    assert judge(tmp_path, claims.resnet_trains_better_than_plain, *specs).verdict == expected


@pytest.mark.parametrize("resnet, plain, expected", [
    (0.5, 2.0, HOLDS), (2.0, 0.5, FAILS), (0.98, 1.0, INCONCLUSIVE), (None, 2.0, NO_DATA)])
def test_resnet_responds_less_than_plain_per_layer(tmp_path, resnet, plain, expected):
    specs = [("paper", "plain20", {"responses": [plain] * 19}),
             ("paper", "resnet20-A", {"responses": None if resnet is None else [resnet] * 19})]
    claim = judge(tmp_path, claims.resnet_responds_less_than_plain, *specs)
    assert claim.verdict == expected
    if expected != NO_DATA:
        assert "per layer index, depth 20 only" in claim.evidence
        assert f"lower in {19 if resnet < plain else 0}/19 layers" in claim.evidence
        assert "assumed per-layer seed std 0.05" in claim.evidence
        assert "runs plain20-seed0, resnet20-A-seed0 (the lowest seed of each, as Fig. 7 draws)" in claim.evidence


def test_fig7_claims_judge_the_lowest_seed_within_the_seed_spread(tmp_path):
    """Mostly lower but by less than the seeds differ: inconclusive; ResNet-20's seeds give the tolerance."""
    plain = [1.0 + 0.1 * (i % 2) for i in range(19)]
    claim = judge(tmp_path, claims.resnet_responds_less_than_plain,
                  ("paper", "plain20", {"responses": plain}), ("paper", "plain56", {"responses": [3.0] * 55}),
                  ("paper", "resnet56-A", {"responses": [1.0] * 55}),
                  ("paper", "resnet20-A", {"responses": [v - 0.1 for v in plain]}),
                  ("paper", "resnet20-A", {"responses": [v + 0.3 for v in plain], "seed": 1}))
    assert claim.verdict == INCONCLUSIVE and "depth 20 and 56" in claim.evidence
    assert "ResNet-20 vs plain-20: lower in 19/19 layers (100%), on average 0.10 lower, within" in claim.evidence
    assert "seed spread of ResNet-20 over 2 seeds" in claim.evidence
    assert "ResNet-56 vs plain-56: lower in 55/55 layers" in claim.evidence and "resnet20-A-seed1" not in claim.evidence


@pytest.mark.parametrize("stds, expected", [
    ({20: 1.0, 56: 0.7, 110: 0.5}, HOLDS),
    ({20: 1.0, 110: 0.5}, HOLDS),
    ({20: 1.0, 56: 0.7, 110: 0.9}, FAILS),
    ({110: 0.5}, NO_DATA),
])
def test_deeper_resnet_responds_less(tmp_path, stds, expected):
    specs = [("paper", f"resnet{d}-A", {"responses": [s * (1 + i / d) for i in range(d - 1)]})
             for d, s in stds.items()]
    claim = judge(tmp_path, claims.deeper_resnet_responds_less, *specs)
    assert claim.verdict == expected
    if expected == HOLDS:
        assert "at equal relative rank" in claim.evidence and ("only" in claim.evidence) == (len(stds) < 3)


@pytest.mark.parametrize("errors, expected", [
    ({"plain18": 27.9, "plain34": 28.5, "resnet18-A": 27.9, "resnet34-A": 25.0}, HOLDS),
    ({"plain18": 27.9, "plain34": 26.0, "resnet18-A": 27.9, "resnet34-A": 25.0}, FAILS),
    ({"plain18": 27.9, "plain34": 28.5, "resnet18-A": 27.9}, NO_DATA),
])
def test_imagenet_depth_claim(tmp_path, errors, expected):
    specs = [("paper", m, {"final_error": e}) for m, e in errors.items()]
    assert judge(tmp_path, claims.imagenet_resnet34_beats_18_plain_does_not, *specs).verdict == expected


def test_imagenet_nets_near_chance_are_inconclusive(tmp_path):
    """The 400-iteration proxy: a 10-class ResNet-34 at 77% error has barely begun to learn."""
    errors = {"plain18": 53.3, "plain34": 81.5, "resnet18-A": 63.1, "resnet34-A": 77.0}
    specs = [("proxy", m, {"final_error": e, "dataset": "imagenette_64px_proxy"}) for m, e in errors.items()]
    claim = judge(tmp_path, claims.imagenet_resnet34_beats_18_plain_does_not, *specs)
    assert claim.verdict == INCONCLUSIVE
    assert "ResNet-34 is near chance (77.00% error, above 0.75 x chance's 90%)" in claim.evidence


def test_imagenet_depth_claim_reads_table2s_10crop_numbers(tmp_path):
    center = {"plain18": 27.9, "plain34": 26.0, "resnet18-A": 27.9, "resnet34-A": 25.0}  # does not hold
    ten_crop = {"plain18": 25.0, "plain34": 26.0, "resnet18-A": 25.0, "resnet34-A": 23.0}  # holds
    specs = [("paper", m, {"final_error": center[m], "final_eval": {"10crop": {"top1_error": ten_crop[m]}}})
             for m in center]
    claim = judge(tmp_path, claims.imagenet_resnet34_beats_18_plain_does_not, *specs)
    assert claim.verdict == HOLDS and "10-crop top-1 error" in claim.evidence and "plain-34 26.00%" in claim.evidence


@pytest.mark.parametrize("parts, expected", [
    ([HOLDS, HOLDS], HOLDS), ([HOLDS, INCONCLUSIVE], INCONCLUSIVE), ([INCONCLUSIVE, FAILS], FAILS), ([], INCONCLUSIVE)])
def test_combine(parts, expected):
    assert claims.combine(parts) == expected


def test_a_damaged_responses_file_leaves_only_fig7_without_the_run(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "paper", "plain20", responses=[2.0] * 19)
    damaged = make_run(runs, "paper", "resnet20-A", responses=[0.5] * 19, final_train_error=1.0)
    (damaged / "responses.csv").write_text("layer,std\n1,0.5\n2,")  # cut short
    table = load_runs(runs)
    assert table.unreadable.tolist() == ["", "responses.csv"]  # the README and the CLI name it
    assert claims.resnet_responds_less_than_plain(table).verdict == NO_DATA
    make_run(runs, "paper", "plain56", final_train_error=50.0)
    make_run(runs, "paper", "resnet56-A", final_train_error=1.0)
    assert claims.resnet_trains_better_than_plain(load_runs(runs)).verdict == HOLDS
