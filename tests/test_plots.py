"""Figures from synthetic run directories: files, panels, lines, labels, partial and missing runs."""

import time

import numpy as np
import pytest
from rundirs import make_run

from resnet_repro import plots

CIFAR = [20, 32, 44, 56, 110]
PNG = ("png",)  # PDFs only where a test looks at them: rendering is most of these tests' time


def caption(fig) -> str:
    """Title and caption with the caption's line wrapping undone."""
    return " ".join(" ".join(t.get_text() for t in fig.texts).split())


def legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_fig1_writes_png_and_pdf_with_two_panels(runs, results):
    make_run(runs, "paper", "plain20", final_error=9.0)
    make_run(runs, "paper", "plain56", final_error=12.0)
    result = plots.plot_figure("fig1", runs, results)
    assert [p.name for p in result.paths] == ["fig1.png", "fig1.pdf"]
    assert all(p.stat().st_size > 1000 for p in result.paths)
    assert result.drawn == ["paper/plain20-seed0", "paper/plain56-seed0"]
    assert result.missing == [] and not result.partial
    train, test = result.figure.axes
    assert [len(ax.lines) for ax in (train, test)] == [2, 2]
    assert legend(train) == ["plain-20", "plain-56"]
    assert test.lines[1].get_ydata()[-1] == pytest.approx(12.0)  # the test panel draws test error
    assert train.lines[1].get_ydata()[-1] == pytest.approx(9.0)  # training error, 3 points below by default
    assert train.get_xlabel() == "iter. (1e4)"
    # the whole of each curve in view (the paper's 0-20% cuts off where they start)
    assert train.get_ylim()[1] >= max(max(line.get_ydata()) for ax in (train, test) for line in ax.lines)
    assert "plain-20 seed 0, plain-56 seed 0: paper schedule; data cifar10." in caption(result.figure)
    assert "profile paper, 64k iterations (the paper's schedule); data: CIFAR-10" in caption(result.figure)


def test_fig6_has_three_panels_with_train_and_test_lines(runs, results):
    for d in CIFAR:
        make_run(runs, "paper", f"plain{d}", final_error=8 + d / 20)
        make_run(runs, "paper", f"resnet{d}-A", final_error=9 - d / 50)
    make_run(runs, "paper", "resnet1202-A", final_error=7.9)
    result = plots.plot_figure("fig6", runs, results, formats=PNG)
    plain, resnet, deep = result.figure.axes
    # two curves per net (dashed training, bold test), nothing else; plain-110 drawn too
    assert [len(ax.lines) for ax in (plain, resnet, deep)] == [2 * 5, 2 * 5, 2 * 2]
    assert [ax.get_ylim() for ax in (plain, resnet, deep)] == [(0, 20)] * 3
    assert [line.get_linestyle() for line in resnet.lines[:2]] == ["--", "-"]
    assert legend(deep) == ["ResNet-110", "ResNet-1202"]
    assert result.missing == [] and not result.partial
    assert "plain-110 ends at 13.5% test error" not in caption(result.figure)  # it fits the chart here


def test_fig6_widens_all_panels_together(runs, results):
    make_run(runs, "budget", "plain56", final_error=55.0)
    make_run(runs, "budget", "resnet20-A", final_error=15.0)
    result = plots.plot_figure("fig6", runs, results, formats=())
    assert [ax.get_ylim() for ax in result.figure.axes] == [(0, 60)] * 3  # plain and ResNet compare at a glance
    assert "y-axis widened from the paper's 0-20% to 0-60% to fit these runs" in result.notes


def test_missing_run_gives_partial_figure_and_the_command(runs, results):
    make_run(runs, "paper", "plain20")
    result = plots.plot_figure("fig1", runs, results, formats=PNG)
    assert result.partial and (results / "fig1.png").stat().st_size > 0
    assert result.missing == ["plain-56: no run: `resnet-repro sweep cifar --n 9 --arch plain`"]
    assert [len(ax.lines) for ax in result.figure.axes] == [1, 1]
    assert "plain-56, reproduced (partial)" in caption(result.figure)
    assert "no data yet: plain-56" in caption(result.figure)


