"""One training loop for every experiment, CIFAR-10 and ImageNet alike (Sec. 3.4, 4.2): SGD on the
step or plateau schedule with the ResNet-110 warm-up, metrics rows, evaluation, atomic checkpoints
and exact resume, DDP under torchrun.

`fit` reads as a straight line: a step is `train_step`, scoring is `evaluate`, what a resume needs
is `TrainState`. Nothing here prints: progress goes to the `on_row` callback the caller passes in.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn
from torch.nn import functional as F

from .engine import Engine, StopFlag, stop_agreed
from .errors import Interrupted, TrainingDiverged, UserError
from .hardware import device_name
from .loader import Data
from .models import build_model, capture_responses, count_parameters
from .results import RunDir, Summary, git_commit, now

# ------------------------------------------------------------------------------------------ schedule


def lr_at(iteration: int, train_cfg: DictConfig, warming_up: bool, plateau_drops: int = 0) -> float:
    """`schedule: step` divides by 10 at each milestone; `schedule: plateau` (ImageNet, Sec. 3.4)
    divides by 10 `plateau_drops` times, as counted from the validation errors so far."""
    if warming_up:
        return float(train_cfg.warmup.lr)
    if train_cfg.get("schedule", "step") == "plateau":
        return float(train_cfg.lr) * 0.1 ** plateau_drops
    return float(train_cfg.lr) * 0.1 ** sum(iteration >= m for m in train_cfg.milestones)


def count_plateau_drops(rows: list[dict], train_cfg: DictConfig) -> int:
    """LR drops so far under `schedule: plateau`: one after each `patience` evaluations without
    the best top-1 error falling by `threshold` points, at most `max_drops`. A pure function of the
    metrics rows (which the checkpoint keeps), so a resumed run drops where an uninterrupted one does."""
    if train_cfg.get("schedule", "step") != "plateau":
        return 0
    p = train_cfg.plateau
    drops, best, waited = 0, math.inf, 0
    for error in (r["test_error"] for r in rows if r.get("test_error") is not None):
        if error < best - float(p.threshold):
            best, waited = error, 0
        else:
            waited += 1
            if waited >= int(p.patience) and drops < int(p.max_drops):
                drops, waited = drops + 1, 0
    return drops


def uses_warmup(train_cfg: DictConfig, depth: int) -> bool:
    warmup = train_cfg.get("warmup")
    return bool(warmup) and warmup.min_depth is not None and depth >= int(warmup.min_depth)


WARMUP_CHECK = 10  # iterations between warm-up checks (each pulls 3 numbers from the device)


def warmup_over(state: TrainState, train_cfg: DictConfig, engine: Engine) -> bool:
    """ResNet-110/1202 (Sec. 4.2): train at the warm-up LR "until the training error is below 80%
    (about 400 iterations)". Judged every 10 steps on the last `warmup.window` iterations (summed over
    DDP ranks) and not before `warmup.min_iterations`: a 10-step window ended the budget ResNet-110
    warm-ups at iterations 50 and 100, on noise, after which the training error went back up."""
    if state.iteration % WARMUP_CHECK:
        return False
    if engine.world > 1:
        dist.all_reduce(state.warm_window)
    _, wrong, n = state.warm_window.tolist()
    state.warm_window.zero_()
    w = train_cfg.warmup
    blocks = max(1, int(w.get("window", WARMUP_CHECK)) // WARMUP_CHECK)
    state.warm_history = (state.warm_history + [[wrong, n]])[-blocks:]
    if state.iteration < int(w.get("min_iterations", 0)) or len(state.warm_history) < blocks:
        return False
    wrong, n = (sum(column) for column in zip(*state.warm_history))
    return 100 * wrong / n < float(w.until_train_error)


# ------------------------------------------------------------------------------- model and one step


def build_optimizer(model: nn.Module, train_cfg: DictConfig) -> torch.optim.SGD:
    # fused: one kernel over all parameters instead of a loop over ~60 tensors (the update of ResNet-20
    # takes 0.2 ms instead of 0.9 on a CPU; far fewer launches on CUDA); same rule and state_dict.
    kwargs = dict(lr=float(train_cfg.lr), momentum=float(train_cfg.momentum),
                  weight_decay=float(train_cfg.weight_decay))
    try:
        return torch.optim.SGD(model.parameters(), fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the fused kernel
        return torch.optim.SGD(model.parameters(), **kwargs)


def prepare_model(cfg: DictConfig, engine: Engine, num_classes: int) -> tuple[nn.Module, torch.optim.SGD]:
    """The run's net on the engine's device and memory format, and its optimizer (`fit` and `bench`)."""
    model = build_model(cfg.model, num_classes).to(engine.device)
    if engine.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, build_optimizer(model, cfg.train)


def stepping_model(model: nn.Module, engine: Engine) -> nn.Module:
    """What `train_step` calls: the model, wrapped in DDP over ranks and compiled as the engine says.
    It shares its parameters with `model`, which checkpoints and evaluation use."""
    if engine.world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[engine.device.index]
                                                    if engine.device.type == "cuda" else None)
    if engine.compile and engine.device.type == "cpu":
        # inductor's C++ build warns "No CUDA runtime is found" on every CPU-only machine; nothing is wrong
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return torch.compile(model, mode=engine.compile) if engine.compile else model


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_step(model, optimizer, x, y, engine: Engine) -> torch.Tensor:
    """One SGD step. Returns (loss sum, wrong, count) on the device: no host sync here."""
    if engine.compile == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are no longer read
    with engine.autocast():
        logits = model(engine.prepare(x))
        loss = F.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    n = loss.new_full((), y.shape[0])  # a fill kernel; y.new_tensor(len(y)) would copy from the host and sync
    wrong = (logits.argmax(1) != y).sum().float()
    return torch.stack([loss.detach() * n, wrong, n])


# ----------------------------------------------------------------------------------------- scoring


def view_scores(model: nn.Module, views, engine: Engine) -> torch.Tensor:
    """Softmax scores averaged over test-time views: a batch tensor, or a list of them (crops, scales)."""
    views = views if isinstance(views, (list, tuple)) else [views]
    with engine.autocast():
        return sum(F.softmax(model(engine.prepare(v)).float(), 1) for v in views) / len(views)


def top_k_wrong(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How many images the top-1 and the top-5 scores miss (top-k of all classes where fewer than 5)."""
    top5 = scores.topk(min(5, scores.shape[1]), 1).indices
    return torch.stack([(top5[:, 0] != labels).sum(), (top5 != labels[:, None]).all(1).sum()])


