"""`fit`: exact resume, durability, divergence, warm-up and the schedules, checkpoint format.

Everything trains ResNet-8 (n=1) on the bundled sample with small batches, on the CPU, through the
real `fit`: a stop arrives between steps exactly as a signal would.
"""

import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from training import read_metrics, setup, tiny_cfg, train_run, with_train, without_timing

from resnet_repro import steppers, train
from resnet_repro.signals import StopFlag
from resnet_repro.errors import Interrupted, TrainingDiverged, UserError
from resnet_repro.results import RunDir
from resnet_repro.train import lr_at

# crosses an epoch (31 batches of 32), a warm-up poll, log rows, evaluations and checkpoints.
RESUME = ["train.iterations=40", "train.milestones=[24,32]", "engine.log_every=4", "engine.eval_every=20",
          "engine.checkpoint_every=16", "train.warmup.min_depth=8", "train.warmup.until_train_error=95",
          "train.warmup.window=10", "train.warmup.min_iterations=0"]


@pytest.mark.parametrize("compiled", ["false", pytest.param("true", marks=pytest.mark.slow)])  # CPU runs compile
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, compiled):
    cfg, engine, data, whole = setup(tmp_path / "a", *RESUME, f"engine.compile={compiled}")
    train_run(cfg, whole, data, engine)

    _, _, _, parts = setup(tmp_path / "b", *RESUME, f"engine.compile={compiled}")
    stop = StopFlag()
    # 1) a stop request after step 7: mid log-window, mid warm-up poll, mid epoch
    stopper = with_train(data, lambda it: stop.set() if it == 6 else None)
    with pytest.raises(Interrupted, match="interrupted at iteration 7/40"):
        train_run(cfg, parts, stopper, engine, stop=stop)
    assert parts.read_summary().status == "interrupted" and torch.load(parts.checkpoint)["iteration"] == 7
    # 2) resumed by a fresh call, stopped again from the on_row callback after the epoch boundary
    stop = StopFlag()
    with pytest.raises(Interrupted, match="at iteration 36/40"):
        train_run(cfg, parts, data, engine, on_row=lambda _, row: stop.set() if row["iteration"] == 36 else None, stop=stop)
    # 3) and run to the end
    summary = train_run(cfg, parts, data, engine, stop=StopFlag())
    assert summary.status == "finished" and summary.iterations_done == 40

    a, b = torch.load(whole.checkpoint), torch.load(parts.checkpoint)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    rows_a, rows_b = read_metrics(whole), read_metrics(parts)
    assert without_timing(rows_a) == without_timing(rows_b)
    # the warm-up ended and went back to the base LR, then the schedule divided it by 10 twice
    lrs = [float(r["lr"]) for r in rows_a]
    assert lrs[0] == 0.01 and 0.1 in lrs and lrs[-1] == pytest.approx(0.001)
    assert [r["iteration"] for r in rows_a] == [str(i) for i in range(4, 41, 4)]


def test_lr_at_warmup_then_schedule():
    cfg = tiny_cfg(Path("unused"), "train.iterations=30", "train.milestones=[10,20]")
    assert lr_at(3, cfg.train, warming_up=True) == 0.01
    assert [lr_at(i, cfg.train, warming_up=False) for i in (3, 10, 20)] == pytest.approx([0.1, 0.01, 0.001])


def test_corrupt_checkpoint_is_a_user_error_naming_the_file(tmp_path):
    cfg, engine, data, run = setup(tmp_path / "runs")
    run.path.mkdir(parents=True)
    run.checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=re.escape(str(run.checkpoint))):
        train_run(cfg, run, data, engine)


