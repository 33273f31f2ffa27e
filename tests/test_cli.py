"""The real CLI through Typer's runner: real Hydra composition, real data loading, real training."""

import json

import pytest
from rundirs import make_run
from typer.testing import CliRunner

from resnet_repro.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *needles):
    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture
def dirs(tmp_path):
    return tmp_path / "results", tmp_path / "experiments"


def test_run_table6_smoke_writes_runs_and_table(dirs):
    results, runs = dirs
    result = invoke("run", "table6", "profile=smoke", "--results-dir", results)
    assert result.exit_code == 0, result.output
    for depth in (20, 32, 44, 56, 110):
        run = runs / "smoke" / f"resnet{depth}-A-seed0-sample"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["dataset"] == "cifar10_sample"
        assert summary["profile"] == "smoke" and not summary["full_schedule"]
        assert {"git_commit", "device", "wall_s", "seed", "params"} <= summary.keys()
        assert (run / "config.yaml").exists() and (run / "responses.csv").exists()
        assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 3  # header + rows at 2, 4, 6
    table = (results / "table6.csv").read_text()
    assert "resnet110" in table.lower() and "smoke" in table.lower()
    assert (results / "table6.md").exists()

    # re-requesting finished runs skips them and leaves their files alone
    before = (runs / "smoke" / "resnet20-A-seed0-sample" / "metrics.csv").read_text()
    again = invoke("run", "table6", "profile=smoke", "--results-dir", results)
    assert again.exit_code == 0 and again.output.count("skipped") == 5
    assert (runs / "smoke" / "resnet20-A-seed0-sample" / "metrics.csv").read_text() == before


def test_run_on_a_generated_cifar_folder(fake_cifar, dirs):
    results, runs = dirs
    result = invoke("run", "custom", "profile=smoke", "model.n=1", "--data-dir", fake_cifar, "--results-dir", results)
    assert result.exit_code == 0, result.output
    run_dir = runs / "smoke" / "resnet8-A-seed0"  # smoke uses the given folder, not the sample
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["dataset"] == "cifar10" and summary["train_images"] == 100


def test_sweep_makes_one_run_per_arch_and_depth(dirs):
    results, runs = dirs
    result = invoke("sweep", "cifar", "--n", "1,2", "--arch", "plain,resnet", "profile=smoke",
                    "engine.responses=false", "--results-dir", results)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (runs / "smoke").iterdir()) == [
        "plain14-seed0-sample", "plain8-seed0-sample", "resnet14-A-seed0-sample", "resnet8-A-seed0-sample"]


def test_list_and_models():
    listing = invoke("list")
    assert listing.exit_code == 0 and "table6" in listing.output and "budget" in listing.output
    models = invoke("models", "cifar", "--n", "3,18", "--arch", "plain,resnet")
    assert models.exit_code == 0
    assert models.output.count("269,722") == 2 and models.output.count("1,727,962") == 2


@pytest.mark.parametrize("args, needles", [
    (["run", "table99"], ["unknown experiment", "table6"]),
    (["sweep", "cifar", "--n", "0"], ["--n"]),
    (["sweep", "cifar", "--n", "x"], ["--n"]),
    (["sweep", "cifar", "--arch", "wide"], ["--arch"]),
    (["run", "table6", "model.nope=1"], ["bad override"]),
    (["run", "table6", "model.shortcut"], ["malformed override"]),
    (["models", "cifar", "--n", "0"], ["--n"]),
])
def test_bad_input_is_one_line(args, needles):
    assert_one_line_error(invoke(*args), *needles)


def test_missing_data_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("RESNET_REPRO_DATA", raising=False)
    result = invoke("run", "table6", "--data-dir", tmp_path / "empty", "--results-dir", tmp_path / "results")
    assert_one_line_error(result, "--data-dir", "RESNET_REPRO_DATA")


def test_corrupt_checkpoint_is_one_line_and_names_the_file(dirs):
    results, runs = dirs
    run_dir = runs / "smoke" / "resnet8-A-seed0-sample"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    result = invoke("run", "custom", "profile=smoke", "model.n=1", "--results-dir", results)
    assert_one_line_error(result, "checkpoint.pt", "--restart")
    ok = invoke("run", "custom", "profile=smoke", "model.n=1", "--results-dir", results, "--restart")
    assert ok.exit_code == 0, ok.output


def test_help_lists_the_choices():
    assert all(f in invoke("plot", "--help").output for f in ("fig1", "fig4", "fig6", "fig7", "all"))
    sweep = invoke("sweep", "--help").output
    assert "<plain|resnet>,..." in sweep and "cifar" in sweep
    assert "A|B|C" in invoke("models", "cifar", "--help").output
    assert invoke("plot", "fig9").exit_code == 2  # not a figure: refused before anything runs


@pytest.mark.parametrize("command", [["report"], ["plot", "all"], ["run", "custom", "profile=smoke"]])
def test_a_results_dir_under_a_file_is_one_line(tmp_path, command):
    (tmp_path / "file").write_text("")
    result = invoke(*command, "--results-dir", tmp_path / "file" / "results")
    assert_one_line_error(result, "--results-dir", "is a file")


def test_damaged_run_files_are_named_and_left_out_visibly(tmp_path):
    """A cut summary.json and a cut metrics.csv are each named in one warning line, and the table and the
    figure that lose the run say so."""
    runs, results = tmp_path / "experiments", tmp_path / "results"
    errors = {0: 17.9, 1: 19.0, 2: 16.7}
    for seed, error in errors.items():
        make_run(runs, "budget", "resnet110-A", seed=seed, final_error=error)
    make_run(runs, "budget", "plain20", final_error=20.0)
    make_run(runs, "budget", "plain56", final_error=30.0)
    for path in (runs / "budget" / "resnet110-A-seed1" / "summary.json", runs / "budget" / "plain56-seed0" / "metrics.csv"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    report = invoke("report", "--results-dir", results)
    assert report.exit_code == 0, report.output
    warnings = report.stderr.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: ") for w in warnings)
    assert any("resnet110-A-seed1/summary.json is not valid JSON" in w and "delete" in w for w in warnings)
    assert any("plain56-seed0/metrics.csv is cut short" in w for w in warnings)
    table6 = (results / "table6.md").read_text()
    assert "Left out, unreadable: budget/resnet110-A-seed1 (summary.json)." in table6
    assert "| resnet110-A | 1.73M | 2 | 16.70 (17.30±0.85)" in table6  # the other seeds alone

    plot = invoke("plot", "fig1", "--results-dir", results)
    assert plot.exit_code == 0, plot.output
    assert "missing: plain-56: budget/plain56-seed0 cannot be read (metrics.csv)" in plot.output
    assert "note: budget/plain56-seed0 left out: metrics.csv is cut short" in plot.output
    assert len(plot.stderr.strip().splitlines()) == 2
