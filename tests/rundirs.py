"""Synthetic run directories in the trainer's format, written by results.RunDir, for report/plot tests."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from resnet_repro.paper import CIFAR_PARAMS
from resnet_repro.results import RunDir, Summary
from resnet_repro.spec import ModelSpec

LABELS = {"paper": "paper schedule", "budget": "budget schedule (5k iterations, 7.8% of the paper's 64k)",
          "sample": "bundled 1k-image CIFAR-10 sample, 200 iterations"}
ITERATIONS = {"paper": 64_000, "budget": 5_000, "sample": 200}


def make_run(runs_dir: Path, profile: str, model_name: str, seed: int = 0, n_points: int = 6,
             final_error: float = 10.0, final_train_error: float | None = None, responses: list[float] | None = None,
             status: str = "finished", iterations: int | None = None, dataset: str | None = None,
             final_top5_error: float | None = None, eval_protocol: str = "single", variant: str = "",
             device: str = "NVIDIA H100 80GB HBM3", wall_s: float = 600.0, **extra) -> Path:
    """A run whose errors fall from 90% to `final_error` (test) and `final_train_error` (train, default
    final_error - 3) over `n_points` metrics rows; a test evaluation every second row and the last.
    An unfinished run has its rows over the first half of its schedule."""
    if extra.get("ensemble"):  # named after the paper's row, e.g. "ResNet (ILSVRC'15)"
        model = {"family": "imagenet", "arch": "ensemble", "depth": None, "shortcut": "", "name": model_name}
    else:
        spec = ModelSpec.parse(model_name)
        model = {"family": spec.family, "arch": spec.arch, "depth": spec.depth,
                 "shortcut": "none" if spec.arch == "plain" else spec.shortcut, "stride_on": spec.stride_on,
                 "name": model_name}
    iterations = iterations or ITERATIONS.get(profile, 1000)
    train_final = final_error - 3 if final_train_error is None else final_train_error
    encoding = (dataset or "").partition("_")[2]
    data_tag = f"-{encoding}" if encoding.startswith("jpeg") else ""  # a lossy copy is named, as config.run_id does
    run_id = re.sub(r"[^\w.-]", "", model_name) + f"-seed{seed}" + data_tag + (f"-{variant}" if variant else "")
    run = RunDir(Path(runs_dir) / profile / run_id)

    done = status == "finished"
    span = iterations if done else iterations // 2
    steps = np.linspace(span / max(n_points, 1), span, n_points)
    decay = (np.exp(-5 * steps / span) - np.exp(-5)) / (1 - np.exp(-5))  # 1 at 0, 0 at the end
    rows = []
    for i, (it, train, test) in enumerate(zip(steps, train_final + (90 - train_final) * decay,
                                              final_error + (90 - final_error) * decay)):
        tested = i % 2 == 1 or i == n_points - 1
        rows.append({"iteration": int(it), "epoch": round(it / 390, 3), "lr": 0.1, "train_loss": 1.0,
                     "train_error": float(train), "test_error": float(test) if tested else None,
                     "test_top5_error": final_top5_error if tested else None, "images_per_s": 5000.0,
                     "wall_s": float(it / 100)})
    run.write_metrics(rows)
    if responses is not None:
        run.write_responses(responses)
    cifar = model["family"] == "cifar"
    fields = dict(
        run_id=run_id, experiment="test", status=status, profile=profile,
        profile_label=LABELS.get(profile, profile), full_schedule=profile == "paper" and not variant,
        dataset=dataset or ("cifar10" if cifar else "imagenet"), model=model,
        params=CIFAR_PARAMS.get((model["depth"] - 2) // 6) if cifar else 21_797_672, seed=seed,
        iterations=iterations, iterations_done=int(steps[-1]) if n_points else 0,
        final_test_error=final_error if done else None, final_train_error=train_final if done else None,
        final_test_top5_error=final_top5_error if done else None, eval_protocol=eval_protocol, wall_s=wall_s,
        device=device, git_commit="abc", torch="2.5", started="2025-01-01T00:00:00",
        finished="2025-01-01T01:00:00" if done else None, overrides=[f"train.x={variant}"] if variant else [],
        variant=variant,
    )
    run.write_summary(Summary(**{**fields, **extra}))
    return run.path