@torch.inference_mode()
def evaluate(model: nn.Module, loader, engine: Engine) -> tuple[float, float]:
    """Top-1 and top-5 error (%) of `model` in eval mode over the loader, summed over DDP ranks."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, device=engine.device)
    for views, y in loader:
        wrong = top_k_wrong(view_scores(model, views, engine), y)
        counts += torch.cat([wrong, wrong.new_full((1,), y.shape[0])])
    model.train(was_training)
    if engine.world > 1:
        dist.all_reduce(counts)
    wrong1, wrong5, n = counts.tolist()
    return 100 * wrong1 / n, 100 * wrong5 / n


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, images: int, engine: Engine) -> int:
    """Re-estimate every BN layer's running mean/var as a plain average over about `images`
    training images (train-mode forward passes, no gradient, weights untouched). Returns the
    number of images used. Under DDP the statistics are averaged over ranks."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    was_training = model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches seen
    model.train()
    seen = 0
    try:
        for x, _ in batches:
            with engine.autocast():
                model(engine.prepare(x))
            seen += len(x) * engine.world
            if seen >= images:
                break
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.train(was_training)
    if engine.world > 1:
        for bn in bns:
            for buf in (bn.running_mean, bn.running_var):
                dist.all_reduce(buf)
                buf.div_(engine.world)
    return seen


def evaluate_run(model: nn.Module, data: Data, data_cfg: DictConfig, engine: Engine, epoch: int) -> tuple[float, float]:
    """`evaluate` on the test loader, after re-estimating BN statistics on training images of `epoch`
    if `data.bn_recalibrate_images` says so."""
    images = int(data_cfg.get("bn_recalibrate_images", 0) or 0)
    if images:
        recalibrate_bn(model, data.train.epoch(epoch), images, engine)
    return evaluate(model, data.test, engine)