def test_missing_1202_points_to_its_experiment_with_the_drawn_profile(runs, results):
    for d in CIFAR:
        make_run(runs, "budget", f"resnet{d}-A")
    result = plots.plot_figure("fig6", runs, results, formats=PNG)
    assert "ResNet-1202: no run: `resnet-repro run resnet1202 profile=budget`" in result.missing
    assert "plain-20: no run: `resnet-repro sweep cifar --n 3 --arch plain profile=budget`" in result.missing


def test_half_finished_runs_do_not_crash(runs, results):
    make_run(runs, "paper", "plain20")
    empty = make_run(runs, "paper", "plain56", status="running", n_points=0)  # header-only metrics.csv
    (empty / "metrics.csv").write_text("")  # or not even the header yet
    result = plots.plot_figure("fig1", runs, results, formats=PNG)
    assert result.partial and result.missing[0].startswith("plain-56: no run")
    assert any("plain56-seed0 (running) has nothing to draw" in n for n in result.notes)

    before_eval = make_run(runs, "paper", "plain56", seed=1, status="running", n_points=3)
    metrics = (before_eval / "metrics.csv").read_text().splitlines()
    (before_eval / "metrics.csv").write_text(f"{metrics[0]}\n{metrics[1]}\n")  # one row, no test error yet
    result = plots.plot_figure("fig1", runs, results, formats=PNG)
    assert result.missing == [] and result.partial
    assert [len(ax.lines[1].get_xdata()) for ax in result.figure.axes] == [1, 0]
    assert legend(result.figure.axes[0]) == ["plain-20", "plain-56 (partial)"]
    assert "plain-56 seed 1 (running, 32,000/64,000 iterations)" in caption(result.figure)


def test_failed_run_is_labelled(runs, results):
    make_run(runs, "paper", "plain20")
    make_run(runs, "paper", "plain56", status="failed", n_points=3)
    result = plots.plot_figure("fig1", runs, results, formats=())
    assert legend(result.figure.axes[0]) == ["plain-20", "plain-56 (failed)"] and result.paths == []


def test_paper_schedule_preferred_and_shortened_runs_labelled(runs, results):
    make_run(runs, "budget", "plain20", final_error=15.0)
    make_run(runs, "budget", "plain56", final_error=18.0)
    make_run(runs, "paper", "plain20", final_error=8.0)
    mixed = plots.plot_figure("fig1", runs, results, formats=PNG)
    assert mixed.drawn == ["paper/plain20-seed0", "budget/plain56-seed0"]
    assert legend(mixed.figure.axes[0]) == ["plain-20 [paper]", "plain-56 [budget]"]
    text = caption(mixed.figure)
    assert "plain-20 seed 0: paper schedule; data cifar10." in text
    assert "plain-56 seed 0: budget schedule (5k iterations, 7.8% of the paper's 64k), not the paper's schedule; " \
           "data cifar10." in text

    budget = plots.plot_figure("fig1", runs, results, profile="budget", formats=PNG)
    assert budget.drawn == ["budget/plain20-seed0", "budget/plain56-seed0"]
    assert ": paper schedule" not in caption(budget.figure)
    assert legend(budget.figure.axes[0]) == ["plain-20", "plain-56"]


def test_lowest_seed_drawn_and_said(runs, results):
    for seed in (2, 0, 1):
        make_run(runs, "paper", "plain20", seed=seed, final_error=9.0 + seed)
    make_run(runs, "paper", "plain56")
    result = plots.plot_figure("fig1", runs, results, formats=PNG)
    assert result.drawn[0] == "paper/plain20-seed0"
    assert result.figure.axes[1].lines[0].get_ydata()[-1] == pytest.approx(9.0)
    assert ("plain-20: 3 runs in profile `paper`; drawn: plain20-seed0; not drawn: plain20-seed1, plain20-seed2"
            in result.notes)


