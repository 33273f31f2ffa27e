"""Tables, README and the paper's claims from synthetic run directories; paper numbers come from paper.py."""

import statistics

import pandas as pd
import pytest
from rundirs import make_run

from resnet_repro import paper, report


def rows(table: pd.DataFrame, model: str) -> pd.DataFrame:
    return table[table.model == model]


def test_load_runs_reads_summaries_and_skips_foreign_files(runs):
    make_run(runs, "paper", "resnet20-A", final_error=8.5, responses=[1.0, 3.0])
    make_run(runs, "budget", "plain56", status="running", n_points=0)
    (runs / "paper" / "junk").mkdir()
    (runs / "paper" / "junk" / "summary.json").write_text("{not json")
    table = report.load_runs(runs).set_index("run_id")
    assert sorted(table.index) == ["plain56-seed0", "resnet20-A-seed0"]
    assert table.loc["resnet20-A-seed0", "final_test_error"] == 8.5
    assert table.loc["resnet20-A-seed0", "mean_response_std"] == 2.0
    assert pd.isna(table.loc["plain56-seed0", "final_test_error"])
    assert report.load_metrics(runs / "budget" / "plain56-seed0").empty
    assert report.load_runs(runs / "nowhere").empty


def test_table6_carries_the_papers_numbers_and_quoted_rows(runs):
    make_run(runs, "budget", "resnet20-A", final_error=10.0)
    table = report.table6(report.load_runs(runs))
    for model, number in paper.TABLE6.items():
        assert rows(table, model).paper_error.tolist() == [number]
    for method, number in paper.TABLE6_QUOTED.items():
        row = rows(table, method).iloc[0]
        assert row.note == "quoted" and row.paper_error == number and pd.isna(row.error_best)
    mean, std = paper.TABLE6_MEAN_STD["resnet110-A"]
    row = rows(table, "resnet110-A").iloc[0]
    assert (row.paper_error_mean, row.paper_error_std) == (mean, std)
    assert row.note == "missing: `resnet-repro sweep cifar --n 18 --arch resnet profile=budget`"
    assert row.params == paper.CIFAR_PARAMS[18]
    assert rows(table, "resnet1202-A").note.iloc[0].startswith("missing: `resnet-repro run resnet1202")
    ours = rows(table, "resnet20-A").iloc[0]
    assert ours.error_best == 10.0 and ours.diff_error == pytest.approx(10.0 - paper.TABLE6["resnet20-A"])
    assert ours.profile == "budget" and "not the paper's schedule" in ours.profile_label


def test_mean_and_std_of_three_seeds(runs, results):
    errors = [6.5, 6.7, 7.1]
    for seed, err in enumerate(errors):
        make_run(runs, "paper", "resnet110-A", seed=seed, final_error=err)
    report.write_tables(runs, results, tables=["table6"])
    row = rows(pd.read_csv(results / "table6.csv"), "resnet110-A").iloc[0]
    assert row.n_runs == 3 and row.seeds == "0 1 2"
    assert row.error_best == 6.5
    assert row.error_mean == pytest.approx(statistics.mean(errors), abs=1e-3)
    assert row.error_std == pytest.approx(statistics.stdev(errors), abs=1e-3)
    assert row.diff_error == pytest.approx(6.5 - paper.TABLE6["resnet110-A"], abs=1e-3)
    md = (results / "table6.md").read_text()
    best, (mean, std) = paper.TABLE6["resnet110-A"], paper.TABLE6_MEAN_STD["resnet110-A"]
    assert f"| resnet110-A | 1.73M | 6.50 (6.77±0.31, n=3) | {best:.2f} ({mean:.2f}±{std:.2f}) |" in md
    assert "profile `paper`: paper schedule." in md and "not the paper's schedule" not in md


def test_unfinished_runs_are_not_counted(runs, results):
    make_run(runs, "budget", "resnet20-A", final_error=9.0)
    make_run(runs, "budget", "resnet20-A", seed=1, status="running", n_points=0)
    make_run(runs, "budget", "resnet32-A", status="running", n_points=3)
    table = report.table6(report.load_runs(runs))
    assert rows(table, "resnet20-A").n_runs.tolist() == [1]
    note = rows(table, "resnet32-A").note.iloc[0]
    assert note == ("missing: `resnet-repro sweep cifar --n 5 --arch resnet profile=budget` "
                    "(unfinished: resnet32-A-seed0 running 2500/5000 it)")
    report.write_tables(runs, results, tables=["table6"])
    md = (results / "table6.md").read_text()
    assert "Not counted (unfinished): budget/resnet20-A-seed1 (running), budget/resnet32-A-seed0 (running)." in md
    assert "budget schedule (5k iterations, 7.8% of the paper's 64k), not the paper's schedule." in md
    assert "Shortened, sample and proxy runs are not the paper's schedule" in md