def test_divergence_keeps_last_good_checkpoint_and_records_failure(tmp_path):
    over = ["train.iterations=16", "train.milestones=[]", "engine.log_every=4", "engine.checkpoint_every=4",
            "engine.eval_every=16"]
    cfg, engine, data, run = setup(tmp_path / "runs", *over)

    def poison(it):  # from step 10 on the images are NaN: the loss is NaN from then on
        if it == 9:
            data.train.images.fill_(float("nan"))

    saved = data.train.images.clone()
    try:
        with pytest.raises(TrainingDiverged, match="by iteration 12"):
            train_run(cfg, run, with_train(data, poison), engine)
    finally:
        data.train.images.copy_(saved)
    state = torch.load(run.checkpoint)
    assert state["iteration"] == 8 and all(t.isfinite().all() for t in state["model"].values())
    summary = run.read_summary()
    assert summary.status == "failed" and "12" in summary.failure

    # a learning rate that blows the weights up is caught too (finite loss, infinite weights)
    cfg, engine, data, run = setup(tmp_path / "lr", *over, "train.lr=1e6")
    with pytest.raises(TrainingDiverged):
        train_run(cfg, run, data, engine)
    assert run.read_summary().status == "failed"


def test_plateau_schedule_divides_after_patience_evaluations():
    t = OmegaConf.create({"lr": 0.1, "schedule": "plateau", "milestones": [],
                         "plateau": {"patience": 2, "threshold": 0.1, "max_drops": 2}})
    rows = [{"test_error": e} for e in (50, 40, 39.95, 39.99, 30, 31, 32, 33, 34, 35, 36)]
    drops = [train.count_plateau_drops(rows[:k], t) for k in range(len(rows) + 1)]
    assert drops == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    assert train.lr_at(0, t, False, plateau_drops=2) == pytest.approx(0.001)


CHECKPOINT_KEYS = {"run_id", "iterations", "iteration", "model", "optimizer", "torch_rng", "rows", "window",
                   "warm_window", "warmup_done", "started", "wall_s", "warm_history", "warmup_end", "trained_on"}


def test_the_checkpoint_holds_the_train_state_and_reads_back(tmp_path):
    cfg, engine, data, run = setup(tmp_path / "runs", "train.iterations=8", "train.milestones=[6]",
                                   "engine.log_every=3", "engine.checkpoint_every=8")
    train_run(cfg, run, data, engine)
    saved = torch.load(run.checkpoint)
    assert saved.keys() == CHECKPOINT_KEYS and saved["iteration"] == 8 and len(saved["rows"]) == 3
    state = train.TrainState.from_checkpoint(saved, engine.device)
    assert (state.iteration, state.rows, state.warmup_done, state.wall_s) == (8, saved["rows"], True, saved["wall_s"])
    model, optimizer = steppers.prepare_model(cfg, engine, data.num_classes)
    model.load_state_dict(saved["model"])
    again = state.to_checkpoint(cfg, model, optimizer, saved["wall_s"], saved["torch_rng"])
    assert again.keys() == CHECKPOINT_KEYS and again["window"] == saved["window"] and again["run_id"] == cfg.run.id
    assert state.trained_on == saved["trained_on"] and [t["from_iteration"] for t in state.trained_on] == [0]
    for key in ("warm_window", "warm_history", "warmup_end", "trained_on"):  # written before these were checkpointed
        del saved[key]
    old = train.TrainState.from_checkpoint(saved, engine.device)
    assert old.warm_window.tolist() == [0.0, 0.0, 0.0] and old.warm_history == [] and old.warmup_end is None
    assert old.trained_on == []


def test_a_checkpoint_of_another_run_or_schedule_is_refused(tmp_path):
    cfg, engine, data, run = setup(tmp_path / "runs", "train.iterations=3", "train.milestones=[2]")
    train_run(cfg, run, data, engine)
    longer, _, _, _ = setup(tmp_path / "runs", "train.iterations=4", "train.milestones=[2]")
    with pytest.raises(UserError, match="another run or schedule"):
        train_run(longer, run, data, engine)


