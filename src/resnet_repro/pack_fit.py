"""`train.pack`: the CIFAR runs of one `run`/`sweep` that share a depth train as one packed network
(packing.py) in one process, each member exactly the run it stands for.

`plan_packs` groups the expanded runs; `fit_pack` is `train.fit` for a pack, built from the same
pieces (`resume`, `lr_at`, `advance`, `metrics_row`, `check_finite`, `record_row`, `finish_summary`),
only the step and scoring being the packed ones. Every member keeps its own run directory and writes
its checkpoint in the solo format, so a pack resumes packed or solo and `train.pack` never changes a
run's id or results.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice

import torch
from omegaconf import DictConfig, OmegaConf

from .engine import Engine, StopFlag, stop_agreed
from .errors import Interrupted, TrainingDiverged, UserError
from .loader import Data
from .packing import (
    PackedCifarResNet,
    PackedLoader,
    PackedSGD,
    evaluate_members,
    measure_member_responses,
    member_state_dict,
    packed_loss_and_errors,
    packed_state_dict,
)
from .results import RunDir, Summary
from .train import (
    TrainState,
    advance,
    batches_from,
    check_finite,
    count_plateau_drops,
    finish_summary,
    fit,
    lr_at,
    metrics_row,
    prepare_model,
    record_row,
    resume,
    start_summary,
    stopped,
)

# ------------------------------------------------------------------------------------------ planning

# `train.pack: auto` on CUDA: runs per pack by depth, NOT measured yet (no GPU session so far). On a
# CPU packing is slower: 4 packed ResNet-20s trained 0.5-0.8x as fast as 4 solo runs (`bench --pack 4`,
# batch 128, one thread: 0.80x in bf16, 0.71x in fp32; a CPU is compute-bound, grouped convs gain nothing).
AUTO_PACK_CUDA = ((9, 8), (18, 4))  # (largest n, pack size); deeper nets train solo


def pack_size(value, device: torch.device, n: int) -> int:
    """`train.pack`: a whole number >= 1, or auto (1 on CPU; `AUTO_PACK_CUDA` on a GPU)."""
    if value == "auto":
        if device.type != "cuda":
            return 1
        return next((size for largest, size in AUTO_PACK_CUDA if n <= largest), 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"train.pack={value!r}: use a whole number >= 1 (1 = no packing) or auto")
    return value


def packable(cfg: DictConfig, engine: Engine) -> bool:
    """CIFAR nets with option A or no shortcut, in one process, without BN groups, can be packed."""
    m = cfg.model
    return (cfg.data.family == "cifar" and m.family == "cifar" and engine.world == 1
            and m.get("bn_group") is None and (m.arch == "plain" or m.get("shortcut") == "A"))


def pack_key(cfg: DictConfig) -> str:
    """What members of one pack share: the whole config but the seed, the arch and the run's names."""
    c = OmegaConf.to_container(cfg, resolve=True)
    del c["seed"], c["run"]
    c["model"].pop("arch", None)
    return json.dumps(c, sort_keys=True, default=str)


