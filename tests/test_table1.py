"""Table 1 and `resnet-repro models`: layers, parameters and FLOPs counted from the built nets."""

import pytest
import torchvision

from resnet_repro import paper, table1
from resnet_repro.models import count_parameters, imagenet_resnet


@pytest.fixture(scope="module")
def table1_rows():
    return {r["model"]: r for r in table1.table1_rows()}


def test_table1_flops_within_2_percent_of_the_paper(table1_rows):
    assert [r["model"] for r in table1_rows.values()] == [f"resnet{d}-B" for d in (18, 34, 50, 101, 152)]
    for depth, paper_gflops in paper.IMAGENET_GFLOPS.items():
        row = table1_rows[f"resnet{depth}-B"]
        assert row["paper_gflops"] == paper_gflops and row["layers"] == depth
        assert abs(row["gflops"] - paper_gflops) / paper_gflops < 0.02, row


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_option_b_parameters_equal_torchvision(table1_rows, depth):
    theirs = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    assert table1_rows[f"resnet{depth}-B"]["params"] == count_parameters(theirs)


def test_shortcut_options_a_b_c_add_parameters_in_that_order():
    a, b, c = (count_parameters(imagenet_resnet(34, "resnet", s)) for s in "ABC")
    assert count_parameters(imagenet_resnet(34, "plain")) == a < b < c


def test_write_table1(tmp_path, monkeypatch, table1_rows):
    monkeypatch.setattr(table1, "table1_rows", lambda: list(table1_rows.values()))  # counted once above
    csv_path, md_path = table1.write_table1(tmp_path)
    assert csv_path.read_text().splitlines()[0].startswith("model,layers,blocks,params,gflops,paper_gflops")
    assert "| resnet152-B | 152 | bottleneck [3,8,36,3] | 60,192,808 | 11.28 | 11.3 |" in md_path.read_text()


def test_counts_of_a_cifar_net():
    from resnet_repro.spec import ModelSpec

    assert table1.counts(ModelSpec.parse("resnet20-A"), 32) == (paper.CIFAR_PARAMS[3], 40_551_040)
