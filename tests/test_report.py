"""results/README.md from synthetic run directories: what exists, the hardware, the claims."""

import pandas as pd
from rundirs import make_run

from resnet_repro import claims, report, tables
from resnet_repro.runs import load_runs


def test_readme_links_what_exists_and_states_hardware_and_claims(runs, results):
    make_run(runs, "paper", "plain20", final_error=9.0, wall_s=1800, device="NVIDIA H100")
    make_run(runs, "paper", "plain56", final_error=12.0, wall_s=5400, device="NVIDIA H100")
    make_run(runs, "budget", "plain20", status="running", n_points=2, wall_s=600, device="cpu (x86_64, 2 threads)")
    tables.write_tables(runs, results, tables=["table6"])
    (results / "fig1.png").write_bytes(b"png")
    text = report.write_readme(runs, results).read_text()
    assert "[Table 6: CIFAR-10 test error (%)](table6.md)" in text and "table3.md" not in text
    assert "[Fig. 1: plain-20 vs plain-56 on CIFAR-10](fig1.png)" in text and "fig6" not in text
    assert "Total wall time 2.2 h over 3 runs" in text
    assert "NVIDIA H100 (2 runs); cpu (x86_64, 2 threads) (1 runs)" in text
    assert ("plain-56 has higher test error than plain-20 (Fig. 1): **holds**. final test error: plain-56 12.00%, "
            "plain-20 9.00%; plain-20 3.00 points below plain-56, beyond the tolerance ±0.23 (assumed seed std 0.16) "
            "(profile `paper`: paper schedule)") in text
    assert "deeper ResNets respond less per layer (Fig. 7): not enough data" in text
    assert "**inconclusive**: a gap within the tolerance" in text  # the rules are stated once


def test_readme_judges_a_claim_in_each_setting_that_can(runs, results):
    for profile, e20, e56 in (("paper", 9.0, 7.0), ("budget", 15.0, 20.0)):
        make_run(runs, profile, "resnet20-A", final_error=e20)
        make_run(runs, profile, "resnet56-A", final_error=e56)
    make_run(runs, "smoke", "resnet20-A", final_error=50.0)  # one depth only: cannot judge, left out
    make_run(runs, "proxy", "resnet20-A", final_error=15.0)
    make_run(runs, "proxy", "resnet56-A", final_error=15.1)  # inside the noise
    judged = claims.judge_by_setting(load_runs(runs), claims.resnet_error_falls_with_depth)
    assert [c.verdict for c in judged] == [claims.HOLDS, claims.FAILS, claims.INCONCLUSIVE]
    assert "profile `paper`" in judged[0].evidence and "profile `budget`" in judged[1].evidence
    text = report.write_readme(runs, results).read_text()
    assert "- ResNet test error falls with depth up to 110 layers (Table 6):\n  - **holds**. " in text
    assert "\n  - **does not hold**. " in text and "\n  - **inconclusive**. " in text
    assert "smoke" not in text.split("## The paper's claims")[1]


def test_write_report_writes_tables_2_to_6_the_weights_then_the_readme(runs, results):
    paths = report.write_report(runs, results)
    assert [p.name for p in paths] == [f"table{i}.{ext}" for i in range(2, 7) for ext in ("csv", "md")] + [
        "weights.md", "runs.csv", "README.md"]
    assert "none yet" in (results / "weights.md").read_text()
    assert "No finished runs yet" in (results / "table5.md").read_text()
    assert "- [Table 6: CIFAR-10 test error (%)](table6.md) ([csv](table6.csv))" in (results / "README.md").read_text()


def test_the_runs_list_traces_every_run_to_its_commit_device_precision_seed_and_wall_time(runs, results):
    make_run(runs, "paper", "resnet20-A", seed=1, wall_s=29053.04, device="cpu (AMD EPYC, 2 cores, 1 threads)",
             git_commit="f5f3066690d7", amp=True)
    make_run(runs, "budget", "plain20", variant="bn64", status="running", final_error=30.0, amp=False)
    (make_run(runs, "budget", "plain56") / "summary.json").write_text("{")  # damaged: kept, with what is known
    path = report.write_runs_list(runs, results)
    listed = pd.read_csv(path, dtype=str, keep_default_na=False)  # as written
    assert list(listed.run_id) == ["plain20-seed0-bn64", "plain56-seed0", "resnet20-A-seed1"]  # profile, then id
    paper_run = listed.iloc[2].to_dict()
    assert {k: paper_run[k] for k in ("profile", "status", "model", "seed", "final_test_error", "precision", "device",
                                      "git_commit", "wall_s", "finished")} == {
        "profile": "paper", "status": "finished", "model": "resnet20-A", "seed": "1", "final_test_error": "10.0",
        "precision": "bf16", "device": "cpu (AMD EPYC, 2 cores, 1 threads)", "git_commit": "f5f3066690d7",
        "wall_s": "29053.0", "finished": "2025-01-01T01:00:00"}
    assert listed.iloc[0][["status", "overrides", "precision", "final_test_error", "finished"]].tolist() == [
        "running", "train.x=bn64", "fp32", "", ""]
    assert listed.iloc[1][["status", "git_commit"]].tolist() == ["unreadable", ""]
    assert "[runs.csv](runs.csv)" in report.write_readme(runs, results).read_text()


