"""A finished CIFAR-10 run's weights as a result (issue 27): its net in fp32, no optimizer, as `weights.pt`
beside its run files, with sha256 and size in its summary; the net with the input normalisation it trained
with inside (`Normalised`: images in [0, 1], the training images' per-pixel mean subtracted, Sec. 4.2), so
`model(images)` just works; scoring a run's weights again on its test set (`resnet-repro eval RUN`), to
the number the run reported; and the models `hubconf.py` serves.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from .engine import Engine, eval_engine
from .hardware import device_name
from .errors import UserError
from .models import build_model
from .results import RunDir, Summary, atomic_write_bytes
from .scoring import evaluate
from .config import upgraded
from .spec import ModelSpec, spec_from_config
from .steppers import Scorer

RUN_FILES = ("config.yaml", "metrics.csv", "summary.json", "responses.csv")
EQUAL_WITHIN = 0.05  # points of error between a rescoring and its reference in another precision or on other hardware


class Normalised(nn.Module):
    """A CIFAR-10 net that takes images in [0, 1], (N, 3, 32, 32), and subtracts the per-pixel mean of the
    training images it was trained on, as its loader did (Sec. 4.2)."""

    def __init__(self, net: nn.Module, pixel_mean: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("pixel_mean", pixel_mean.float().reshape(3, 32, 32).clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images - self.pixel_mean)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _cifar_config(run: RunDir, data_dir: Path | None = None):
    """The run's config (of any version, in today's layout), its data in `data_dir` where given; a CIFAR-10
    run's only."""
    if not run.config.exists():
        raise UserError(f"{run.path} is not a run directory (no config.yaml)")
    cfg = upgraded(OmegaConf.load(run.config))
    if cfg.data.family != "cifar":
        raise UserError(f"{run.path} is not a CIFAR-10 run: weights are kept for CIFAR-10 runs")
    if data_dir is not None:
        cfg.data_dir = str(data_dir)
    return cfg


def export_weights(run: RunDir, into: RunDir, data_dir: Path | None = None) -> dict:
    """`into`/weights.pt from the finished `run`'s checkpoint: the net in fp32 with its pixel mean; returns
    the summary's `weights` entry, with the test error of the exported weights in fp32 on this machine
    (what the hub serves; the run itself may have scored in bf16)."""
    cfg = _cifar_config(run, data_dir)
    summary = run.read_summary()
    state = run.load_checkpoint()
    if summary is None or summary.status != "finished" or state is None or state["iteration"] != summary.iterations:
        raise UserError(f"{run.path} is not finished with its last checkpoint: nothing to export")
    engine = eval_engine("cpu", "fp32")
    data = _test_data(cfg, engine)  # the data the run trained on gives its mean
    net = build_model(cfg.model, 10)
    net.load_state_dict(state["model"])
    buf = io.BytesIO()
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in Normalised(net, data.pixel_mean)
                .state_dict().items()}, buf)
    atomic_write_bytes(into.weights, buf.getvalue())
    return {"file": into.weights.name, "sha256": sha256(into.weights), "bytes": into.weights.stat().st_size,
            "fp32_test_error": _test_error(load_weights(into.weights, cfg.model).net, data, engine),
            "fp32_scored_on": device_name(engine.device)}


def _test_data(cfg, engine: Engine):
    """The run's CIFAR-10 data (its test split, its training images' mean), batched as every rescoring is."""
    from .cifar import build_cifar

    cfg.engine.eval_batch_size = 1000
    return build_cifar(cfg, engine)


def _test_error(net: nn.Module, data, engine: Engine) -> float:
    """Top-1 error (%) of the bare net on the data's test set, the loader subtracting the mean as in training."""
    net = net.to(engine.device)
    if engine.channels_last:
        net = net.to(memory_format=torch.channels_last)
    [(error, _)] = evaluate(Scorer(net, engine), data.test, engine)
    return error


def collect(source: Path, into: Path, data_dir: Path | None = None) -> list[str]:
    """Every finished run under `source` (<profile>/<run id>/, e.g. the CPU campaign's) that `into` lacks:
    its run files copied, its weights exported beside them and named in its summary. Never overwrites a
    finished run already in `into`. Returns the run ids collected."""
    collected = []
    for summary_file in sorted(Path(source).glob("*/*/summary.json")):
        run = RunDir(summary_file.parent)
        summary = run.read_summary()
        target = RunDir(Path(into) / run.path.parent.name / run.path.name)
        if summary.status != "finished" or target.finished:
            continue
        target.path.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            if (run.path / name).exists():
                shutil.copy2(run.path / name, target.path / name)
        summary.weights = export_weights(run, target, data_dir)
        target.write_summary(summary)
        collected.append(summary.run_id)
    return collected


def is_cifar_run(path: Path) -> bool:
    """A CIFAR-10 run directory (its config.yaml says so)."""
    config = Path(path) / "config.yaml"
    return config.is_file() and OmegaConf.load(config).get("data", {}).get("family") == "cifar"


def _check_sha256(run: RunDir, summary: Summary | None) -> None:
    """The run's weights.pt is the file its summary names (where the summary names one)."""
    expected = ((summary and summary.weights) or {}).get("sha256")
    if expected and sha256(run.weights) != expected:
        raise UserError(f"{run.weights} is not the file its summary names (sha256 differs): restore it from git")


