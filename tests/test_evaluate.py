"""Scoring saved models: torchvision weights, our checkpoints and ensembles (`eval`), and the round trip
from a Table 2 smoke run through the CLI to its checkpoints scored again."""

import json

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from resnet_repro import evaluate
from resnet_repro.cli import app
from resnet_repro.models import from_torchvision

pytestmark = [pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning"),
              pytest.mark.usefixtures("one_thread")]


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_weights_give_identical_logits(tmp_path, depth):
    torch.manual_seed(depth)
    theirs = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    for m in theirs.modules():  # make BN statistics matter
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    torch.save(theirs.state_dict(), tmp_path / "weights.pth")
    ours = from_torchvision(torch.load(tmp_path / "weights.pth")).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_evaluate_torchvision_weights_maps_classes_by_classes_tsv(image_tree, tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(evaluate.UserError, match="classes.tsv"):
        evaluate.evaluate_checkpoint(tmp_path / "resnet18.pth", "center", image_tree, device="cpu", workers=0)
    (image_tree / "classes.tsv").write_text("n00000000\t0\ttench\nn00000001\t217\tspringer\nn00000002\t482\tcassette\n")
    try:
        r = evaluate.evaluate_checkpoint(tmp_path / "resnet18.pth", "center", image_tree, device="cpu", workers=0)
    finally:
        (image_tree / "classes.tsv").unlink()
    assert r["images"] == 6 and r["members"] == ["resnet18"] and 0 <= r["top5_error"] <= r["top1_error"] <= 100


def test_errors_count_top1_and_top5_misses():
    scores = torch.tensor([[0.1, 0.9] + [0.0] * 6, [0.9, 0.1] + [0.0] * 6, [0.0] * 7 + [1.0]])
    # image 0 right; image 1 wrong at top-1, in the top 5; image 2 (label 1) out of the top 5
    assert evaluate.errors(scores, torch.tensor([1, 1, 1])) == pytest.approx((200 / 3, 100 / 3))


def test_table2_smoke_run_through_the_cli_then_its_checkpoints_score_again(image_tree, tmp_path):
    result = CliRunner().invoke(app, ["run", "table2", "profile=smoke", "--data-dir", str(image_tree),
                                      "--results-dir", str(tmp_path / "results")])
    assert result.exit_code == 0, result.output
    run_dirs = sorted((tmp_path / "experiments" / "smoke").iterdir())
    assert [p.name for p in run_dirs] == ["plain18-seed0-sample", "plain34-seed0-sample",
                                          "resnet18-A-seed0-sample", "resnet34-A-seed0-sample"]
    for run in run_dirs:
        s = json.loads((run / "summary.json").read_text())
        assert s["status"] == "finished" and s["dataset"] == "imagenet_sample" and s["eval_protocol"] == "center"
        assert set(s["final_eval"]) == {"10crop", "multiscale"}  # the final model under Tables 2-4's protocols
        assert (run / "checkpoint.pt").exists() and (run / "metrics.csv").exists()
    assert (tmp_path / "results" / "table2.md").exists()
    # a checkpoint scores again to the numbers of its run; two runs make an ensemble
    s = json.loads((run_dirs[2] / "summary.json").read_text())
    again = evaluate.evaluate_checkpoint(run_dirs[2], "10crop", device="cpu")
    assert again["top1_error"] == pytest.approx(s["final_eval"]["10crop"]["top1_error"])
    assert again["top5_error"] == pytest.approx(s["final_eval"]["10crop"]["top5_error"])
    both = evaluate.ensemble_eval(run_dirs[2:], "center", device="cpu")
    assert both["members"] == ["resnet18-A-seed0-sample", "resnet34-A-seed0-sample"] and both["images"] == 6