@torch.inference_mode()
def measure_responses(model: nn.Module, loader, engine: Engine) -> list[float]:
    """Std of each 3x3 layer's response (BN output, before ReLU/addition) over the test set (Fig. 7),
    summed over DDP ranks (each holds a share of the test set): every rank must call it."""
    was_training = model.training
    model.eval()
    outputs, remove = capture_responses(model)
    sums = None
    try:
        for views, _ in loader:
            outputs.clear()
            with engine.autocast():
                model(engine.prepare(views))
            moments = torch.stack([torch.stack([o.new_full((), o.numel()), o.sum(), o.pow(2).sum()])
                                   for o in (o.double() for o in outputs)])
            sums = moments if sums is None else sums + moments
    finally:
        remove()
        model.train(was_training)
    if engine.world > 1:
        dist.all_reduce(sums)
    n, s, ss = sums.cpu().unbind(1)
    return (ss / n - (s / n) ** 2).clamp_min(0).sqrt().tolist()


# ------------------------------------------------------------------------- what a run carries along


@dataclass
class TrainState:
    """What a run carries from step to step and across a resume: with the model, the optimizer and
    the RNG, exactly what the checkpoint holds."""

    iteration: int
    rows: list[dict]  # metrics rows so far
    window: torch.Tensor  # (loss sum, wrong, count) since the last metrics row
    warm_window: torch.Tensor  # the same since the last warm-up check
    warmup_done: bool
    started: str
    wall_s: float  # training time before this session
    warm_history: list = field(default_factory=list)  # (wrong, count) of the last warm-up checks' blocks
    warmup_end: int | None = None  # the iteration the warm-up ended at

    @classmethod
    def new(cls, warmup: bool, device: torch.device) -> TrainState:
        return cls(0, [], torch.zeros(3, device=device), torch.zeros(3, device=device), not warmup, now(), 0.0)

    @classmethod
    def from_checkpoint(cls, state: dict, device: torch.device) -> TrainState:
        # checkpoints written before a key existed read with its empty value
        return cls(state["iteration"], state["rows"], torch.tensor(state["window"], device=device),
                   torch.tensor(state.get("warm_window", [0.0, 0.0, 0.0]), device=device), state["warmup_done"],
                   state["started"], state["wall_s"], state.get("warm_history", []), state.get("warmup_end"))

    def to_checkpoint(self, cfg: DictConfig, model: nn.Module, optimizer, wall_s: float) -> dict:
        return {
            "run_id": cfg.run.id, "iterations": int(cfg.train.iterations), "iteration": self.iteration,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
            "rows": self.rows, "window": self.window.tolist(), "warm_window": self.warm_window.tolist(),
            "warmup_done": self.warmup_done, "started": self.started, "wall_s": wall_s,
            "warm_history": self.warm_history, "warmup_end": self.warmup_end,
        }


def resume(run: RunDir, cfg: DictConfig, model: nn.Module, optimizer, engine: Engine) -> TrainState:
    """The run's state from its checkpoint (model, optimizer and RNG restored), or a fresh start."""
    state = run.load_checkpoint()
    if state is None:
        return TrainState.new(uses_warmup(cfg.train, int(cfg.run.depth)), engine.device)
    if state.get("run_id") != cfg.run.id or state.get("iterations") != int(cfg.train.iterations):
        raise UserError(f"checkpoint {run.checkpoint} belongs to another run or schedule; "
                        f"re-run with --restart to start over")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return TrainState.from_checkpoint(state, engine.device)


