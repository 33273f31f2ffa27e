"""Tables 2-6 from synthetic run directories, beside the paper's numbers from paper.py."""

import statistics

import pandas as pd
import pytest
from rundirs import make_run

from resnet_repro import paper, tables
from resnet_repro.runs import load_runs


def rows(table: pd.DataFrame, model: str) -> pd.DataFrame:
    return table[table.model == model]


def test_table6_carries_the_papers_numbers_and_quoted_rows(runs):
    make_run(runs, "budget", "resnet20-A", final_error=10.0)
    table = tables.table6(load_runs(runs))
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
    tables.write_tables(runs, results, tables=["table6"])
    row = rows(pd.read_csv(results / "table6.csv"), "resnet110-A").iloc[0]
    assert row.n_runs == 3 and row.seeds == "0 1 2"
    assert row.error_best == 6.5
    assert row.error_mean == pytest.approx(statistics.mean(errors), abs=1e-3)
    assert row.error_std == pytest.approx(statistics.stdev(errors), abs=1e-3)
    assert row.diff_error == pytest.approx(6.5 - paper.TABLE6["resnet110-A"], abs=1e-3)
    md = (results / "table6.md").read_text()
    best, (mean, std) = paper.TABLE6["resnet110-A"], paper.TABLE6_MEAN_STD["resnet110-A"]
    assert f"| resnet110-A | 1.73M | 3 | 6.50 (6.77±0.31) | {best:.2f} ({mean:.2f}±{std:.2f}) |" in md
    assert "the number itself where there is one run (n = 1), \"best (mean±std)\" over n runs" in md
    assert "profile `paper`: paper schedule." in md and "not the paper's schedule" not in md


def test_unfinished_runs_are_not_counted(runs, results):
    make_run(runs, "budget", "resnet20-A", final_error=9.0)
    make_run(runs, "budget", "resnet20-A", seed=1, status="running", n_points=0)
    make_run(runs, "budget", "resnet32-A", status="running", n_points=3)
    table = tables.table6(load_runs(runs))
    assert rows(table, "resnet20-A").n_runs.tolist() == [1]
    note = rows(table, "resnet32-A").note.iloc[0]
    assert note == ("missing: `resnet-repro sweep cifar --n 5 --arch resnet profile=budget` "
                    "(unfinished: resnet32-A-seed0 running 2500/5000 it)")
    tables.write_tables(runs, results, tables=["table6"])
    md = (results / "table6.md").read_text()
    assert "Not counted (unfinished): budget/resnet20-A-seed1 (running), budget/resnet32-A-seed0 (running)." in md
    assert "budget schedule (5k iterations, 7.8% of the paper's 64k), not the paper's schedule." in md
    assert "Shortened, sample and proxy runs are not the paper's schedule" in md


def test_one_row_per_profile_dataset_and_variant_paper_schedule_first(runs):
    make_run(runs, "sample", "resnet20-A", dataset="cifar10_sample", final_error=40.0)
    make_run(runs, "paper", "resnet20-A", final_error=8.6)
    make_run(runs, "paper", "resnet20-A", variant="b1c2d3", final_error=8.1)
    make_run(runs, "paper", "plain20", final_error=9.0)
    table = tables.table6(load_runs(runs))
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
    runs_table = load_runs(runs)
    t3, t4 = tables.table3(runs_table), tables.table4(runs_table)
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
    t2 = tables.table2(runs_table)
    assert t2.model.tolist() == list(paper.TABLE2_TOP1) and t2.paper_top1.tolist() == list(paper.TABLE2_TOP1.values())


def test_table5_puts_our_ensemble_beside_the_papers(runs):
    (name, top5), = paper.TABLE5_TOP5.items()
    make_run(runs, "paper", name, ensemble=True, final_error=20.0, final_top5_error=4.1, eval_protocol="multiscale")
    table = tables.table5(load_runs(runs))
    row = rows(table, name).iloc[0]
    assert (row.top5_best, row.paper_top5, row.n_runs) == (4.1, top5, 1)
    assert row.diff_top5 == pytest.approx(4.1 - top5)
    assert rows(table, "VGG (v5)").paper_top5.tolist() == [paper.TABLE5_QUOTED["VGG (v5)"]]
    assert tables.table3(load_runs(runs)).n_runs.fillna(0).sum() == 0  # ensembles stay out of Table 3


def test_markdown_table_is_readable(runs, results):
    make_run(runs, "paper", "resnet56-A", final_error=7.0)
    tables.write_tables(runs, results, tables=["table6"])
    lines = (results / "table6.md").read_text().splitlines()
    assert lines[0] == "# Table 6: CIFAR-10 test error (%)"
    table = [line for line in lines if line.startswith("|")]
    assert len({len(line.split("|")) for line in table}) == 1  # every row has the header's cells
    theirs = paper.TABLE6["resnet56-A"]
    assert (f"| resnet56-A | {paper.CIFAR_PARAMS[9] / 1e6:.2f}M | 1 | 7.00 | {theirs:.2f} | {7.0 - theirs:+.2f} | "
            "paper | cifar10 | fp32 | single |  |") in table
    highway = "Highway (19 layers, 2.3M)"
    best, (mean, std) = paper.TABLE6_QUOTED[highway], paper.TABLE6_MEAN_STD[highway]
    assert f"| {highway} |  |  |  | {best:.2f} ({mean:.2f}±{std:.2f}) | – |" in "\n".join(table)