def test_readme_names_runs_left_out_for_a_damaged_file(runs, results):
    make_run(runs, "budget", "plain20")
    run = make_run(runs, "budget", "plain56")
    (run / "summary.json").write_text('{"run_id": "plain56-se')
    text = report.write_readme(runs, results).read_text()
    assert "Left out where a file cannot be read: budget/plain56-seed0 (summary.json)." in text


def test_readme_says_how_far_the_paper_schedule_on_the_original_pixels_got(runs, results):
    make_run(runs, "paper", "resnet20-A", seed=0, final_error=8.6)
    make_run(runs, "paper", "resnet20-A", seed=1, final_error=8.9)
    make_run(runs, "paper", "resnet20-A", seed=0, variant="fp32", status="running", device="cpu (Xeon, 1 threads)")
    make_run(runs, "paper", "resnet32-A", final_error=7.7, dataset="cifar10_jpeg90")  # a lossy copy: not counted
    for seed, (error, grouped) in enumerate([(15.0, 14.2), (15.5, 14.6), (15.3, None)]):
        make_run(runs, "budget", "resnet20-A", seed=seed, final_error=error)
        if grouped:
            make_run(runs, "budget", "resnet20-A", seed=seed, final_error=grouped, variant="bn64")
    results.mkdir(parents=True)
    (results / "bench.csv").write_text("device,model,ours_images_per_s,ours_pipeline\n"
                                       "NVIDIA H200,resnet20-A,34000,ours\ncpu (Xeon),resnet20-A,1300,ours\n")
    text = report.write_readme(runs, results).read_text()
    section = text.split("## The paper's schedule on the original pixels: how far")[1].split("\n## ")[0]
    assert "| resnet20-A | Table 6; three seeds" in section and "| 3 | 2 | 8.60, 8.90 |  | 1 x about 4 min |" in section
    assert "resnet20-A-seed0-fp32 32,000/64,000 it on CPU" in section
    assert "| resnet32-A | Table 6 | 1 | 0 |  |  | 1 x about 7 min |" in section
    assert "| resnet110-A | Table 6: best (mean±std) of 5 runs | 5 | 0 |  |  | 5 x about 24 min |" in section
    assert "at ResNet-20's measured 34,000 images/s on an NVIDIA H200" in section  # the GPU row, not the CPU's
    assert ("- BN over 64 (model.bn_group=64), profile `budget` (budget schedule (5k iterations, 7.8% of the paper's "
            "64k), not the paper's schedule), cifar10: 14.40% (mean of 2) against 15.27% (mean of 3) without it: "
            "0.87 points lower, beyond the seed noise") in section
    assert "fp32 (engine.precision=fp32), profile" not in section  # no finished fp32 run: nothing to compare


def test_the_weights_table_lists_runs_with_weights_and_fills_a_readme_between_its_markers(runs, results):
    make_run(runs, "paper", "resnet20-A", final_error=8.3, precision="bf16", weights={
        "file": "weights.pt", "sha256": "ab" * 32, "bytes": 1131669, "fp32_test_error": 8.32})
    make_run(runs, "paper", "resnet32-A", final_error=7.4)  # no weights: not listed
    readme = results.parent / "README.md"
    readme.write_text(f"# x\n\n{report.WEIGHTS_START}\nold\n{report.WEIGHTS_END}\n\nrest\n")
    written = report.write_weights_table(runs, results)
    table = (results / "weights.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| ResNet-20"))
    assert "`paper/resnet20-A-seed0` (hub)" in row and "| 8.30 (bf16) | 8.32 | 8.75 | 8.27 | 7.40 |" in row
    assert "1.08 MiB" in row and "resnet-repro eval experiments/paper/resnet20-A-seed0" in row
    assert "ResNet-32" not in table and "best test epoch" in table
    assert readme in written and "old" not in readme.read_text() and row in readme.read_text()
    assert readme.read_text().endswith("\n\nrest\n")