def warmup_end(errors_per_check: list[float], **warmup) -> int | None:
    """Where the warm-up rule ends for a run whose training error over each 10-step block is given."""
    t = OmegaConf.create({"warmup": {"until_train_error": 80.0, **warmup}})
    engine = train.Engine(torch.device("cpu"), precision="fp32", channels_last=False, compile=None)
    state = train.TrainState.new(True, engine.device)
    for error in errors_per_check:
        state.warm_window += torch.tensor([0.0, error * 1.28, 128.0])  # one block: 10 steps of 12.8 images
        state.iteration += train.WARMUP_CHECK
        if train.warmup_over(state, t, engine):
            return state.iteration
    return None


def test_warmup_ends_on_a_trailing_window_and_not_before_its_minimum():
    noisy = [90, 90, 70, 90, 90] + [85] * 20 + [75] * 30  # one lucky block at iteration 30
    assert warmup_end(noisy, window=10, min_iterations=0) == 30  # the old rule: ended on noise
    # 100 iterations of history: the lucky block is outvoted; ends once the last 10 blocks average < 80%
    assert warmup_end(noisy, window=100, min_iterations=200) == 310
    assert warmup_end([50] * 40, window=100, min_iterations=200) == 200  # easy from the start: held 200
    assert warmup_end([85] * 40, window=100, min_iterations=200) is None


def test_the_warmup_end_is_logged_in_the_summary(tmp_path):
    cfg, engine, data, run = setup(tmp_path / "runs", *RESUME)
    summary = train_run(cfg, run, data, engine)
    assert summary.warmup_end is not None and summary.warmup_end % 10 == 0
    lrs = {int(r["iteration"]): float(r["lr"]) for r in read_metrics(run)}
    assert lrs[summary.warmup_end - summary.warmup_end % 4] == 0.01  # the row before it still warming up


def test_runs_on_shared_data_each_train_on_their_own_seed(tmp_path):
    """The runner builds one `Data` for all runs of a command: each run's batches still follow its own seed."""
    over = ["train.iterations=8", "train.milestones=[6]", "engine.log_every=4", "engine.eval_every=8"]
    _, engine, shared, _ = setup(tmp_path / "shared", *over)
    rows = []
    for seed in (0, 1):
        cfg, _, own, alone = setup(tmp_path / f"alone{seed}", *over, f"seed={seed}")
        train_run(cfg, alone, own, engine)
        together = RunDir(tmp_path / "shared" / cfg.run.id)
        train_run(cfg, together, shared, engine)
        rows.append(without_timing(read_metrics(together)))
        assert rows[-1] == without_timing(read_metrics(alone))
    assert rows[0][0]["train_loss"] != rows[1][0]["train_loss"]  # two seeds, two runs


def test_fp16_trains_through_its_gradient_scaler_and_resumes_exactly(tmp_path):
    """The path a V100 or a T4 takes (engine.precision: auto picks fp16 there), for real on the CPU: the
    scaler's state is checkpointed and restored, so an interrupted run ends where an uninterrupted one does."""
    over = ["engine.precision=fp16", "train.batch_size=16", "data.test_subset=50", "train.iterations=8",
            "train.milestones=[6]", "engine.log_every=2", "engine.eval_every=8", "engine.checkpoint_every=4"]
    cfg, engine, data, whole = setup(tmp_path / "a", *over)
    assert engine.precision == "fp16" and "-fp16" in cfg.run.id
    train_run(cfg, whole, data, engine)
    scaler = torch.load(whole.checkpoint)["scaler"]
    assert scaler["scale"] > 0 and scaler["_growth_tracker"] >= 0

    _, _, _, parts = setup(tmp_path / "b", *over)
    stop = StopFlag()
    with pytest.raises(Interrupted, match="at iteration 3/8"):
        train_run(cfg, parts, with_train(data, lambda it: stop.set() if it == 2 else None), engine, stop=stop)
    train_run(cfg, parts, data, engine)
    assert without_timing(read_metrics(whole)) == without_timing(read_metrics(parts))
    a, b = torch.load(whole.checkpoint), torch.load(parts.checkpoint)
    assert a["scaler"] == b["scaler"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
