"""The run-directory format: Summary and metrics written and read back, the runs table, damaged files."""

import json
import subprocess

import pandas as pd
import pytest
from rundirs import make_run

from resnet_repro.config import make_dir
from resnet_repro.errors import UserError
from resnet_repro.results import DataId, RunDir, Summary, Unreadable, git_commit
from resnet_repro.runs import load_runs, recipe_rank, unreadable


def test_summary_round_trip_and_files_of_older_versions(tmp_path):
    run = RunDir(tmp_path / "paper" / "resnet20-A-seed0")
    summary = Summary(run_id="resnet20-A-seed0", status="finished", profile="paper", seed=2, final_test_error=8.1,
                      model={"family": "cifar", "name": "resnet20-A"}, overrides=["seed=2"])
    run.write_summary(summary)
    assert run.read_summary() == summary and run.finished
    written = json.loads(run.summary_file.read_text())
    assert written["final_test_error"] == 8.1 and written["finished"] is None  # null, as the trainer wrote it
    assert not {"final_eval", "failure", "ensemble", "members", "images"} & written.keys()  # only where set
    # a summary written before some keys existed reads with their defaults; unknown keys are ignored
    run.summary_file.write_text(json.dumps({"status": "running", "wall_s": None, "from_the_future": 1}))
    old = run.read_summary()
    assert (old.run_id, old.profile, old.status, old.wall_s, old.amp_reason) == (
        "resnet20-A-seed0", "paper", "running", 0.0, "")


def test_metrics_round_trip(tmp_path):
    run = RunDir(tmp_path)
    run.write_metrics([{"iteration": 2, "lr": 0.1, "train_error": 90.0, "test_error": None},
                       {"iteration": 4, "lr": 0.1, "train_error": 80.5, "test_error": 85.25}])
    m = run.read_metrics()
    assert m.iteration.tolist() == [2, 4] and m.train_error.tolist() == [90.0, 80.5]
    assert pd.isna(m.test_error[0]) and m.test_error[1] == 85.25 and m.test_top5_error.isna().all()
    assert RunDir(tmp_path / "nothing").read_metrics().empty


def test_load_runs_reads_every_run_and_names_a_damaged_summary(runs):
    make_run(runs, "paper", "resnet20-A", final_error=8.5, responses=[1.0, 3.0])
    make_run(runs, "budget", "plain56", status="running", n_points=0)
    (runs / "paper" / "junk").mkdir()
    (runs / "paper" / "junk" / "summary.json").write_text("{not json")
    table = load_runs(runs).set_index("run_id")
    assert sorted(table.index) == ["junk", "plain56-seed0", "resnet20-A-seed0"]
    assert table.loc["resnet20-A-seed0", "final_test_error"] == 8.5
    assert table.loc["resnet20-A-seed0", "mean_response_std"] == 2.0
    assert pd.isna(table.loc["plain56-seed0", "final_test_error"])
    assert (table.loc["junk", "status"], table.loc["junk", "unreadable"]) == ("unreadable", "summary.json")
    [problem] = unreadable(load_runs(runs))
    assert problem.startswith(f"{runs / 'paper' / 'junk' / 'summary.json'} is not valid JSON") and "delete" in problem
    assert load_runs(runs / "nowhere").empty


def test_a_damaged_summary_keeps_the_net_its_folder_names(runs):
    run = make_run(runs, "budget", "resnet110-A", seed=1)
    (run / "summary.json").write_text((run / "summary.json").read_text()[:200])  # cut short
    [row] = load_runs(runs).itertuples()
    assert (row.run_id, row.status, row.model, row.family, row.depth) == (
        "resnet110-A-seed1", "unreadable", "resnet110-A", "cifar", 110)


@pytest.mark.parametrize("cut", ["mid-line", "at a line end"])
def test_a_cut_metrics_file_is_unreadable_never_a_shorter_curve(runs, cut):
    run = make_run(runs, "budget", "plain56", n_points=6)
    text = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text(text[: len(text) // 2] if cut == "mid-line" else
                                     "".join(text.splitlines(keepends=True)[:4]))
    [row] = load_runs(runs).itertuples()
    assert row.status == "finished" and row.unreadable == "metrics.csv"  # its summary still counts in tables
    why = "is cut short" if cut == "mid-line" else "ends at iteration 2500, but the run finished 5000 iterations"
    assert why in row.problem and str(run / "metrics.csv") in row.problem
    if cut == "mid-line":
        with pytest.raises(Unreadable, match="cut short"):
            RunDir(run).read_metrics()


def test_a_damaged_responses_file_is_named(runs):
    run = make_run(runs, "paper", "resnet20-A", responses=[1.0, 2.0, 3.0])
    (run / "responses.csv").write_text("layer,std\n1,1.0\n2,2")
    [row] = load_runs(runs).itertuples()
    assert row.unreadable == "responses.csv" and pd.isna(row.mean_response_std)


def test_a_running_run_reports_how_far_its_metrics_got(runs):
    run = make_run(runs, "budget", "resnet110-A", status="running", n_points=3, iterations_done=0)  # summary at start
    [row] = load_runs(runs).itertuples()
    assert row.iterations_done == RunDir(run).read_metrics().iteration.max() > 0


def test_the_data_is_named_by_its_fields_and_old_names_read_back():
    assert DataId("cifar10").note == "" and DataId("cifar10").original
    lossy = DataId("cifar10", encoding="jpeg90")
    assert lossy.name == "cifar10_jpeg90" and lossy.paper_images and not lossy.original
    assert "JPEG quality 90" in lossy.note and "not the original pixels" in lossy.note
    assert "not the paper's full data" in DataId("cifar10", "sample").note
    assert [d.rank for d in (DataId("cifar10"), lossy, DataId("cifar10", "sample"))] == [0, 1, 2]
    for name in ("cifar10", "cifar10_sample", "cifar10_jpeg90", "imagenet", "imagenette_64px_proxy",
                 "imagenette_64px_proxy_sample"):
        assert DataId.from_name(name).name == name  # summaries written before the fields existed


@pytest.mark.parametrize("dataset, title", [
    ("cifar10", "CIFAR-10"), ("cifar10_jpeg90", "CIFAR-10 re-encoded as JPEG q90"),
    ("imagenette_64px_proxy", "Imagenette 64 px proxy"), ("imagenet", "ImageNet")])
def test_data_titles(dataset, title):
    assert DataId.from_name(dataset).title == title


@pytest.mark.parametrize("variant, rank", [("", 0), ("fp32", 1), ("bf16", 1), ("fp16", 1), ("bn64", 2),
                                           ("bn64-fp32", 2), ("a1b2c3", 2)])
def test_a_precision_tag_keeps_the_recipe(variant, rank):
    assert recipe_rank(variant) == rank


def test_a_folder_under_a_file_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        make_dir(tmp_path / "file" / "results")
    assert make_dir(tmp_path / "a" / "b").is_dir()


def test_git_commit_names_the_checkout_and_falls_back_without_git(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "code.py").write_text("x = 1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "one"]):
        subprocess.run([*git, *args], check=True)
    head = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_commit(repo) == head
    (repo / "src" / "code.py").write_text("x = 2\n")  # edited code
    assert git_commit(repo) == f"{head}-dirty"
    monkeypatch.setenv("RESNET_REPRO_GIT_COMMIT", "0123abcd")
    assert git_commit(tmp_path / "not-a-checkout") == "0123abcd"  # a copy of the tree without .git
    monkeypatch.delenv("RESNET_REPRO_GIT_COMMIT")
    monkeypatch.setenv("PATH", "")  # no git at all
    assert git_commit(repo) == "unknown"
