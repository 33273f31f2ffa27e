"""Weights as a result: exported from a finished run's checkpoint with sha256 and size in its summary, scored
again by `resnet-repro eval` to the committed number, served by hubconf.py with the pixel mean inside, and a
damaged file or another net's weights one line."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from resnet_repro import paper, weights
from resnet_repro.cli import app

# a ResNet-20 trained on the bundled sample (profile=sample, fp32), its run files and weights committed: the
# number it reported must come back from them, whatever changes in loading or preprocessing
SAMPLE_RUN = Path(__file__).parent / "data" / "runs" / "sample" / "resnet20-A-seed0-fp32"
REPO = Path(__file__).resolve().parents[1]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_a_committed_weight_file_scores_its_committed_error_again():
    result = invoke("eval", SAMPLE_RUN)
    assert result.exit_code == 0, result.output
    reported = json.loads((SAMPLE_RUN / "summary.json").read_text())["final_test_error"]
    assert f"test error {reported:.2f}% on 500 test images in fp32; the run reported {reported:.2f}% (fp32): equal" in result.stdout


def test_in_another_precision_it_agrees_within_one_image():
    result = invoke("eval", SAMPLE_RUN, "--precision", "bf16")
    assert result.exit_code == 0 and "in bf16; the run reported" in result.stdout
    assert ": equal" in result.stdout or "not equal, within 0.05 points" in result.stdout


@pytest.mark.parametrize("damage, says", [
    (lambda p: p.write_bytes(b"not a torch file"), "cannot read"),
    (lambda p: torch.save({"net.conv1.weight": torch.zeros(1)}, p), "does not hold the weights of ResNet-20"),
])
def test_a_damaged_or_foreign_weight_file_is_one_line(tmp_path, damage, says):
    run = tmp_path / SAMPLE_RUN.name
    shutil.copytree(SAMPLE_RUN, run)
    summary = json.loads((run / "summary.json").read_text())
    del summary["weights"]  # else the sha256 check answers first
    (run / "summary.json").write_text(json.dumps(summary))
    damage(run / "weights.pt")
    result = invoke("eval", run)
    assert result.exit_code == 2 and "Traceback" not in result.output
    [line] = result.stderr.strip().splitlines()
    assert says in line


def test_a_weight_file_that_is_not_the_one_its_summary_names_is_refused(tmp_path):
    run = tmp_path / SAMPLE_RUN.name
    shutil.copytree(SAMPLE_RUN, run)
    (run / "weights.pt").write_bytes((run / "weights.pt").read_bytes() + b"\0")
    result = invoke("eval", run)
    assert result.exit_code == 2 and "sha256 differs" in result.stderr


def test_a_run_tested_on_other_images_than_eval_would_score_is_refused(tmp_path):
    run = tmp_path / SAMPLE_RUN.name
    shutil.copytree(SAMPLE_RUN, run)
    summary = json.loads((run / "summary.json").read_text())
    summary["test_split"] = "test[:200]"  # what the smoke profile's subset meant before it was evenly spaced
    (run / "summary.json").write_text(json.dumps(summary))
    result = invoke("eval", run)
    assert result.exit_code == 2 and "Traceback" not in result.output
    [line] = result.stderr.strip().splitlines()
    assert "was tested on test[:200]" in line and "not the same images" in line


def test_collect_exports_the_weights_of_finished_runs_and_never_replaces_one(tmp_path):
    campaign, into = tmp_path / "campaign", tmp_path / "experiments"
    done = invoke("run", "custom", "profile=smoke", "model.n=1", "engine.threads=1", "--results-dir",
                  campaign / "results")
    assert done.exit_code == 0, done.output
    result = invoke("collect", campaign / "experiments", "--runs-dir", into)
    assert result.exit_code == 0 and "collected resnet8-A-seed0-sample" in result.stdout, result.output
    [run] = (into / "smoke").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["weights"]["sha256"] == weights.sha256(run / "weights.pt")
    assert summary["weights"]["bytes"] == (run / "weights.pt").stat().st_size
    assert not (run / "checkpoint.pt").exists()  # the weights only: no optimizer, no training state
    state = torch.load(run / "weights.pt", weights_only=True)
    assert "pixel_mean" in state and all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    # the exported weights' own fp32 error is kept, so fp32 rescoring (the hub's) is checked for equality
    # even where the run trained and scored in bf16
    assert 0 <= summary["weights"]["fp32_test_error"] <= 100 and summary["weights"]["fp32_scored_on"].startswith("cpu")
    again = invoke("eval", run, "--precision", "fp32")
    assert again.exit_code == 0 and f"{summary['weights']['fp32_test_error']:.2f}%" in again.stdout and ": equal" in again.stdout, again.output
    before = (run / "summary.json").read_bytes()
    assert "collected" not in invoke("collect", campaign / "experiments", "--runs-dir", into).stdout
    assert (run / "summary.json").read_bytes() == before


@pytest.mark.parametrize("name", list(weights.HUB))
def test_the_hub_builds_the_papers_nets(name):
    model = torch.hub.load(str(REPO), name, source="local", pretrained=False)
    arch, n = weights.HUB[name]
    assert sum(p.numel() for p in model.parameters()) == paper.CIFAR_PARAMS[n]
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_the_hub_serves_committed_weights_with_their_sha256_and_the_mean_inside(tmp_path, monkeypatch):
    run = tmp_path / "resnet20-A-seed0"
    shutil.copytree(SAMPLE_RUN, run)  # as if it were the paper-schedule run of seed 0
    monkeypatch.setattr(weights, "HUB_RUNS", tmp_path)
    model = weights.hub_model("resnet", 3, pretrained=True)
    state = torch.load(run / "weights.pt", weights_only=True)
    assert torch.equal(model.pixel_mean, state["pixel_mean"]) and not model.training
    images = torch.rand(4, 3, 32, 32)
    assert torch.equal(model(images), model.net(images - state["pixel_mean"]))
    (run / "weights.pt").write_bytes((run / "weights.pt").read_bytes()[:-1])
    with pytest.raises(weights.UserError, match="sha256 differs"):
        weights.hub_model("resnet", 3, pretrained=True)


def test_eval_of_the_hub_scores_what_the_hub_serves_beside_its_run(tmp_path, monkeypatch):
    shutil.copytree(SAMPLE_RUN, tmp_path / "resnet20-A-seed0")  # as if it were the paper-schedule run of seed 0
    monkeypatch.setattr(weights, "HUB_RUNS", tmp_path)
    result = invoke("eval", "--hub", "cifar10_resnet20")
    reported = json.loads((SAMPLE_RUN / "summary.json").read_text())["final_test_error"]
    assert result.exit_code == 0, result.output
    assert f"on 500 test images in fp32; the run reported {reported:.2f}% (fp32): equal" in result.stdout


def test_every_committed_paper_weight_file_is_the_one_its_summary_names_and_the_hub_serves_it():
    served = 0
    for summary_file in sorted((REPO / "experiments" / "paper").glob("*/summary.json")):
        named = json.loads(summary_file.read_text()).get("weights")
        if not named:
            continue
        assert weights.sha256(summary_file.parent / named["file"]) == named["sha256"], summary_file.parent
        hub_name = next((name for name, (arch, n) in weights.HUB.items()
                         if weights.hub_run(arch, n).path == summary_file.parent), None)
        if hub_name:
            model = torch.hub.load(str(REPO), hub_name, source="local", pretrained=True)
            state = torch.load(summary_file.parent / named["file"], weights_only=True)
            assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()), hub_name
            served += 1
    assert served == sum(weights.hub_run(a, n).weights.exists() for a, n in weights.HUB.values())
