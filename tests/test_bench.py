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




def test_bench_pack_times_one_run_alone_against_k_packed(tmp_path):
    from resnet_repro.bench import run_pack_bench

    lines = []
    result = run_pack_bench(2, n=1, batch_size=16, steps=2, warmup=1, results_dir=tmp_path, log=lines.append)
    assert lines[-1] == f"pack speedup: {result.speedup:.2f}x" and result.member_images_per_s > 0
    assert any(line.startswith("packed") and "2 runs of 64k iterations packed" in line for line in lines)
    run_bench(n=1, batch_size=16, steps=1, warmup=0, workers=0, results_dir=tmp_path)  # the other kind of row
    with open(tmp_path / "bench.csv") as f:
        packed, plain = list(csv.DictReader(f))
    assert packed["pack"] == "2" and float(packed["member_images_per_s"]) > 0 and plain["pack"] == ""
    assert packed["ours_pipeline"].startswith("2 runs packed")