def plan_packs(runs: Sequence[DictConfig], engine: Engine) -> list[list[DictConfig]]:
    """The runs in packs of at most `train.pack` that agree in everything but seed and arch, in the
    order of their first run; a run that cannot be packed is a pack of one."""
    packs: list[list[DictConfig]] = []
    open_packs: dict[str, list[DictConfig]] = {}
    for cfg in runs:
        size = pack_size(cfg.train.get("pack", 1), engine.device, (int(cfg.run.depth) - 2) // 6)
        if size == 1 or not packable(cfg, engine):
            packs.append([cfg])
            continue
        key = pack_key(cfg)
        pack = open_packs.get(key)
        if pack is None or len(pack) >= size:
            pack = open_packs[key] = []
            packs.append(pack)
        pack.append(cfg)
    return packs


def checkpoint_iteration(run: RunDir) -> int:
    state = run.load_checkpoint()
    return int(state["iteration"]) if state else 0


def split_by_iteration(members: list[tuple[DictConfig, RunDir]]) -> list[list[tuple[DictConfig, RunDir]]]:
    """Members resume together only from the same iteration: the largest group that agrees is the pack
    (one file can be a step behind if a process died between the members' checkpoint saves), each other
    member trains solo."""
    if len(members) < 2:
        return [members] if members else []
    at = [checkpoint_iteration(run) for _, run in members]
    common = Counter(at).most_common(1)[0][0]
    return ([[m for m, i in zip(members, at) if i == common]]
            + [[m] for m, i in zip(members, at) if i != common])


# ---------------------------------------------------------------------------------------- training


@dataclass
class Member:
    """One run of a pack: its config, directory, state and summary, and a solo model and optimizer
    that hold its part of the pack whenever a checkpoint is written (in the solo format)."""

    cfg: DictConfig
    run: RunDir
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    state: TrainState
    summary: Summary
    rng: torch.Tensor  # the RNG state a solo run of this seed holds after building its model
    saved_at: int = 0  # the iteration of its last checkpoint


def _member(cfg: DictConfig, run: RunDir, data: Data, engine: Engine) -> Member:
    torch.manual_seed(int(cfg.seed))  # the solo run's initial weights
    model, optimizer = prepare_model(cfg, engine, data.num_classes)
    state = resume(run, cfg, model, optimizer, engine)
    return Member(cfg, run, model, optimizer, state, start_summary(cfg, data, engine, model, state),
                  torch.get_rng_state(), state.iteration)


def _packed_optimizer(packed: PackedCifarResNet, members: list[Member]) -> PackedSGD:
    """PackedSGD holding the members' momentum buffers (none before the first step)."""
    t = members[0].cfg.train
    optimizer = PackedSGD(packed, float(t.momentum), float(t.weight_decay))
    names = [name for name, _ in packed.named_parameters()]
    states = [m.optimizer.state_dict()["state"] for m in members]
    buffers = None
    if all(states):
        per_member = [{name: s[i]["momentum_buffer"] for i, name in enumerate(names)} for s in states]
        buffers = [packed_state_dict(per_member)[name] for name in names]
    optimizer.load_state_dict({"steps": members[0].state.iteration, "momentum": float(t.momentum),
                               "weight_decay": float(t.weight_decay), "momentum_buffers": buffers,
                               "lrs": [m.optimizer.param_groups[0]["lr"] for m in members]})
    return optimizer


def packed_train_step(packed: PackedCifarResNet, optimizer: PackedSGD, lrs: list[float], x: torch.Tensor,
                      y: torch.Tensor, engine: Engine) -> torch.Tensor:
    """`train.train_step` for a pack: one SGD step of every member at its own lr; per member
    (loss sum, wrong, count), shape (K, 3), on the device."""
    with engine.autocast():
        logits = packed(engine.prepare(x))
    loss, per_member = packed_loss_and_errors(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step(lrs)
    return per_member


def member_health(packed: PackedCifarResNet, members: list[Member]) -> list[list[float]]:
    """`train.health` per member: its loss sum since the last row and the sum of its weights."""
    k = packed.members
    weights = sum(p.detach().float().reshape(k, -1).sum(1) if name.startswith("fc.")
                  else p.detach().float().unflatten(0, (k, -1)).flatten(1).sum(1)
                  for name, p in packed.named_parameters())
    losses = torch.stack([m.state.window[0] for m in members])
    return torch.stack([losses, weights], 1).tolist()


def _check_members(members: list[Member], values: list[list[float]], iteration: int, engine: Engine) -> None:
    """`check_finite` per member; one that diverged stops the pack, naming it. The others are left
    interrupted at their last (good) checkpoint."""
    for m, v in zip(members, values):
        try:
            check_finite(v, m.run, iteration, m.summary, engine)
        except TrainingDiverged as e:
            others = [o for o in members if o is not m]
            for o in others:
                o.summary.status, o.summary.iterations_done = "interrupted", o.saved_at
                if engine.is_main:
                    o.run.write_summary(o.summary)
            raise TrainingDiverged(
                f"pack member {m.cfg.run.id} diverged: {e}. The pack stopped: "
                f"{', '.join(o.cfg.run.id for o in others)} keep their last good checkpoints "
                f"(iteration {others[0].saved_at}); train.pack=1 trains them on without it") from None


def fit_pack(cfgs: Sequence[DictConfig], runs: Sequence[RunDir], data: Data, engine: Engine,
             on_row: Callable[[dict], None] | None = None, stop: StopFlag | None = None) -> list[Summary]:
    """Train the runs `cfgs` (one pack: same depth, schedule, batch and precision, resuming from the
    same iteration) to `train.iterations` as one packed net; a pack of one is `fit`."""
    if len(cfgs) == 1:
        data.train.seed = int(cfgs[0].seed)
        return [fit(cfgs[0], runs[0], data, engine, on_row, stop)]
    t = cfgs[0].train
    stop = stop or StopFlag()
    members = [_member(cfg, run, data, engine) for cfg, run in zip(cfgs, runs)]
    start = members[0].state.iteration
    if any(m.state.iteration != start for m in members):
        raise ValueError("members of a pack must resume from the same iteration (see split_by_iteration)")
    ids = [m.cfg.run.id for m in members]
    for m in members:
        m.summary.packed_with = [i for i in ids if i != m.cfg.run.id]
    packed = PackedCifarResNet.from_members([m.model for m in members])
    if engine.channels_last:
        packed = packed.to(memory_format=torch.channels_last)
    optimizer = _packed_optimizer(packed, members)
    loader = PackedLoader.from_seeds(data.train, [int(c.seed) for c in cfgs])
    session_start = time.perf_counter()

    def wall_s(m: Member) -> float:
        return m.state.wall_s + time.perf_counter() - session_start

    def checkpoint(iteration: int) -> None:
        _check_members(members, member_health(packed, members), iteration, engine)  # all good, or none saved
        for k, m in enumerate(members):
            m.model.load_state_dict(member_state_dict(packed, k))
            m.optimizer.load_state_dict(optimizer.member_optimizer_state(k))
            ckpt = m.state.to_checkpoint(m.cfg, m.model, m.optimizer, wall_s(m))
            ckpt["torch_rng"] = m.rng
            if engine.is_main:
                m.run.save_checkpoint(ckpt)
            m.saved_at = iteration

    if engine.is_main:
        for m in members:
            m.run.write_config(m.cfg)
            m.run.write_metrics(m.state.rows)
            m.run.write_summary(m.summary)
    per_epoch = len(loader)
    drops = [count_plateau_drops(m.state.rows, t) for m in members]
    window_start, window_images = time.perf_counter(), 0.0
    for epoch, x, y in islice(batches_from(loader, start), max(0, t.iterations - start)):
        lrs = [lr_at(m.state.iteration, t, warming_up=not m.state.warmup_done, plateau_drops=d)
               for m, d in zip(members, drops)]
        steps = packed_train_step(packed, optimizer, lrs, x, y, engine)
        for m, step in zip(members, steps):
            advance(m.state, step, t, engine)
            m.summary.warmup_end = m.state.warmup_end
        iteration = members[0].state.iteration
        window_images += float(y.shape[0])
        last = iteration == t.iterations
        if iteration % t.log_every == 0 or last:
            seconds = time.perf_counter() - window_start
            rows = [metrics_row(m.state, lr, per_epoch, window_images, seconds, wall_s(m))
                    for m, lr in zip(members, lrs)]
            _check_members(members, [[r["train_loss"]] for r in rows], iteration, engine)
            if iteration % t.eval_every == 0 or last:
                for row, (top1, top5) in zip(rows, evaluate_members(packed, data.test, engine)):
                    row["test_error"], row["test_top5_error"] = top1, top5 if data.top5 else None
            for m, row in zip(members, rows):
                record_row(m.state, row, m.run, engine, on_row)
            drops = [count_plateau_drops(m.state.rows, t) for m in members]
            window_images, window_start = 0.0, time.perf_counter()
        stopping = stop_agreed(stop, engine, iteration)
        if iteration % t.checkpoint_every == 0 or last or stopping:
            checkpoint(iteration)
        if stopping:
            for m in members:
                stopped(m.summary, m.state, m.run, engine)
            raise Interrupted(f"interrupted at iteration {iteration}/{t.iterations}; checkpoints of {', '.join(ids)} "
                              f"saved in {members[0].run.path.parent}; run the same command again to resume")

    if t.responses:
        for m, responses in zip(members, measure_member_responses(packed, data.test, engine)):
            if engine.is_main:
                m.run.write_responses(responses)
    return [finish_summary(m.summary, m.state, m.run, engine, wall_s(m)) for m in members]