def test_one_row_per_profile_dataset_and_variant_paper_schedule_first(runs):
    make_run(runs, "sample", "resnet20-A", dataset="cifar10_sample", final_error=40.0)
    make_run(runs, "paper", "resnet20-A", final_error=8.6)
    make_run(runs, "paper", "resnet20-A", variant="b1c2d3", final_error=8.1)
    make_run(runs, "paper", "plain20", final_error=9.0)
    table = report.table6(report.load_runs(runs))
    ours = rows(table, "resnet20-A")
    assert ours.profile.tolist() == ["paper", "paper", "sample"]
    assert ours.error_best.tolist() == [8.6, 8.1, 40.0]
    assert ours.note.tolist() == ["", "variant b1c2d3", ""]
    assert "not the paper's recipe" in ours.profile_label.iloc[1]
    assert ours.dataset.tolist() == ["cifar10", "cifar10", "cifar10_sample"]
    assert rows(table, "plain20").note.tolist() == ["not in the paper's table"]
    assert table.model.tolist().index("plain20") > table.model.tolist().index("resnet1202-A")


def test_imagenet_tables_split_by_protocol(runs):
    make_run(runs, "paper", "resnet34-B", final_error=24.9, final_top5_error=7.6, eval_protocol="10crop")
    make_run(runs, "paper", "resnet34-B", seed=1, final_error=21.9, final_top5_error=5.8, eval_protocol="multiscale")
    make_run(runs, "paper", "resnet50-B-v1.5", final_error=22.1, final_top5_error=6.2, eval_protocol="10crop")
    runs_table = report.load_runs(runs)
    t3, t4 = report.table3(runs_table), report.table4(runs_table)
    row = rows(t3, "resnet34-B").iloc[0]
    assert (row.top1_best, row.top5_best, row.eval_protocol) == (24.9, 7.6, "10crop")
    assert (row.paper_top1, row.paper_top5) == paper.TABLE3["resnet34-B"]
    assert row.diff_top5 == pytest.approx(7.6 - paper.TABLE3["resnet34-B"][1])
    assert rows(t4, "resnet34-B").top1_best.tolist() == [21.9]
    assert rows(t3, "resnet50-B-v1.5").note.tolist() == ["not in the paper's table"]
    assert rows(t4, "resnet50-B-v1.5").empty
    for method, (top1, top5) in paper.TABLE3_QUOTED.items():
        assert rows(t3, method).note.tolist() == ["quoted"] and rows(t3, method).paper_top5.tolist() == [top5]
    assert rows(t3, "plain34").note.tolist() == ["missing: `resnet-repro run table3`"]
    t2 = report.table2(runs_table)
    assert t2.model.tolist() == list(paper.TABLE2_TOP1) and t2.paper_top1.tolist() == list(paper.TABLE2_TOP1.values())


def test_table5_puts_our_ensemble_beside_the_papers(runs):
    (name, top5), = paper.TABLE5_TOP5.items()
    make_run(runs, "paper", name, ensemble=True, final_error=20.0, final_top5_error=4.1, eval_protocol="multiscale")
    table = report.table5(report.load_runs(runs))
    row = rows(table, name).iloc[0]
    assert (row.top5_best, row.paper_top5, row.n_runs) == (4.1, top5, 1)
    assert row.diff_top5 == pytest.approx(4.1 - top5)
    assert rows(table, "VGG (v5)").paper_top5.tolist() == [paper.TABLE5_QUOTED["VGG (v5)"]]
    assert report.table3(report.load_runs(runs)).n_runs.fillna(0).sum() == 0  # ensembles stay out of Table 3