def test_table4_marks_the_test_set_number(runs, results):
    tables.write_tables(runs, results, tables=["table4"])
    md = (results / "table4.md").read_text()
    (name,) = paper.TABLE4_TEST_SET
    assert f"| {name} |  |  |  | – | – |  | {paper.TABLE4_QUOTED[name][1]:.2f}† | – |" in md
    assert "† marks a number the paper gives on the test set" in md
    assert md.count("†") == 2  # the preamble's and that cell's: no other row is marked


def test_delta_is_blank_on_a_proxy_but_not_on_a_lossy_copy(runs):
    make_run(runs, "proxy", "resnet18-A", final_error=63.1, dataset="imagenette_64px_proxy", eval_protocol="10crop")
    make_run(runs, "paper", "resnet20-A", final_error=9.6, dataset="cifar10_jpeg90")
    runs_table = load_runs(runs)
    row = rows(tables.table2(runs_table), "resnet18-A").iloc[0]
    assert row.top1_best == 63.1 and pd.isna(row.diff_top1)
    assert rows(tables.table6(runs_table), "resnet20-A").diff_error.iloc[0] == pytest.approx(9.6 - 8.75)


def test_table6_puts_paper_schedule_original_pixels_first_and_notes_the_jpeg_copy(runs, results):
    """A precision control (resnet20-A-seed0-fp32) on the original pixels is the paper's schedule; rows
    follow runs.ranked_runs, as figures and claims do: the recipe (a precision control keeps it) before
    another variant, then the original pixels before a lossy copy."""
    make_run(runs, "budget", "resnet20-A", final_error=15.0)
    make_run(runs, "paper", "resnet20-A", final_error=9.6, dataset="cifar10_jpeg90")
    make_run(runs, "paper", "resnet20-A", final_error=8.4, variant="fp32", full_schedule=True, amp=False)
    make_run(runs, "paper", "resnet20-A", final_error=8.6, variant="bn64", full_schedule=True)
    ours = rows(tables.table6(load_runs(runs)), "resnet20-A")
    assert list(zip(ours.dataset, ours.note)) == [("cifar10", "variant fp32"), ("cifar10_jpeg90", ""),
                                                  ("cifar10", "variant bn64"), ("cifar10", "")]
    assert ours.profile.tolist() == ["paper", "paper", "paper", "budget"]
    tables.write_tables(runs, results, tables=["table6"])
    md = (results / "table6.md").read_text()
    assert "8.27% on the original test images and 11.23% on this copy" in md


def test_missing_1202_row_carries_an_estimated_gpu_cost_from_bench(runs, results):
    make_run(runs, "paper", "resnet20-A", final_error=8.8)
    tables.write_tables(runs, results, tables=["table6"])
    assert "estimated" not in (results / "table6.md").read_text()  # no GPU throughput measured yet
    (results / "bench.csv").write_text(
        "device,model,ours_images_per_s,ours_pipeline\n"
        "cpu (x86_64),resnet20-A,1300,bf16\nNVIDIA H200,resnet20-A,30000,graphs\nNVIDIA H200,resnet20-A,34000,graphs\n")
    tables.write_tables(runs, results, tables=["table6"])
    note = rows(pd.read_csv(results / "table6.csv"), "resnet1202-A").note.iloc[0]
    hours = paper.CIFAR_ITERATIONS * paper.CIFAR_BATCH / (34000 * 3 / 200) / 3600  # 3x3 layers: 6n, n=200 vs 3
    assert note.startswith("missing: `resnet-repro run resnet1202`")
    assert f"about {hours:.1f} h on one NVIDIA H200 at the paper's schedule (estimated)" in note
    md = (results / "table6.md").read_text()
    assert "Estimated GPU time of a missing net, not measured" in md and "34,000 images/s" in md




def test_write_tables_writes_2_to_6_and_refuses_an_unknown_name(runs, results):
    paths = tables.write_tables(runs, results)
    assert [p.name for p in paths] == [f"table{i}.{ext}" for i in range(2, 7) for ext in ("csv", "md")]
    assert all(p.stat().st_size > 0 for p in paths)
    with pytest.raises(ValueError, match="table1"):  # counted from the models (table1.py), not from runs
        tables.write_tables(runs, results, tables=["table1"])


def test_a_run_with_a_damaged_summary_is_left_out_and_said(runs, results):
    make_run(runs, "budget", "resnet20-A", final_error=10.0)
    damaged = make_run(runs, "budget", "resnet20-A", seed=1, final_error=12.0)
    (damaged / "summary.json").write_text((damaged / "summary.json").read_text()[:100])
    tables.write_tables(runs, results, tables=["table6"])
    row = rows(pd.read_csv(results / "table6.csv"), "resnet20-A").iloc[0]
    assert row.n_runs == 1 and row.error_best == 10.0
    md = (results / "table6.md").read_text()
    assert "Left out, unreadable: budget/resnet20-A-seed1 (summary.json)." in md and "Not counted" not in md


def test_a_variant_is_described_by_what_changes_the_recipe_never_by_folders_or_engine(runs, results):
    make_run(runs, "budget", "resnet20-A", variant="bn64", overrides=[
        "profile=budget", "model.n=3", "model.bn_group=64", "train.threads=1", "engine.threads=1",
        "results_dir=/home/me/results", "data.root=/home/me/data", "data_dir=/home/me/data"])
    tables.write_tables(runs, results, tables=["table6"])
    md = (results / "table6.md").read_text()
    assert "with overrides (model.bn_group=64), not the paper's recipe" in md and "/home/me" not in md