def test_short_sample_runs_keep_real_iterations_and_widen_the_axis(runs, results):
    make_run(runs, "sample", "plain20", dataset="cifar10_sample", final_error=55.0)
    make_run(runs, "sample", "plain56", dataset="cifar10_sample", final_error=62.0)
    result = plots.plot_figure("fig1", runs, results, formats=PNG)
    ax = result.figure.axes[1]
    assert ax.get_xlabel() == "iterations" and max(ax.lines[0].get_xdata()) == 200
    assert ax.get_ylim() == (0, 80)  # Fig. 1 keeps whole curves in view
    text = caption(result.figure)
    assert "not the paper's schedule; data cifar10_sample (not the paper's full data)." in text
    assert "y-axis widened from the paper's 0-20% to 0-80%" in text
    assert "profile sample, 200 iterations; data: CIFAR-10 sample" in text


def test_fig7_top_in_order_bottom_sorted(runs, results):
    rng = np.random.default_rng(0)
    for model, layers in [("plain20", 19), ("plain56", 55), ("resnet20-A", 19), ("resnet56-A", 55),
                          ("resnet110-A", 109)]:
        make_run(runs, "paper", model, responses=list(rng.uniform(0.2, 3, layers)))
    result = plots.plot_figure("fig7", runs, results, formats=PNG)
    top, bottom = result.figure.axes
    assert len(top.lines) == len(bottom.lines) == 5
    assert [len(line.get_xdata()) for line in top.lines] == [19, 55, 19, 55, 109]
    for line in bottom.lines:
        assert np.all(np.diff(line.get_ydata()) <= 0)
    assert sorted(top.lines[4].get_ydata()) == sorted(bottom.lines[4].get_ydata())
    colors = [line.get_color() for line in top.lines]
    assert len(set(colors)) == 5  # plain-20 and ResNet-20 told apart by colour, not only by dashes
    for ax in (top, bottom):
        assert ax.get_yscale() == "log"  # plain-56's large first layers do not flatten the rest
        assert all(float(t).is_integer() for t in ax.get_xticks())
    assert "results/README.md judges Fig. 7's claims on these same runs" in caption(result.figure)


def test_fig6_empty_panels_say_no_runs_and_how_to_make_them(runs, results):
    make_run(runs, "paper", "resnet20-A", dataset="cifar10_jpeg90")
    result = plots.plot_figure("fig6", runs, results, formats=PNG)
    plain, resnet, deep = result.figure.axes
    empty = " ".join(t.get_text() for t in plain.texts)
    assert empty.startswith("no runs yet") and "resnet-repro sweep cifar --n 9 --arch plain" in empty
    assert "resnet-repro run resnet1202" in " ".join(t.get_text() for t in deep.texts)
    assert not resnet.texts and len(plain.get_xticks()) == 0
    assert "data: CIFAR-10 re-encoded as JPEG q90" in caption(result.figure)


def test_a_precision_control_on_the_original_pixels_is_drawn_before_a_jpeg_copy(runs, results):
    make_run(runs, "paper", "plain20", dataset="cifar10_jpeg90")
    make_run(runs, "paper", "plain20", variant="fp32", full_schedule=True)
    make_run(runs, "paper", "plain56", variant="bn64", full_schedule=True)
    make_run(runs, "paper", "plain56", dataset="cifar10_jpeg90")
    result = plots.plot_figure("fig1", runs, results, formats=())
    assert result.drawn == ["paper/plain20-seed0-fp32", "paper/plain56-seed0-jpeg90"]
    assert legend(result.figure.axes[0]) == ["plain-20 [CIFAR-10]", "plain-56 [CIFAR-10 re-encoded as JPEG q90]"]


def test_fig7_run_without_responses_points_to_the_analysis(runs, results):
    make_run(runs, "paper", "plain20", responses=[1.0, 2.0])
    run = make_run(runs, "paper", "plain56")
    result = plots.plot_figure("fig7", runs, results, formats=PNG)
    assert f"plain-56: no responses.csv: `resnet-repro analyze responses {run}`" in result.missing
    assert "ResNet-20: no run: `resnet-repro sweep cifar --n 3 --arch resnet`" in result.missing
    budget = plots.plot_figure("fig7", runs, results, profile="budget", formats=PNG)
    assert budget.figure is None and "ResNet-20: no run in profile `budget`: " \
        "`resnet-repro sweep cifar --n 3 --arch resnet profile=budget`" in budget.missing