def test_write_tables_writes_2_to_6_and_takes_a_registered_table1(runs, results, monkeypatch):
    paths = report.write_tables(runs, results)
    assert [p.name for p in paths] == [f"table{i}.{ext}" for i in range(2, 7) for ext in ("csv", "md")]
    assert all(p.stat().st_size > 0 for p in paths)
    assert "No finished runs yet" in (results / "table5.md").read_text()
    table1 = report.write_tables(runs, results, tables=["table1"])  # imagenet.write_table1 unless registered
    assert [p.name for p in table1] == ["table1.csv", "table1.md"]
    monkeypatch.setitem(report.TABLES, "table1", ("Table 1: architectures", lambda _runs: pd.DataFrame(
        {"model": ["resnet18"], "n_runs": [0], "note": [""], "profile": [""], "dataset": [""],
         "eval_protocol": [""], "params": [11_689_512]})))
    assert [p.name for p in report.write_tables(runs, results, tables=["table1"])] == ["table1.csv", "table1.md"]
    assert "| resnet18 | 0 |" in (results / "table1.md").read_text()


def test_markdown_table_is_readable(runs, results):
    make_run(runs, "paper", "resnet56-A", final_error=7.0)
    report.write_tables(runs, results, tables=["table6"])
    lines = (results / "table6.md").read_text().splitlines()
    assert lines[0] == "# Table 6: CIFAR-10 test error (%)"
    table = [line for line in lines if line.startswith("|")]
    assert len({len(line.split("|")) for line in table}) == 1  # every row has the header's cells
    theirs = paper.TABLE6["resnet56-A"]
    assert (f"| resnet56-A | {paper.CIFAR_PARAMS[9] / 1e6:.2f}M | 7.00 (n=1) | {theirs:.2f} | {7.0 - theirs:+.2f} | "
            "paper | cifar10 | single |  |") in table


def test_readme_links_what_exists_and_states_hardware_and_claims(runs, results):
    make_run(runs, "paper", "plain20", final_error=9.0, wall_s=1800, device="NVIDIA H100")
    make_run(runs, "paper", "plain56", final_error=12.0, wall_s=5400, device="NVIDIA H100")
    make_run(runs, "budget", "plain20", status="running", n_points=2, wall_s=600, device="cpu (x86_64, 2 threads)")
    report.write_tables(runs, results, tables=["table6"])
    (results / "fig1.png").write_bytes(b"png")
    text = report.write_readme(runs, results).read_text()
    assert "[Table 6: CIFAR-10 test error (%)](table6.md)" in text and "table3.md" not in text
    assert "[Fig. 1: plain-20 vs plain-56 on CIFAR-10](fig1.png)" in text and "fig6" not in text
    assert "Total wall time 2.2 h over 3 runs" in text
    assert "NVIDIA H100 (2 runs); cpu (x86_64, 2 threads) (1 runs)" in text
    assert ("plain-56 has higher test error than plain-20 (Fig. 1): **holds**. final test error: plain-56 12.00%, "
            "plain-20 9.00% (mean over seeds; profile `paper`: paper schedule)") in text
    assert "deeper ResNets respond less per layer (Fig. 7): not enough data" in text


# ---------------------------------------------------------------------------------------------- claims


def judge(tmp_path, check, *specs):
    """Build runs from (profile, model, kwargs) and judge them."""
    for profile, model, kwargs in specs:
        make_run(tmp_path / "runs", profile, model, **kwargs)
    return check(report.load_runs(tmp_path / "runs"))


