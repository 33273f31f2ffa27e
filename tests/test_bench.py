"""`resnet-repro bench`: both pipelines timed in one process, a row appended to bench.csv."""

import csv

import pytest
import torch
from PIL import Image

from resnet_repro.bench import run_bench
from resnet_repro.engine import cpu_compiler


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
    # a bench stands for a paper-schedule run, which compiles on a CPU with a C++ compiler
    compiles = cpu_compiler() is not None
    assert f"compile (ours): {'default (auto: default on CPU with' if compiles else 'eager'}" in "\n".join(lines)
    assert ("torch.compile (default)" in row["ours_pipeline"]) is compiles


def test_bench_pack_times_one_run_alone_against_k_packed(tmp_path):
    from resnet_repro.bench import run_pack_bench

    lines = []
    result = run_pack_bench(2, n=1, batch_size=16, steps=2, warmup=1, results_dir=tmp_path, log=lines.append,
                            overrides=["engine.compile=false"])
    assert lines[-1] == f"pack speedup: {result.speedup:.2f}x" and result.member_images_per_s > 0
    assert any(line.startswith("packed") and "2 runs of 64k iterations packed" in line for line in lines)
    run_bench(n=1, batch_size=16, steps=1, warmup=0, workers=0, results_dir=tmp_path,  # the other kind of row
              overrides=["engine.compile=false"])
    with open(tmp_path / "bench.csv") as f:
        packed, plain = list(csv.DictReader(f))
    assert packed["pack"] == "2" and float(packed["member_images_per_s"]) > 0 and plain["pack"] == ""
    assert packed["ours_pipeline"].startswith("2 runs packed")


@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
def test_bench_imagenet_times_each_pipeline_and_resnet50_on_generated_jpegs(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from resnet_repro.cli import app

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run_bench(n=1, batch_size=16, steps=1, warmup=0, workers=0, results_dir=tmp_path,  # an older kind of row
              overrides=["engine.compile=false"])
    args = ["bench", "imagenet", "--images", "8", "--batch-size", "2", "--steps", "1", "--workers", "1",
            "--results-dir", str(tmp_path), "engine.precision=fp32", "engine.compile=false"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    jpegs = sorted((tmp_path / "cache" / "resnet_repro" / "bench_imagenet" / "train").rglob("*.JPEG"))
    assert len(jpegs) == 8 and all(300 <= min(Image.open(p).size) <= 500 for p in jpegs)  # ImageNet's sizes
    with open(tmp_path / "bench.csv") as f:
        cifar, pipeline, step = list(csv.DictReader(f))
    assert cifar["bench"] == "cifar" and cifar["pipeline"] == ""
    assert pipeline["bench"] == step["bench"] == "imagenet" and "CPU workers" in pipeline["pipeline"]
    assert float(pipeline["images_per_s"]) > 0 and pipeline["workers"] == "1"
    assert pipeline["per_worker_images_per_s"] == pipeline["images_per_s"]
    assert step["model"] == "resnet50-B" and step["batch"] == "2" and "CPU: a few steps" in step["pipeline"]
    assert step["precision"].startswith("fp32") and "generated JPEGs" in step["data"]
    assert "images/s" in result.output and "GPU pipeline: not measured" in result.output  # no GPU here
    again = CliRunner().invoke(app, args)  # the generated folder is reused, not written again
    assert again.exit_code == 0 and "writing" not in again.output and "writing 8" in result.output


def test_bench_rejects_an_unknown_kind(tmp_path):
    from typer.testing import CliRunner

    from resnet_repro.cli import app

    result = CliRunner().invoke(app, ["bench", "imagnet", "--results-dir", str(tmp_path)])
    assert result.exit_code != 0 and "choose one of cifar, imagenet" in result.output
    assert "Traceback" not in result.output