def batches_from(loader, iteration: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(epoch, images, labels) from the batch of `iteration` on, epoch after epoch, without end."""
    epoch, first = divmod(iteration, len(loader))
    while True:
        for x, y in loader.epoch(epoch, first):
            yield epoch, x, y
        epoch, first = epoch + 1, 0


def advance(state: TrainState, step: torch.Tensor, train_cfg: DictConfig, engine: Engine) -> None:
    """Count one step's (loss sum, wrong, count) into the state; end the warm-up where it is over."""
    state.window += step
    state.iteration += 1
    if not state.warmup_done:
        state.warm_window += step
        state.warmup_done = warmup_over(state, train_cfg, engine)
        if state.warmup_done:
            state.warmup_end = state.iteration


def metrics_row(state: TrainState, lr: float, per_epoch: int, images: float, seconds: float, wall_s: float) -> dict:
    """The metrics.csv row that closes a log window: loss and error over the window (already summed
    over ranks), speed and training time; the caller adds the test errors where it evaluated."""
    loss_sum, wrong, n = state.window.tolist()
    return {"iteration": state.iteration, "epoch": round(state.iteration / per_epoch, 3), "lr": lr,
            "train_loss": loss_sum / n, "train_error": 100 * wrong / n, "images_per_s": images / seconds,
            "wall_s": wall_s}


def record_row(state: TrainState, row: dict, run: RunDir, engine: Engine,
               on_row: Callable[[dict], None] | None) -> None:
    """Close the log window with `row`: into the state, metrics.csv and the caller's callback."""
    state.rows.append(row)
    state.window.zero_()
    if engine.is_main:
        run.write_metrics(state.rows)
        if on_row:
            on_row(row)


def stopped(summary: Summary, state: TrainState, run: RunDir, engine: Engine) -> Interrupted:
    """Mark the run interrupted (its checkpoint is saved) and return the error to raise."""
    summary.status, summary.iterations_done = "interrupted", state.iteration
    if engine.is_main:
        run.write_summary(summary)
    return Interrupted(f"interrupted at iteration {state.iteration}/{summary.iterations}; checkpoint saved in "
                       f"{run.path}; run the same command again to resume")


def finish_summary(summary: Summary, state: TrainState, run: RunDir, engine: Engine, wall_s: float) -> Summary:
    """The finished run's summary, from its last metrics rows, written."""
    final = state.rows[-1]
    summary.status, summary.iterations_done, summary.finished = "finished", state.iteration, now()
    summary.final_test_error, summary.final_test_top5_error = final.get("test_error"), final.get("test_top5_error")
    summary.final_train_error = final["train_error"]
    summary.best_test_error = min(r["test_error"] for r in state.rows if r.get("test_error") is not None)
    summary.wall_s = wall_s
    if engine.is_main:
        run.write_summary(summary)
    return summary


def start_summary(cfg: DictConfig, data: Data, engine: Engine, model: nn.Module, state: TrainState) -> Summary:
    m = cfg.model
    return Summary(
        run_id=cfg.run.id, experiment=cfg.experiment.name, status="running",
        profile=cfg.profile.name, profile_label=cfg.profile.label,
        full_schedule=bool(cfg.profile.full_schedule) and bool(cfg.run.get("keeps_schedule", not cfg.run.variant)),
        dataset=data.name, test_split=data.test_split, train_images=data.train_size,
        model={"family": m.family, "arch": m.arch, "depth": int(cfg.run.depth),
               "shortcut": "none" if m.arch == "plain" else m.shortcut, "stride_on": m.get("stride_on", "v1"),
               "name": cfg.run.model_name},
        params=count_parameters(model), seed=int(cfg.seed), iterations=int(cfg.train.iterations),
        iterations_done=state.iteration, batch_size=int(cfg.train.batch_size),
        eval_protocol=cfg.data.get("eval_protocol", "single"), amp=engine.amp, amp_reason=engine.amp_reason,
        compile=engine.compilation, wall_s=state.wall_s, device=device_name(engine.device), world_size=engine.world,
        git_commit=git_commit(),
        torch=torch.__version__, started=state.started, overrides=list(cfg.experiment.get("overrides", [])),
        variant=cfg.run.variant, warmup_end=state.warmup_end, input_pipeline=data.pipeline,
    )


def check_finite(values: list[float], run: RunDir, iteration: int, summary: Summary, engine: Engine) -> None:
    """Stop on a NaN/inf loss (or weights). Every rank sees the same reduced values, so all stop together."""
    if not all(math.isfinite(v) for v in values):
        summary.status, summary.iterations_done = "failed", iteration
        summary.failure = f"non-finite loss or weights by iteration {iteration}"
        if engine.is_main:
            run.write_summary(summary)
        kept = f"the last good checkpoint is kept in {run.path}" if run.checkpoint.exists() else "no checkpoint saved"
        raise TrainingDiverged(f"training diverged (non-finite loss or weights) by iteration {iteration}; {kept} "
                               f"(try a lower train.lr, or train.amp=false)")


def health(state: TrainState, model: nn.Module, engine: Engine) -> list[float]:
    """The loss sum since the last row and the sum of all weights, reduced over ranks: a diverged
    step can leave finite loss but NaN weights, which must never be checkpointed."""
    weights = torch.stack([p.detach().float().sum() for p in model.parameters()]).sum()
    values = torch.stack([state.window[0], weights])
    if engine.world > 1:
        dist.all_reduce(values)
    return values.tolist()


# ---------------------------------------------------------------------------------------- the loop


def fit(cfg: DictConfig, run: RunDir, data: Data, engine: Engine, on_row: Callable[[dict], None] | None = None,
        stop: StopFlag | None = None) -> Summary:
    """Train the run described by `cfg` to `train.iterations`, resuming from its checkpoint if any."""
    t = cfg.train
    stop = stop or StopFlag()
    torch.manual_seed(int(cfg.seed))
    model, optimizer = prepare_model(cfg, engine, data.num_classes)
    state = resume(run, cfg, model, optimizer, engine)
    summary = start_summary(cfg, data, engine, model, state)
    stepper = stepping_model(model, engine)
    session_start = time.perf_counter()

    def wall_s() -> float:
        return state.wall_s + time.perf_counter() - session_start

    def checkpoint() -> None:
        check_finite(health(state, model, engine), run, state.iteration, summary, engine)  # never save a diverged state
        if engine.is_main:
            run.save_checkpoint(state.to_checkpoint(cfg, model, optimizer, wall_s()))

    if engine.is_main:
        run.write_config(cfg)
        run.write_metrics(state.rows)
        run.write_summary(summary)
    per_epoch = len(data.train)
    plateau_drops = count_plateau_drops(state.rows, t)
    window_start, window_images = time.perf_counter(), 0.0
    for epoch, x, y in islice(batches_from(data.train, state.iteration), max(0, t.iterations - state.iteration)):
        lr = lr_at(state.iteration, t, warming_up=not state.warmup_done, plateau_drops=plateau_drops)
        set_lr(optimizer, lr)
        advance(state, train_step(stepper, optimizer, x, y, engine), t, engine)
        summary.warmup_end = state.warmup_end
        window_images += float(len(y) * engine.world)
        last = state.iteration == t.iterations
        if state.iteration % t.log_every == 0 or last:
            if engine.world > 1:
                dist.all_reduce(state.window)
            row = metrics_row(state, lr, per_epoch, window_images, time.perf_counter() - window_start, wall_s())
            check_finite([row["train_loss"]], run, state.iteration, summary, engine)
            if state.iteration % t.eval_every == 0 or last:
                row["test_error"], top5 = evaluate_run(model, data, cfg.data, engine, epoch)
                row["test_top5_error"] = top5 if data.top5 else None
            record_row(state, row, run, engine, on_row)
            plateau_drops = count_plateau_drops(state.rows, t)
            window_images, window_start = 0.0, time.perf_counter()
        stopping = stop_agreed(stop, engine, state.iteration)
        if state.iteration % t.checkpoint_every == 0 or last or stopping:
            checkpoint()
        if stopping:
            raise stopped(summary, state, run, engine)

    if t.responses:
        responses = measure_responses(model, data.test, engine)  # every rank holds part of the test set
        if engine.is_main:
            run.write_responses(responses)
    if data.final_tests:  # the final model under each protocol the tables need (ImageNet: 10-crop, multi-scale)
        summary.final_eval = {protocol: dict(zip(("top1_error", "top5_error"), evaluate(model, loader, engine)))
                              for protocol, loader in data.final_tests.items()}
    return finish_summary(summary, state, run, engine, wall_s())