@pytest.mark.parametrize("check, column", [
    (report.plain_deeper_trains_worse, "final_train_error"),
    (report.plain_deeper_tests_worse, "final_error"),
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
    claim = judge(tmp_path, report.plain_deeper_tests_worse, ("paper", "plain20", {"final_error": 6.0}),
                  ("budget", "plain56", {"final_error": 9.0}))
    assert claim.holds is None and "plain-56 and plain-20" in claim.evidence


def test_claims_prefer_the_paper_schedule_and_average_seeds(tmp_path):
    claim = judge(tmp_path, report.plain_deeper_tests_worse,
                  ("budget", "plain20", {"final_error": 20.0}), ("budget", "plain56", {"final_error": 10.0}),
                  ("paper", "plain20", {"final_error": 7.0}), ("paper", "plain56", {"final_error": 7.5}),
                  ("paper", "plain56", {"final_error": 9.5, "seed": 1}))
    assert claim.holds is True and "plain-56 8.50%, plain-20 7.00%" in claim.evidence


def test_claims_prefer_full_data_to_a_sample_in_one_profile(tmp_path):
    claim = judge(tmp_path, report.plain_deeper_tests_worse,
                  ("smoke", "plain20", {"final_error": 50.0, "dataset": "cifar10_sample", "seed": 1}),
                  ("smoke", "plain56", {"final_error": 40.0, "dataset": "cifar10_sample", "seed": 1}),
                  ("smoke", "plain20", {"final_error": 30.0}), ("smoke", "plain56", {"final_error": 35.0}))
    assert claim.holds is True and "plain-56 35.00%, plain-20 30.00%" in claim.evidence


def test_unfinished_runs_do_not_decide_claims(tmp_path):
    claim = judge(tmp_path, report.plain_deeper_tests_worse, ("paper", "plain20", {}),
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
    claim = judge(tmp_path, report.resnet_error_falls_with_depth, *specs)
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
    claim = judge(tmp_path, report.plain_training_error_rises_with_depth, *specs)
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
    assert judge(tmp_path, report.resnet_trains_better_than_plain, *specs).holds is expected


@pytest.mark.parametrize("resnet, plain, expected", [(0.5, 2.0, True), (2.0, 0.5, False), (None, 2.0, None)])
def test_resnet_responds_less_than_plain(tmp_path, resnet, plain, expected):
    specs = [("paper", "plain20", {"responses": [plain, plain]}),
             ("paper", "resnet20-A", {"responses": None if resnet is None else [resnet, resnet]})]
    claim = judge(tmp_path, report.resnet_responds_less_than_plain, *specs)
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
    assert judge(tmp_path, report.deeper_resnet_responds_less, *specs).holds is expected


@pytest.mark.parametrize("errors, expected", [
    ({"plain18": 27.9, "plain34": 28.5, "resnet18-A": 27.9, "resnet34-A": 25.0}, True),
    ({"plain18": 27.9, "plain34": 26.0, "resnet18-A": 27.9, "resnet34-A": 25.0}, False),
    ({"plain18": 27.9, "plain34": 28.5, "resnet18-A": 27.9}, None),
])
def test_imagenet_depth_claim(tmp_path, errors, expected):
    specs = [("paper", m, {"final_error": e}) for m, e in errors.items()]
    assert judge(tmp_path, report.imagenet_resnet34_beats_18_plain_does_not, *specs).holds is expected


def test_imagenet_depth_claim_reads_table2s_10crop_numbers(tmp_path):
    center = {"plain18": 27.9, "plain34": 26.0, "resnet18-A": 27.9, "resnet34-A": 25.0}  # does not hold
    ten_crop = {"plain18": 25.0, "plain34": 26.0, "resnet18-A": 25.0, "resnet34-A": 23.0}  # holds
    specs = [("paper", m, {"final_error": center[m], "final_eval": {"10crop": {"top1_error": ten_crop[m]}}})
             for m in center]
    claim = judge(tmp_path, report.imagenet_resnet34_beats_18_plain_does_not, *specs)
    assert claim.holds is True and "10-crop top-1 error" in claim.evidence and "plain-34 26.00%" in claim.evidence


def test_dataset_text_names_lossy_copies_and_subsets():
    from resnet_repro.report import dataset_text

    assert dataset_text("cifar10") == ""
    assert "JPEG quality 90" in dataset_text("cifar10_jpeg90") and "not the original pixels" in dataset_text(
        "cifar10_jpeg90")
    assert "not the paper's full data" in dataset_text("cifar10_sample")


def test_a_running_run_reports_how_far_its_metrics_got(runs):
    make_run(runs, "budget", "resnet110-A", status="running", n_points=3, iterations_done=0)  # summary at start
    [row] = report.load_runs(runs).itertuples()
    assert row.iterations_done == report.load_metrics(row.path).iteration.max() > 0


def test_readme_judges_a_claim_in_each_setting_that_can(runs, results):
    for profile, e20, e56 in (("paper", 9.0, 7.0), ("budget", 15.0, 20.0)):
        make_run(runs, profile, "resnet20-A", final_error=e20)
        make_run(runs, profile, "resnet56-A", final_error=e56)
    make_run(runs, "smoke", "resnet20-A", final_error=50.0)  # one depth only: cannot judge, left out
    claims = report.judge_by_setting(report.load_runs(runs), report.resnet_error_falls_with_depth)
    assert [c.holds for c in claims] == [True, False]
    assert "profile `paper`" in claims[0].evidence and "profile `budget`" in claims[1].evidence
    text = report.write_readme(runs, results).read_text()
    assert "- ResNet test error falls with depth up to 110 layers (Table 6):\n  - **holds**. " in text
    assert "\n  - **does not hold**. " in text and "smoke" not in text.split("## The paper's claims")[1]
