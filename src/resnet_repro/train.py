"""One training loop for every experiment, CIFAR-10 and ImageNet alike (Sec. 3.4, 4.2), for one run or a
pack of K runs of one depth: SGD on the step or plateau schedule with the ResNet-110 warm-up, metrics
rows, evaluation, atomic checkpoints and exact resume, DDP under torchrun.

`fit` reads as a straight line. What differs between one run and a pack is behind the stepper
(steppers.py: `step`, `logits`, `export`); scoring is scoring.py's; what a resume needs is `TrainState`.
Whatever `fit` does for one run it does for every member of a pack. Nothing here prints: progress goes to
the `on_row` callback the caller passes in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn

from .data import Data
from .engine import Engine, stop_agreed
from .errors import Interrupted, TrainingDiverged, UserError
from .hardware import device_name
from .models import count_parameters
from .results import RunDir, Summary, git_commit, now
from .scoring import evaluate, measure_responses, recalibrate_bn
from .signals import StopFlag
from .steppers import make_stepper, prepare_model

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
    scaler: dict | None = None  # fp16: the gradient scaler's state as last saved
    # where each stretch of training ran (Summary.trained_on): a resumed run may move to another machine
    trained_on: list[dict] = field(default_factory=list)

    @classmethod
    def new(cls, warmup: bool, device: torch.device) -> TrainState:
        return cls(0, [], torch.zeros(3, device=device), torch.zeros(3, device=device), not warmup, now(), 0.0)

    @classmethod
    def from_checkpoint(cls, state: dict, device: torch.device) -> TrainState:
        # checkpoints written before a key existed read with its empty value
        return cls(state["iteration"], state["rows"], torch.tensor(state["window"], device=device),
                   torch.tensor(state.get("warm_window", [0.0, 0.0, 0.0]), device=device), state["warmup_done"],
                   state["started"], state["wall_s"], state.get("warm_history", []), state.get("warmup_end"),
                   state.get("scaler"), state.get("trained_on", []))

    def to_checkpoint(self, cfg: DictConfig, model: nn.Module, optimizer, wall_s: float, rng: torch.Tensor,
                      scaler: dict | None = None) -> dict:
        return {
            "run_id": cfg.run.id, "iterations": int(cfg.train.iterations), "iteration": self.iteration,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "torch_rng": rng,
            "rows": self.rows, "window": self.window.tolist(), "warm_window": self.warm_window.tolist(),
            "warmup_done": self.warmup_done, "started": self.started, "wall_s": wall_s,
            "warm_history": self.warm_history, "warmup_end": self.warmup_end, "trained_on": self.trained_on,
        } | ({"scaler": scaler} if scaler is not None else {})


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


@dataclass
class Member:
    """One run `fit` trains (a pack trains several): its config, directory, state and summary."""

    cfg: DictConfig
    run: RunDir
    state: TrainState
    summary: Summary
    rng: torch.Tensor  # torch's RNG once the run's model is built (or resumed): what its checkpoints restore
    saved_at: int = 0  # the iteration of its last checkpoint

    @property
    def id(self) -> str:
        return self.cfg.run.id


def prepare(cfgs: Sequence[DictConfig], runs: Sequence[RunDir], data: Data, engine: Engine):
    """The members of one `fit` (each run's net built from its seed, resumed from its checkpoint if any) and
    the stepper that trains them: `Solo` for one run, `Packed` for several."""
    members, solos = [], []
    for cfg, run in zip(cfgs, runs):
        torch.manual_seed(int(cfg.seed))  # the run's initial weights
        model, optimizer = prepare_model(cfg, engine, data.num_classes)
        state = resume(run, cfg, model, optimizer, engine)
        note_where_it_trains(state, engine)
        summary = start_summary(cfg, data, engine, model, state)
        members.append(Member(cfg, run, state, summary, torch.get_rng_state(), state.iteration))
        solos.append((model, optimizer))
    if len({m.state.iteration for m in members}) > 1:
        raise ValueError("members of a pack must resume from the same iteration (packing.split_by_iteration)")
    if len(members) > 1:
        for m in members:
            m.summary.packed_with = [o.id for o in members if o is not m]
    return members, make_stepper(solos, engine, members[0].state.scaler)


def batches_from(loader, iteration: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(epoch, images, labels) from the batch of `iteration` on, epoch after epoch, without end."""
    epoch, first = divmod(iteration, len(loader))
    while True:
        for x, y in loader.epoch(epoch, first):
            yield epoch, x, y
        epoch, first = epoch + 1, 0


def record_row(m: Member, row: dict, engine: Engine, on_row: Callable[[DictConfig, dict], None] | None) -> None:
    """Close a member's log window with `row`: into its state, metrics.csv and the caller's callback."""
    m.state.rows.append(row)
    m.state.window.zero_()
    if engine.is_main:
        m.run.write_metrics(m.state.rows)
        if on_row:
            on_row(m.cfg, row)


def note_where_it_trains(state: TrainState, engine: Engine) -> None:
    """Add this session's machine to the run's `trained_on`, unless the run's last stretch ran on the same
    device, precision, commit and torch (a resume on the same machine continues that stretch)."""
    here = {"device": device_name(engine.device), "world_size": engine.world, "precision": engine.precision,
            "git_commit": git_commit(), "torch": str(torch.__version__)}  # a plain str: checkpoints load weights-only
    last = state.trained_on[-1] if state.trained_on else None
    if last is None or any(last.get(k) != v for k, v in here.items()):
        state.trained_on.append({"from_iteration": state.iteration, **here})


def start_summary(cfg: DictConfig, data: Data, engine: Engine, model: nn.Module, state: TrainState) -> Summary:
    m = cfg.model
    keeps = bool(cfg.run.get("keeps_schedule", not cfg.run.variant)) and not data.dataset.subset
    return Summary(
        run_id=cfg.run.id, experiment=cfg.experiment.name, status="running",
        profile=cfg.profile.name, profile_label=cfg.profile.label,
        full_schedule=bool(cfg.profile.full_schedule) and keeps,
        dataset=data.dataset.name, data=vars(data.dataset).copy(), test_split=data.test_split,
        train_images=data.train_size,
        model={"family": m.family, "arch": m.arch, "depth": int(cfg.run.depth),
               "shortcut": "none" if m.arch == "plain" else m.shortcut, "stride_on": m.get("stride_on", "v1"),
               "name": cfg.run.model_name},
        params=count_parameters(model), seed=int(cfg.seed), iterations=int(cfg.train.iterations),
        iterations_done=state.iteration, batch_size=int(cfg.train.batch_size),
        eval_protocol=cfg.data.get("eval_protocol", "single"), amp=engine.amp, precision=engine.precision,
        amp_reason=engine.precision_reason,
        compile=engine.compilation, wall_s=state.wall_s, device=device_name(engine.device), world_size=engine.world,
        git_commit=git_commit(),
        torch=torch.__version__, started=state.started, overrides=list(cfg.experiment.get("overrides", [])),
        variant=cfg.run.variant, warmup_end=state.warmup_end, input_pipeline=data.pipeline,
        trained_on=moved(state.trained_on),
    )


def moved(trained_on: list[dict]) -> list[dict] | None:
    """`trained_on` where the run did not train in one stretch from iteration 0 (else the summary's own
    device, commit and precision say it all)."""
    return trained_on if len(trained_on) > 1 or (trained_on and trained_on[0]["from_iteration"] > 0) else None


def finish_summary(m: Member, engine: Engine, wall_s: float) -> Summary:
    """The finished run's summary, from its last metrics rows, written."""
    summary, state = m.summary, m.state
    final = state.rows[-1]
    summary.status, summary.iterations_done, summary.finished = "finished", state.iteration, now()
    summary.final_test_error, summary.final_test_top5_error = final.get("test_error"), final.get("test_top5_error")
    summary.final_train_error = final["train_error"]
    summary.best_test_error = min(r["test_error"] for r in state.rows if r.get("test_error") is not None)
    summary.wall_s = wall_s
    if engine.is_main:
        m.run.write_summary(summary)
    return summary


def stopped(members: list[Member], iteration: int, iterations: int, engine: Engine) -> Interrupted:
    """Mark the runs interrupted (their checkpoints are saved) and return the error to raise."""
    for m in members:
        m.summary.status, m.summary.iterations_done = "interrupted", m.state.iteration
        if engine.is_main:
            m.run.write_summary(m.summary)
    where = (f"checkpoint saved in {members[0].run.path}" if len(members) == 1 else
             f"checkpoints of {', '.join(m.id for m in members)} saved in {members[0].run.path.parent}")
    return Interrupted(f"interrupted at iteration {iteration}/{iterations}; {where}; run the same command again "
                       f"to resume")


def check_finite(members: list[Member], values: list[list[float]], iteration: int, engine: Engine) -> None:
    """Stop on a NaN/inf loss (or weights) of any member. Every rank sees the same reduced values, so all
    stop together. The other members of a pack keep their last good checkpoint, marked interrupted."""
    bad = next((m for m, v in zip(members, values) if not all(math.isfinite(x) for x in v)), None)
    if bad is None:
        return
    bad.summary.status, bad.summary.iterations_done = "failed", iteration
    bad.summary.failure = f"non-finite loss or weights by iteration {iteration}"
    if engine.is_main:
        bad.run.write_summary(bad.summary)
    kept = (f"the last good checkpoint is kept in {bad.run.path}" if bad.run.checkpoint.exists()
            else "no checkpoint saved")
    message = (f"training diverged (non-finite loss or weights) by iteration {iteration}; {kept} "
               f"(try a lower train.lr, or engine.precision=fp32)")
    others = [o for o in members if o is not bad]
    if not others:
        raise TrainingDiverged(message)
    for o in others:
        o.summary.status, o.summary.iterations_done = "interrupted", o.saved_at
        if engine.is_main:
            o.run.write_summary(o.summary)
    raise TrainingDiverged(f"pack member {bad.id} diverged: {message}. The pack stopped: "
                           f"{', '.join(o.id for o in others)} keep their last good checkpoints (iteration "
                           f"{others[0].saved_at}); engine.pack=1 trains them on without it")


def health(members: list[Member], stepper, engine: Engine) -> list[list[float]]:
    """Each member's loss sum since the last row and the sum of its weights, reduced over ranks: a
    diverged step can leave a finite loss but NaN weights, which must never be checkpointed."""
    values = torch.stack([torch.stack([m.state.window[0] for m in members]), stepper.weight_sums()], 1)
    if engine.world > 1:
        dist.all_reduce(values)
    return values.tolist()


def test_errors(stepper, loader, data_cfg: DictConfig, data: Data, engine: Engine, epoch: int) -> list[tuple[float, float]]:
    """`evaluate` of every member on the test loader, after re-estimating BN statistics on training images of
    `epoch` where `data.bn_recalibrate_images` asks."""
    images = int(data_cfg.get("bn_recalibrate_images", 0) or 0)
    if images:
        recalibrate_bn(stepper, loader.epoch(epoch), images, engine)
    return evaluate(stepper, data.test, engine)


# ---------------------------------------------------------------------------------------- the loop


def fit(members: list[Member], stepper, data: Data, engine: Engine,
        on_row: Callable[[DictConfig, dict], None] | None = None, stop: StopFlag | None = None) -> list[Summary]:
    """Train `members` (from `prepare`: one run, or a pack of runs of one depth and schedule that resume
    from the same iteration) to `train.iterations`, each on its own seed's batches."""
    t, e = members[0].cfg.train, members[0].cfg.engine
    stop = stop or StopFlag()
    loader = stepper.loader([data.train.with_seed(int(m.cfg.seed)) for m in members])
    session_start = time.perf_counter()
    window = {"start": session_start, "images": 0.0}  # since the last metrics row
    drops = [count_plateau_drops(m.state.rows, t) for m in members]  # plateau schedule: from the rows so far

    def wall_s(m: Member) -> float:
        return m.state.wall_s + time.perf_counter() - session_start

    def checkpoint(iteration: int) -> None:
        check_finite(members, health(members, stepper, engine), iteration, engine)  # never save a diverged state
        for k, m in enumerate(members):
            model, optimizer, scaler = stepper.export(k)
            if engine.is_main:
                m.run.save_checkpoint(m.state.to_checkpoint(m.cfg, model, optimizer, wall_s(m), m.rng, scaler))
            m.saved_at = iteration

    def log(iteration: int, epoch: int, lrs: list[float], last: bool) -> None:
        """Close the log window: a metrics row per member, with the test errors where it evaluates."""
        if engine.world > 1:
            for m in members:
                dist.all_reduce(m.state.window)
        seconds = time.perf_counter() - window["start"]
        rows = [metrics_row(m.state, lr, len(loader), window["images"], seconds, wall_s(m))
                for m, lr in zip(members, lrs)]
        check_finite(members, [[r["train_loss"]] for r in rows], iteration, engine)
        if iteration % e.eval_every == 0 or last:
            for row, (top1, top5) in zip(rows, test_errors(stepper, loader, members[0].cfg.data, data, engine, epoch)):
                row["test_error"], row["test_top5_error"] = top1, top5 if data.top5 else None
        for m, row in zip(members, rows):
            record_row(m, row, engine, on_row)
        drops[:] = [count_plateau_drops(m.state.rows, t) for m in members]
        window.update(start=time.perf_counter(), images=0.0)

    if engine.is_main:
        for m in members:
            m.run.write_config(m.cfg)
            m.run.write_metrics(m.state.rows)
            m.run.write_summary(m.summary)
    start = members[0].state.iteration
    with stop.training():  # from here a signal waits for the next step: checkpoint, then stop
        for epoch, x, y in islice(batches_from(loader, start), max(0, t.iterations - start)):
            lrs = [lr_at(m.state.iteration, t, warming_up=not m.state.warmup_done, plateau_drops=d)
                   for m, d in zip(members, drops)]
            for m, step in zip(members, stepper.step(lrs, x, y)):
                advance(m.state, step, t, engine)
                m.summary.warmup_end = m.state.warmup_end
            iteration = members[0].state.iteration
            window["images"] += float(y.shape[0] * engine.world)
            last = iteration == t.iterations
            if iteration % e.log_every == 0 or last:
                log(iteration, epoch, lrs, last)
            stopping = stop_agreed(stop, engine, iteration)
            if iteration % e.checkpoint_every == 0 or last or stopping:
                checkpoint(iteration)
            if stopping:
                raise stopped(members, iteration, int(t.iterations), engine)
        if e.responses:  # every rank holds part of the test set
            for m, responses in zip(members, measure_responses(stepper, data.test, engine)):
                if engine.is_main:
                    m.run.write_responses(responses)
        # the final model under each protocol the tables need (ImageNet: 10-crop, multi-scale)
        finals = {protocol: evaluate(stepper, test, engine) for protocol, test in data.final_tests.items()}
        for k, m in enumerate(members):
            if finals:
                m.summary.final_eval = {p: dict(zip(("top1_error", "top5_error"), errors[k])) for p, errors in finals.items()}
        return [finish_summary(m, engine, wall_s(m)) for m in members]