def test_fig4_imagenet_thin_train_bold_validation(runs, results):
    for model in ("plain18", "plain34", "resnet18-A", "resnet34-A"):
        make_run(runs, "paper", model, final_error=30.0, iterations=600_000)
    result = plots.plot_figure("fig4", runs, results, formats=PNG)
    plain, resnet = result.figure.axes
    assert [len(ax.lines) for ax in (plain, resnet)] == [4, 4]
    assert plain.lines[0].get_linewidth() < plain.lines[1].get_linewidth()
    assert legend(resnet) == ["ResNet-18", "ResNet-34"] and plain.get_ylim() == (20, 60)


def test_nothing_to_draw_writes_nothing(runs, results):
    out = plots.plot_all(runs, results)
    assert [r.name for r in out] == list(plots.FIGURES)
    assert all(r.figure is None and r.partial and r.missing for r in out)
    assert "plain-20: no run: `resnet-repro sweep cifar --n 3 --arch plain`" in out[0].missing
    assert out[1].missing[0] == "plain-18: no run: `resnet-repro run fig4`"
    assert not results.exists() or not list(results.iterdir())


def test_missing_commands_follow_the_profile_in_use(runs, results):
    make_run(runs, "smoke", "plain8", dataset="cifar10_sample")
    result = plots.plot_figure("fig1", runs, results, formats=PNG)
    assert result.figure is None
    assert result.missing[0] == "plain-20: no run: `resnet-repro sweep cifar --n 3 --arch plain profile=smoke`"


def test_unknown_figure():
    with pytest.raises(ValueError, match="fig1"):
        plots.plot_figure("fig9", "nowhere", "nowhere")


def test_regenerating_unchanged_runs_writes_identical_files(runs, results):
    make_run(runs, "paper", "plain20")
    make_run(runs, "paper", "plain56")
    first = plots.plot_figure("fig1", runs, results, formats=("png", "pdf"))
    before = [p.read_bytes() for p in first.paths]
    time.sleep(1.1)  # a PDF creation date (seconds) would now differ
    again = plots.plot_figure("fig1", runs, results, formats=("png", "pdf"))
    assert [p.read_bytes() for p in again.paths] == before  # so committed figures only change with the runs


def test_each_profile_gets_its_own_figure_never_a_mix(runs, results):
    make_run(runs, "budget", "plain20")
    make_run(runs, "budget", "plain56")
    make_run(runs, "paper", "plain20")
    out = plots.plot_figures("fig1", runs, results, formats=PNG)
    # the profile covering more of the figure's nets is the main file, even against the paper's schedule
    assert [[p.name for p in r.paths] for r in out] == [["fig1.png"], ["fig1-paper.png"]]
    assert out[0].drawn == ["budget/plain20-seed0", "budget/plain56-seed0"]
    assert out[1].drawn == ["paper/plain20-seed0"] and out[1].partial
    assert [r.paths[0].name for r in plots.plot_figures("fig1", runs, results, "paper", PNG)] == ["fig1.png"]


def test_a_run_whose_metrics_are_cut_short_is_left_out_and_said(runs, results):
    make_run(runs, "paper", "plain20")
    make_run(runs, "paper", "plain56")
    cut = make_run(runs, "paper", "plain56", seed=1)
    text = (cut / "metrics.csv").read_text()
    (cut / "metrics.csv").write_text(text[: len(text) // 2])
    result = plots.plot_figure("fig1", runs, results, formats=PNG)
    assert result.drawn == ["paper/plain20-seed0", "paper/plain56-seed0"]
    assert "paper/plain56-seed1 left out: metrics.csv is cut short" in caption(result.figure)
    (runs / "paper" / "plain56-seed0" / "summary.json").write_text("{")  # the only other plain-56
    result = plots.plot_figure("fig1", runs, results, formats=PNG)
    assert result.drawn == ["paper/plain20-seed0"] and result.partial
    assert result.missing == ["plain-56: paper/plain56-seed0 cannot be read (summary.json): restore it, or delete it "
                              "and run `resnet-repro sweep cifar --n 9 --arch plain`"]
    assert any(n.startswith("paper/plain56-seed0 left out: summary.json") for n in result.notes)
