"""One training loop for every experiment: SGD, step schedule with warm-up (Sec. 3.4, 4.2),
metrics rows, atomic checkpoints and exact resume, SIGINT/SIGTERM, DDP under torchrun.

`fit` reads as a straight line; per-step work is in `train_step`, evaluation in `evaluate`.
Nothing here prints: progress goes to the `on_row` callback the CLI passes in.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn
from torch.nn import functional as F

from .errors import Interrupted, TrainingDiverged, UserError
from .hardware import cpu_bf16_native
from .models import build_model, capture_responses, count_parameters
from .results import RunDir, device_name, git_commit, now


@dataclass
class Engine:
    device: torch.device
    amp: bool  # bf16 autocast
    channels_last: bool
    compile: str | None  # a torch.compile mode ("default", "reduce-overhead" = CUDA graphs), None = eager
    rank: int = 0
    world: int = 1
    cpu_group: object = None
    amp_reason: str = ""  # why bf16 is on or off (goes into the summary and the bench output)  # DDP: a gloo group for host-side agreement (stop flag) that never syncs the GPU

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x


def _auto(value, default: bool) -> bool:
    return default if value == "auto" else bool(value)


def choose_amp(value, device: torch.device) -> tuple[bool, str]:
    """`train.amp`: true | false | auto. auto = bf16 autocast only where the device runs bf16 natively
    (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX); fp32 everywhere else."""
    if value != "auto":
        return bool(value), f"train.amp={str(bool(value)).lower()}"
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
        return native, f"auto: {'bf16' if native else 'fp32'} ({torch.cuda.get_device_name(device)}"\
                       f"{' supports' if native else ' lacks'} bf16)"
    if device.type == "cpu":
        native, evidence = cpu_bf16_native()
        return native, f"auto: {'bf16, native' if native else 'fp32, bf16 not native'} (CPU {evidence})"
    return False, f"auto: fp32 on {device.type}"


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(value, device: torch.device, graphs: bool = False) -> str | None:
    """`train.compile`: true/false, a torch.compile mode, or auto: off on CPU, on for CUDA, as CUDA graphs
    (reduce-overhead) where `graphs`. A small CIFAR net on one GPU is bound by kernel launches, not the GPU:
    ResNet-20 on an H200 trained 34.0k images/s with CUDA graphs, 11.8k with the default mode."""
    if value == "auto":
        value = ("reduce-overhead" if graphs else True) if device.type == "cuda" else False
    if isinstance(value, bool):
        return "default" if value else None
    if value not in COMPILE_MODES:
        raise UserError(f"train.compile={value!r}: use auto, true, false or one of {', '.join(COMPILE_MODES)}")
    return value


def is_main_process() -> bool:
    """Rank 0, or not under torchrun: the one process that prints and writes files."""
    return int(os.environ.get("RANK", 0)) == 0


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA GPU is visible; use device=cpu or device=auto")
    return device


def setup_engine(cfg: DictConfig) -> Engine:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = select_device(cfg.device)
    cpu_group = None
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        cpu_group = dist.new_group(backend="gloo") if device.type == "cuda" else dist.group.WORLD
    t = cfg.train
    if device.type == "cpu" and t.threads != "auto":
        torch.set_num_threads(int(t.threads))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # CPU defaults, measured for ResNet-20 at batch 128, one thread: on AMX/AVX512-BF16 cores bf16 is
    # 1.7x fp32 (738 vs 439 images/s) at the same test error (27.1% vs 27.7% after 1.5k iterations);
    # on AVX2 it is 10x slower, hence `choose_amp`. channels_last adds 10-20% to both. torch.compile is
    # no faster there after two minutes of compiling, so CUDA only. All cores (threads=auto) is fastest
    # on an idle machine, but 4-8x slower than train.threads=1 while another process keeps a core busy.
    amp, amp_reason = choose_amp(t.amp, device)
    return Engine(
        device=device,
        amp=amp,
        amp_reason=amp_reason,
        channels_last=_auto(t.channels_last, True),
        compile=compile_mode(t.compile, device, graphs=cfg.data.family == "cifar" and world == 1),
        rank=rank,
        world=world,
        cpu_group=cpu_group,
    )


class StopFlag:
    """Set by SIGINT/SIGTERM, or SIGUSR1/SIGUSR2 that schedulers send before a time limit; the loop
    saves a checkpoint at the next step boundary and stops. A signal that a Python handler installed
    before us (submitit's requeue-on-preemption) is handed on to it once the checkpoint is on disk."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")
                    if hasattr(signal, name))

    def __init__(self):
        self.requested = False
        self.signum: int | None = None

    def set(self, signum: int | None = None, _frame=None):
        self.requested = True
        self.signum = self.signum or signum

    @contextlib.contextmanager
    def installed(self):
        previous = {s: signal.signal(s, self.set) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            handler = previous.get(self.signum)
            if callable(handler) and handler is not signal.default_int_handler:
                handler(self.signum, None)  # e.g. submitit requeues the job and exits


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


def build_optimizer(model: nn.Module, train_cfg: DictConfig) -> torch.optim.SGD:
    # fused: one kernel over all parameters instead of a loop over ~60 tensors (the update of ResNet-20
    # takes 0.2 ms instead of 0.9 on a CPU; far fewer launches on CUDA); same rule and state_dict.
    kwargs = dict(lr=float(train_cfg.lr), momentum=float(train_cfg.momentum),
                  weight_decay=float(train_cfg.weight_decay))
    try:
        return torch.optim.SGD(model.parameters(), fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the fused kernel
        return torch.optim.SGD(model.parameters(), **kwargs)


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


def _scores(model, views, engine: Engine) -> torch.Tensor:
    """Softmax scores averaged over test-time views: a batch tensor, or a list of them (crops, scales)."""
    views = views if isinstance(views, (list, tuple)) else [views]
    with engine.autocast():
        return sum(F.softmax(model(engine.prepare(v)).float(), 1) for v in views) / len(views)


@torch.inference_mode()
def evaluate(model: nn.Module, loader, engine: Engine) -> tuple[float, float]:
    """Top-1 and top-5 error (%) of `model` in eval mode over the loader, summed over DDP ranks."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, device=engine.device)
    for views, y in loader:
        top5 = _scores(model, views, engine).topk(min(5, model.fc.out_features), 1).indices
        wrong1, wrong5 = (top5[:, 0] != y).sum(), (top5 != y[:, None]).all(1).sum()
        counts += torch.stack([wrong1, wrong5, wrong1.new_full((), y.shape[0])])
    model.train(was_training)
    if engine.world > 1:
        dist.all_reduce(counts)
    wrong1, wrong5, n = counts.tolist()
    return 100 * wrong1 / n, 100 * wrong5 / n


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


def evaluate_run(model: nn.Module, loader, data, cfg: DictConfig, engine: Engine, epoch: int) -> tuple[float, float]:
    """`evaluate`, after re-estimating BN statistics on training images if `data.bn_recalibrate_images`."""
    images = int(cfg.data.get("bn_recalibrate_images", 0) or 0)
    if images:
        from .imagenet import recalibrate_bn

        recalibrate_bn(model, data.train.epoch(epoch), images, engine)
    return evaluate(model, loader, engine)


def _check_finite(values: list[float], run: RunDir, iteration: int, summary: dict, engine: Engine) -> None:
    """Stop on a NaN/inf loss (or weights). Every rank sees the same reduced values, so all stop together."""
    if not all(math.isfinite(v) for v in values):
        summary.update(status="failed", failure=f"non-finite loss or weights by iteration {iteration}",
                       iterations_done=iteration)
        if engine.is_main:
            run.write_summary(summary)
        kept = f"the last good checkpoint is kept in {run.path}" if run.checkpoint.exists() else "no checkpoint saved"
        raise TrainingDiverged(f"training diverged (non-finite loss or weights) by iteration {iteration}; {kept} "
                               f"(try a lower train.lr, or train.amp=false)")


def _health(window: torch.Tensor, model: nn.Module, engine: Engine) -> list[float]:
    """The loss sum since the last row and the sum of all weights, reduced over ranks: a diverged
    step can leave finite loss but NaN weights, which must never be checkpointed."""
    weights = torch.stack([p.detach().float().sum() for p in model.parameters()]).sum()
    values = torch.stack([window[0], weights])
    if engine.world > 1:
        dist.all_reduce(values)
    return values.tolist()


STOP_POLL = 10  # DDP: ranks agree on a stop request every this many steps (a tiny CPU all-reduce)


def _stop_agreed(stop: StopFlag, engine: Engine, iteration: int) -> bool:
    """A signal reaches each rank at a slightly different step; all must stop at the same one."""
    if engine.world == 1:
        return stop.requested
    if iteration % STOP_POLL:
        return False
    flag = torch.tensor([float(stop.requested)])
    dist.all_reduce(flag, group=engine.cpu_group)
    stop.requested = flag.item() > 0
    return stop.requested


def fit(cfg: DictConfig, run: RunDir, data, engine: Engine, on_row: Callable[[dict], None] | None = None,
        stop: StopFlag | None = None) -> dict:
    """Train the run described by `cfg` to `train.iterations`, resuming from its checkpoint if any."""
    t = cfg.train
    stop = stop or StopFlag()
    torch.manual_seed(int(cfg.seed))
    model = build_model(cfg.model, data.num_classes).to(engine.device)
    if engine.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, t)
    warmup = uses_warmup(t, int(cfg.run.depth))
    state = run.load_checkpoint()
    if state is not None:
        if state.get("run_id") != cfg.run.id or state.get("iterations") != int(t.iterations):
            raise UserError(f"checkpoint {run.checkpoint} belongs to another run or schedule; "
                            f"re-run with --restart to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
    else:
        state = {"iteration": 0, "rows": [], "window": [0.0, 0.0, 0.0], "warmup_done": not warmup, "wall_s": 0.0,
                 "started": now()}
    summary = _summary(cfg, run, data, engine, model, state)
    step_model = model
    if engine.world > 1:
        step_model = nn.parallel.DistributedDataParallel(model, device_ids=[engine.device.index]
                                                         if engine.device.type == "cuda" else None)
    if engine.compile:
        step_model = torch.compile(step_model, mode=engine.compile)

    it, rows, warmup_done = state["iteration"], state["rows"], state["warmup_done"]
    window = torch.tensor(state["window"], device=engine.device)
    warm_window = torch.tensor(state.get("warm_window", [0.0, 0.0, 0.0]), device=engine.device)
    session_start, window_start, wall_before = time.perf_counter(), time.perf_counter(), state["wall_s"]
    window_images = 0.0

    def checkpoint():
        _check_finite(_health(window, model, engine), run, it, summary, engine)  # never save a diverged state
        if not engine.is_main:
            return
        run.save_checkpoint({
            "run_id": cfg.run.id, "iterations": int(t.iterations), "iteration": it, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(), "rows": rows,
            "window": window.tolist(), "warm_window": warm_window.tolist(), "warmup_done": warmup_done,
            "started": state["started"], "wall_s": wall_before + time.perf_counter() - session_start,
        })

    if engine.is_main:
        run.write_config(cfg)
        run.write_metrics(rows)
        run.write_summary(summary)
    batches_per_epoch = len(data.train)
    plateau_drops = count_plateau_drops(rows, t)
    while it < t.iterations:
        epoch, first = divmod(it, batches_per_epoch)
        for x, y in data.train.epoch(epoch, first):
            lr = lr_at(it, t, warming_up=not warmup_done, plateau_drops=plateau_drops)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step = train_step(step_model, optimizer, x, y, engine)
            window += step
            it += 1
            window_images += float(len(y) * engine.world)
            if not warmup_done:  # leave warm-up once training error < 80% (checked every 10 steps)
                warm_window += step
                if it % 10 == 0:
                    if engine.world > 1:
                        dist.all_reduce(warm_window)
                    _, wrong, n = warm_window.tolist()
                    warmup_done = 100 * wrong / n < float(t.warmup.until_train_error)
                    warm_window.zero_()
            last = it == t.iterations
            if it % t.log_every == 0 or last:
                if engine.world > 1:
                    dist.all_reduce(window)
                loss_sum, wrong, n = window.tolist()
                _check_finite([loss_sum], run, it, summary, engine)
                elapsed = time.perf_counter() - window_start
                row = {"iteration": it, "epoch": round(it / batches_per_epoch, 3), "lr": lr,
                       "train_loss": loss_sum / n, "train_error": 100 * wrong / n,
                       "images_per_s": window_images / elapsed,
                       "wall_s": wall_before + time.perf_counter() - session_start}
                if it % t.eval_every == 0 or last:
                    row["test_error"], row["test_top5_error"] = evaluate_run(model, data.test, data, cfg, engine,
                                                                             epoch)
                    if data.num_classes <= 10 and data.name.startswith("cifar"):
                        row["test_top5_error"] = None  # not reported on CIFAR
                rows.append(row)
                plateau_drops = count_plateau_drops(rows, t)
                window.zero_()
                window_images, window_start = 0.0, time.perf_counter()
                if engine.is_main:
                    run.write_metrics(rows)
                    if on_row:
                        on_row(row)
            stopping = _stop_agreed(stop, engine, it)
            if it % t.checkpoint_every == 0 or last or stopping:
                checkpoint()
            if stopping:
                summary.update(status="interrupted", iterations_done=it)
                if engine.is_main:
                    run.write_summary(summary)
                raise Interrupted(f"interrupted at iteration {it}/{t.iterations}; checkpoint saved in {run.path}; "
                                  f"run the same command again to resume")
            if last:
                break

    if t.responses:
        responses = measure_responses(model, data.test, engine)  # every rank holds part of the test set
        if engine.is_main:
            run.write_responses(responses)
    final_tests = getattr(data, "final_tests", {})
    if final_tests:  # ImageNet: the final model under each protocol the tables need (10-crop, multi-scale)
        summary["final_eval"] = {protocol: dict(zip(("top1_error", "top5_error"), evaluate(model, loader, engine)))
                                 for protocol, loader in final_tests.items()}
    final = rows[-1]
    summary.update(
        status="finished", iterations_done=it, finished=now(),
        final_test_error=final.get("test_error"), final_test_top5_error=final.get("test_top5_error"),
        final_train_error=final["train_error"],
        best_test_error=min(r["test_error"] for r in rows if r.get("test_error") is not None),
        wall_s=wall_before + time.perf_counter() - session_start,
    )
    if engine.is_main:
        run.write_summary(summary)
    return summary


def _summary(cfg: DictConfig, run: RunDir, data, engine: Engine, model: nn.Module, state: dict) -> dict:
    m = cfg.model
    return {
        "run_id": cfg.run.id, "experiment": cfg.experiment.name, "status": "running",
        "profile": cfg.profile.name, "profile_label": cfg.profile.label,
        "full_schedule": bool(cfg.profile.full_schedule) and bool(cfg.run.get("keeps_schedule", not cfg.run.variant)),
        "dataset": data.name, "test_split": data.test_split, "train_images": data.train_size,
        "model": {"family": m.family, "arch": m.arch, "depth": int(cfg.run.depth),
                  "shortcut": "none" if m.arch == "plain" else m.shortcut, "stride_on": m.get("stride_on", "v1"),
                  "name": cfg.run.model_name},
        "params": count_parameters(model), "seed": int(cfg.seed), "iterations": int(cfg.train.iterations),
        "iterations_done": state["iteration"], "batch_size": int(cfg.train.batch_size),
        "eval_protocol": cfg.data.get("eval_protocol", "single"), "amp": engine.amp,
        "amp_reason": engine.amp_reason,
        "wall_s": state["wall_s"], "device": device_name(engine.device), "world_size": engine.world,
        "git_commit": git_commit(), "torch": torch.__version__, "started": state["started"], "finished": None,
        "overrides": list(cfg.experiment.get("overrides", [])), "variant": cfg.run.variant,
    }