def load_weights(path: Path, model_cfg) -> Normalised:
    """A weights.pt into the net `model_cfg` describes; a damaged file or another architecture is one line."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise UserError(f"cannot read {path} ({type(e).__name__}): restore it from git") from None
    model = Normalised(build_model(model_cfg, 10), torch.zeros(3, 32, 32))
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} does not hold the weights of {spec_from_config(model_cfg).pretty} "
                        f"({first[:120]})") from None
    return model


def rescore(path: Path, data_dir: Path | None = None, device: str = "cpu", precision: str | None = None) -> dict:
    """A run's committed weights scored again on its own test set, in the run's precision unless another is
    given; beside the error the run reported (or, in fp32, the one its weights scored when collected)."""
    run = RunDir(path)
    cfg = _cifar_config(run, data_dir)
    summary: Summary = run.read_summary()
    if not run.weights.exists():
        raise UserError(f"{run.path} has no weights.pt (only finished runs of the paper profile keep theirs)")
    _check_sha256(run, summary)
    engine = eval_engine(device, precision or summary.trained_in)
    data = _test_data(cfg, engine)
    if summary.test_split and summary.test_split != data.test_split:  # e.g. a subset whose meaning changed since
        raise UserError(f"{run.path.name} was tested on {summary.test_split} and this code would test it on "
                        f"{data.test_split}: not the same images, so the errors cannot be compared")
    model = load_weights(run.weights, cfg.model)
    if not torch.equal(model.pixel_mean, data.pixel_mean.float()):
        raise UserError(f"the data in {cfg.data_dir} is not the data {run.path.name} trained on (another pixel mean)")
    error = _test_error(model.net, data, engine)
    return _beside(summary, error, engine.precision, len(data.test.labels))


def _beside(summary: Summary, error: float, precision: str, images: int) -> dict:
    """A rescoring beside its reference: the run's own error in the run's precision, else in fp32 the one its
    weights scored when collected, else the run's (another precision: agreement within EQUAL_WITHIN)."""
    collected, trained_in = (summary.weights or {}).get("fp32_test_error"), summary.trained_in
    if precision != trained_in and precision == "fp32" and collected is not None:
        reference, label = collected, f"its weights scored {collected:.2f}% in fp32 when collected"
    else:
        reference, label = summary.final_test_error, f"the run reported {summary.final_test_error:.2f}% ({trained_in})"
    within = max(EQUAL_WITHIN, 100 / images + 1e-9)  # on a small test set, one image
    return {"run_id": summary.run_id, "error": error, "reference": reference, "beside": label,
            "images": images, "precision": precision, "equal": error == reference,
            "agrees": abs(error - reference) <= within}


# ------------------------------------------------------------------------------------------ torch.hub

HUB_RUNS = Path(__file__).resolve().parents[2] / "experiments" / "paper"  # the checkout's committed runs
HUB = {f"cifar10_{arch}{6 * n + 2}": (arch, n) for arch in ("resnet", "plain") for n in (3, 5, 7, 9, 18)
       if not (arch == "plain" and n == 18)}  # hubconf.py's entry points: name -> (arch, n)


def hub_model(arch: str, n: int, pretrained: bool) -> Normalised:
    """The paper's CIFAR-10 net of depth 6n+2 (option A for a ResNet), taking images in [0, 1]; with
    `pretrained`, the weights of our paper-schedule run of seed 0 in the default recipe."""
    model_cfg = OmegaConf.create({"family": "cifar", "arch": arch, "n": n, "shortcut": "A"})
    if not pretrained:
        return Normalised(build_model(model_cfg, 10), torch.zeros(3, 32, 32))
    run = hub_run(arch, n)
    if not run.weights.exists():
        raise UserError(f"no weights for {ModelSpec('cifar', arch, 6 * n + 2).pretty} yet: {run.path} has no "
                        f"weights.pt (its paper-schedule run has not finished; `pretrained=False` builds the net)")
    _check_sha256(run, run.read_summary())
    return load_weights(run.weights, model_cfg).eval()


def hub_run(arch: str, n: int) -> RunDir:
    """The run whose weights the hub serves for the net: seed 0 in the default recipe."""
    return RunDir(HUB_RUNS / f"{ModelSpec('cifar', arch, 6 * n + 2).name}-seed0")


@torch.inference_mode()
def rescore_hub(name: str, data_dir: Path | None, device: str = "cpu") -> dict:
    """The hub model `name` (pretrained) on its run's test images in [0, 1], in fp32, beside the error its
    weights scored in fp32 when collected (or, for weights collected before that was kept, the one its run
    reported: that run may have scored in bf16, so agreement within EQUAL_WITHIN)."""
    from .cifar import run_images

    if name not in HUB:
        raise UserError(f"unknown hub model {name!r}: choose one of {', '.join(HUB)}")
    arch, n = HUB[name]
    run = hub_run(arch, n)
    model = hub_model(arch, n, pretrained=True).to(eval_engine(device, "fp32").device)
    arrays, _ = run_images(_cifar_config(run, data_dir))
    wrong = 0
    for start in range(0, len(arrays.test_labels), 1000):
        x = arrays.test_images[start : start + 1000].float().div(255).to(model.pixel_mean.device)
        wrong += int((model(x).argmax(1).cpu() != arrays.test_labels[start : start + 1000]).sum())
    return _beside(run.read_summary(), 100 * wrong / len(arrays.test_labels), "fp32", len(arrays.test_labels))
