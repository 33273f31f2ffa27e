"""`resnet-repro bench`: both pipelines timed in one process, a row appended to bench.csv."""

import csv

import torch

from resnet_repro.bench import run_bench


def test_bench_times_both_pipelines_and_appends_a_row(tmp_path):
    lines = []
    result = run_bench(n=1, batch_size=16, steps=2, warmup=1, workers=0, results_dir=tmp_path, log=lines.append)
    assert lines[-1] == f"speedup: {result.speedup:.2f}x" and result.speedup > 0
    assert any(line.startswith("reference") and "64k iterations" in line for line in lines)
    with open(tmp_path / "bench.csv") as f:
        [row] = list(csv.DictReader(f))
    assert row["model"] == "resnet8-A" and row["batch"] == "16" and float(row["ours_images_per_s"]) > 0
    assert row["torch"] == torch.__version__ and row["git_commit"] and row["precision"].startswith(("bf16", "fp32"))
    assert any(line.startswith("precision (ours): ") for line in lines)


