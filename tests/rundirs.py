"""Synthetic run directories in the trainer's format (`<runs_dir>/<profile>/<run_id>/`), for report/plot tests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from resnet_repro.paper import CIFAR_PARAMS

LABELS = {"paper": "paper schedule", "budget": "budget schedule (5k iterations, 7.8% of the paper's 64k)",
          "sample": "bundled 1k-image CIFAR-10 sample, 200 iterations"}
ITERATIONS = {"paper": 64_000, "budget": 5_000, "sample": 200}
HEADER = "iteration,epoch,lr,train_loss,train_error,test_error,test_top5_error,images_per_s,wall_s"


def make_run(runs_dir: Path, profile: str, model_name: str, seed: int = 0, n_points: int = 6,
             final_error: float = 10.0, final_train_error: float | None = None, responses: list[float] | None = None,
             status: str = "finished", iterations: int | None = None, dataset: str | None = None,
             final_top5_error: float | None = None, eval_protocol: str = "single", variant: str = "",
             device: str = "NVIDIA H100 80GB HBM3", wall_s: float = 600.0, **extra) -> Path:
    """A run whose errors fall from 90% to `final_error` (test) and `final_train_error` (train, default
    final_error - 3) over `n_points` metrics rows; a test evaluation every second row and the last.
    An unfinished run has its rows over the first half of its schedule."""
    if extra.get("ensemble"):  # named after the paper's row, e.g. "ResNet (ILSVRC'15)"
        arch, depth, shortcut, family = "ensemble", None, "", "imagenet"
    else:
        arch, depth, shortcut = re.fullmatch(r"(plain|resnet)(\d+)(?:-([ABC]))?.*", model_name).groups()
        family = "imagenet" if int(depth) in (18, 34, 50, 101, 152) else "cifar"
    iterations = iterations or ITERATIONS.get(profile, 1000)
    train_final = final_error - 3 if final_train_error is None else final_train_error
    run_id = re.sub(r"[^\w.-]", "", model_name) + f"-seed{seed}" + (f"-{variant}" if variant else "")
    run = Path(runs_dir) / profile / run_id
    run.mkdir(parents=True)

    lines = [HEADER]
    done = status == "finished"
    span = iterations if done else iterations // 2
    steps = np.linspace(span / max(n_points, 1), span, n_points)
    decay = (np.exp(-5 * steps / span) - np.exp(-5)) / (1 - np.exp(-5))  # 1 at 0, 0 at the end
    for i, (it, train, test) in enumerate(zip(steps, train_final + (90 - train_final) * decay,
                                              final_error + (90 - final_error) * decay)):
        tested = i % 2 == 1 or i == n_points - 1
        top5 = "" if final_top5_error is None or not tested else f"{final_top5_error:.4f}"
        lines.append(f"{int(it)},{it / 390:.3f},0.1,1.0,{train:.4f},{f'{test:.4f}' if tested else ''},{top5},"
                     f"5000,{it / 100:.1f}")
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    if responses is not None:
        (run / "responses.csv").write_text("layer,std\n" + "".join(f"{i},{s}\n" for i, s in enumerate(responses, 1)))

    summary = {
        "run_id": run_id, "experiment": "test", "status": status, "profile": profile,
        "profile_label": LABELS.get(profile, profile), "full_schedule": profile == "paper" and not variant,
        "dataset": dataset or ("cifar10" if family == "cifar" else "imagenet"),
        "model": {"family": family, "arch": arch, "depth": depth and int(depth),
                  "shortcut": "none" if arch == "plain" else shortcut, "stride_on": "v1", "name": model_name},
        "params": CIFAR_PARAMS.get((int(depth) - 2) // 6) if family == "cifar" else 21_797_672,
        "seed": seed, "iterations": iterations,
        "iterations_done": int(steps[-1]) if n_points else 0,
        "final_test_error": final_error if done else None, "final_train_error": train_final if done else None,
        "final_test_top5_error": final_top5_error if done else None, "eval_protocol": eval_protocol,
        "wall_s": wall_s, "device": device, "git_commit": "abc", "torch": "2.5", "started": "2025-01-01T00:00:00",
        "finished": "2025-01-01T01:00:00" if done else None, "overrides": [f"x={variant}"] if variant else [],
        "variant": variant, **extra,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    return run
