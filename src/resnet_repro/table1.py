"""Table 1 and `resnet-repro models`: layers, parameters and multiply-adds counted from the built nets.

No runs are needed, only the nets: Table 1 counts the five ImageNet nets as the paper builds them
(option-B shortcuts, a down-sampling bottleneck strided on its first 1x1) for one 224x224 image and
sets the paper's FLOPs beside ours.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from . import paper
from .models import ResNet, cifar_resnet, count_multiply_adds, count_parameters, imagenet_resnet
from .results import atomic_write_text
from .spec import IMAGENET_LAYERS, ModelSpec

TABLE1_COLUMNS = ["model", "layers", "blocks", "params", "gflops", "paper_gflops", "gflops_diff_pct"]


def build(spec: ModelSpec) -> ResNet:
    """The net a spec names, with the paper's classes (10 for CIFAR-10, 1000 for ImageNet)."""
    if spec.family == "cifar":
        return cifar_resnet(spec.n, spec.arch, spec.shortcut, 10)
    return imagenet_resnet(spec.depth, spec.arch, spec.shortcut, spec.stride_on, 1000)


def counts(spec: ModelSpec, image_size: int) -> tuple[int, int]:
    """Parameters, and multiply-adds of every conv and fc layer for one `image_size` image."""
    model = build(spec)
    return count_parameters(model), count_multiply_adds(model, image_size)


def table1_rows() -> list[dict]:
    """One row per ImageNet depth: weighted layers, parameters, multiply-adds, and the paper's FLOPs."""
    rows = []
    for depth in sorted(IMAGENET_LAYERS):
        spec = ModelSpec("imagenet", "resnet", depth, "B", "v1")
        params, macs = counts(spec, 224)
        paper_g = paper.IMAGENET_GFLOPS[depth]
        rows.append({"model": spec.name, "layers": spec.depth, "blocks": paper.IMAGENET_BLOCKS[depth],
                     "params": params, "gflops": macs / 1e9, "paper_gflops": paper_g,
                     "gflops_diff_pct": 100 * (macs / 1e9 - paper_g) / paper_g})
    return rows


def write_table1(results_dir: Path) -> list[Path]:
    """results/table1.csv and table1.md."""
    rows, results_dir = table1_rows(), Path(results_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TABLE1_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "gflops": f"{r['gflops']:.3f}", "gflops_diff_pct": f"{r['gflops_diff_pct']:.2f}"})
    lines = [
        "# Table 1: ImageNet architectures",
        "",
        "Counted from the built models (option-B shortcuts, stride on the first 1x1 of a down-sampling "
        "bottleneck as in the paper) for one 224x224 image; multiply-adds of every conv and fc layer.",
        "",
        "| model | layers | blocks (conv2_x..conv5_x) | params | multiply-adds (G) | paper (G) | diff |",
        "|---|---:|---|---:|---:|---:|---:|",
        *(f"| {r['model']} | {r['layers']} | {r['blocks']} | {r['params']:,} | {r['gflops']:.2f} | "
          f"{r['paper_gflops']} | {r['gflops_diff_pct']:+.1f}% |" for r in rows),
        "",
    ]
    csv_path, md_path = results_dir / "table1.csv", results_dir / "table1.md"
    atomic_write_text(csv_path, buf.getvalue())
    atomic_write_text(md_path, "\n".join(lines))
    return [csv_path, md_path]
