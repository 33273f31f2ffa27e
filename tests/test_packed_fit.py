"""`engine.pack`: a pack trains each member as its solo run would, resumes exactly, ends each warm-up
where the solo run's ends and stops on a member's NaN naming it; `sweep` gives the same results either way."""

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from resnet_repro.cli import app
from resnet_repro.config import compose_experiment, expand_runs, runs_root, sweep_entries
from resnet_repro.engine import setup_engine
from resnet_repro.signals import StopFlag
from resnet_repro.errors import Interrupted, TrainingDiverged
from resnet_repro.packing import pack_size, plan_packs, split_by_iteration
from resnet_repro.results import RunDir
from resnet_repro.runner import build_data
from resnet_repro.steppers import Packed
from resnet_repro.train import fit, prepare
from training import TINY, read_metrics, train_run, without_timing

# as test_train.RESUME: a warm-up that ends (training error below 95%, 10-iteration window), then the step schedule
RESUME = ["train.iterations=40", "train.milestones=[24,32]", "engine.log_every=4", "engine.eval_every=20",
          "engine.checkpoint_every=16", "train.warmup.min_depth=8", "train.warmup.until_train_error=95",
          "train.warmup.window=10", "train.warmup.min_iterations=0"]

MEMBERS = ["plain8-seed0-fp32", "plain8-seed1-fp32", "resnet8-A-seed0-fp32", "resnet8-A-seed1-fp32"]


def pack_setup(runs_dir, *overrides, archs=("plain", "resnet")):
    """{plain, resnet} x {seed 0, seed 1} at n=1 on the bundled sample: configs, engine, data, run dirs."""
    cfg = compose_experiment("sweep_cifar", ["profile=smoke", *TINY, "train.batch_size=16", "seeds=2", f"runs_dir={runs_dir}",
                                             f"results_dir={runs_dir.parent / 'results'}", *overrides])
    cfg.experiment.runs = sweep_entries(list(archs), [1])
    cfgs = expand_runs(cfg)
    engine = setup_engine(cfgs[0])
    return cfgs, engine, build_data(cfgs[0], engine), [RunDir.for_run(runs_root(c), c) for c in cfgs]


def fit_pack(cfgs, runs, data, engine, on_row=None, stop=None):
    members, stepper = prepare(cfgs, runs, data, engine)
    assert isinstance(stepper, Packed)
    return fit(members, stepper, data, engine, on_row, stop)


def metrics(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_sweep_packed_gives_every_run_its_solo_metrics(tmp_path, fake_cifar):
    """The same sweep packed and solo: the same runs, schedules and first losses. Later losses are not
    compared: grouped and ungrouped convs sum in another order, and at lr 0.1 an untrained plain net
    amplifies that last-bit difference many times a step, by an amount that differs from CPU to CPU."""
    runner = CliRunner()
    common = ["sweep", "cifar", "--n", "1", "--arch", "plain,resnet", "profile=smoke", "seeds=2",
              "engine.precision=fp32", "engine.threads=1", "--data-dir", str(fake_cifar)]
    for pack, where in (("4", "A"), ("1", "B")):
        result = runner.invoke(app, [*common, f"engine.pack={pack}", "--results-dir", str(tmp_path / where / "results")])
        assert result.exit_code == 0, result.output
    packed_runs, solo_runs = (tmp_path / w / "experiments" / "smoke" for w in "AB")
    assert sorted(p.name for p in packed_runs.iterdir()) == sorted(p.name for p in solo_runs.iterdir()) == MEMBERS
    for name in MEMBERS:
        a, b = metrics(packed_runs / name / "metrics.csv"), metrics(solo_runs / name / "metrics.csv")
        assert [(r["iteration"], r["lr"]) for r in a] == [(r["iteration"], r["lr"]) for r in b]
        assert float(a[0]["train_loss"]) == pytest.approx(float(b[0]["train_loss"]), rel=1e-4)
        sa, sb = (json.loads((runs / name / "summary.json").read_text()) for runs in (packed_runs, solo_runs))
        assert sa["status"] == sb["status"] == "finished" and sa["run_id"] == sb["run_id"] == name
        assert sa["packed_with"] == [m for m in MEMBERS if m != name] and "packed_with" not in sb
        assert (packed_runs / name / "responses.csv").read_text().count("\n") == 7 + 1  # 7 layers + header
    # finished runs are skipped, packed or not
    result = runner.invoke(app, [*common, "engine.pack=4", "--results-dir", str(tmp_path / "B" / "results")])
    assert result.exit_code == 0 and result.output.count("finished already") == 4


def test_pack_interrupted_and_resumed_equals_uninterrupted_and_resumes_solo(tmp_path, monkeypatch):
    over = [*RESUME, "train.iterations=12", "train.milestones=[8,10]", "engine.checkpoint_every=8",
            "engine.eval_every=12", "engine.responses=true"]
    cfgs, engine, data, whole = pack_setup(tmp_path / "a", *over)
    fit_pack(cfgs, whole, data, engine)

    _, _, _, parts = pack_setup(tmp_path / "b", *over)
    stop, step, calls = StopFlag(), Packed.step, []

    def stop_after_5(*args):  # a signal arriving during step 5: mid log window, mid warm-up poll
        calls.append(1)
        stop.requested = len(calls) == 5
        return step(*args)

    monkeypatch.setattr(Packed, "step", stop_after_5)
    with pytest.raises(Interrupted, match="interrupted at iteration 5/12"):
        fit_pack(cfgs, parts, data, engine, stop=stop)
    monkeypatch.undo()
    assert [r.read_summary().status for r in parts] == ["interrupted"] * 4
    assert [torch.load(r.checkpoint)["iteration"] for r in parts] == [5] * 4
    summaries = fit_pack(cfgs, parts, data, engine)
    assert [s.status for s in summaries] == ["finished"] * 4
    for a, b in zip(whole, parts):
        assert without_timing(read_metrics(a)) == without_timing(read_metrics(b))
        ca, cb = torch.load(a.checkpoint), torch.load(b.checkpoint)
        for key in ca["model"]:
            assert torch.equal(ca["model"][key], cb["model"][key]), key
        assert a.responses.read_text() == b.responses.read_text()

    # each member's checkpoint is a solo checkpoint: interrupted packed, a member goes on solo
    _, _, _, mixed = pack_setup(tmp_path / "c", *over)
    stop = StopFlag()
    with pytest.raises(Interrupted):
        fit_pack(cfgs, mixed, data, engine, on_row=lambda _, row: stop.set() if row["iteration"] == 4 else None,
                 stop=stop)
    assert train_run(cfgs[3], mixed[3], data, engine).status == "finished"
    rows_solo, rows_packed = read_metrics(mixed[3]), read_metrics(whole[3])
    assert [r["iteration"] for r in rows_solo] == [r["iteration"] for r in rows_packed]
    assert without_timing(rows_solo[:1]) == without_timing(rows_packed[:1])  # written packed, before the solo run went on
    # on resume, members whose checkpoints disagree on the iteration train apart: the largest group packed
    groups = split_by_iteration(list(zip(cfgs, mixed)), [r.checkpoint_iteration() for r in mixed])
    assert [[c.run.id for c, _ in g] for g in groups] == [[c.run.id for c in cfgs[:3]], [cfgs[3].run.id]]


def test_a_packed_members_warmup_ends_where_its_solo_runs_does(tmp_path):
    over = [*RESUME, "train.iterations=20", "train.milestones=[]", "engine.eval_every=20"]
    cfgs, engine, data, packed = pack_setup(tmp_path / "pack", *over)
    ends = [s.warmup_end for s in fit_pack(cfgs, packed, data, engine)]
    solo_ends = []
    for cfg in cfgs:
        solo_ends.append(train_run(cfg, RunDir(tmp_path / "solo" / cfg.run.id), data, engine).warmup_end)
    assert ends == solo_ends and all(e is not None for e in ends)
    for run, end in zip(packed, ends):  # each member went back to the base lr on its own
        lrs = {int(r["iteration"]): float(r["lr"]) for r in read_metrics(run)}
        assert lrs[end - end % 4] == 0.01 and lrs[20] == 0.1


def test_a_member_going_nan_stops_the_pack_naming_it(tmp_path, monkeypatch):
    over = ["train.iterations=12", "train.milestones=[]", "engine.log_every=2", "engine.checkpoint_every=3",
            "engine.eval_every=12"]
    cfgs, engine, data, runs = pack_setup(tmp_path / "runs", *over)
    step, calls = Packed.step, []

    def poisoned(packed, *args):  # after step 4, member 1's first conv is NaN
        out = step(packed, *args)
        calls.append(1)
        if len(calls) == 4:
            with torch.no_grad():
                packed.module.conv1.weight[16:32] = float("nan")
        return out

    monkeypatch.setattr(Packed, "step", poisoned)
    with pytest.raises(TrainingDiverged, match=f"pack member {cfgs[1].run.id} diverged.* by iteration 6"):
        fit_pack(cfgs, runs, data, engine)
    for k, run in enumerate(runs):
        state = torch.load(run.checkpoint)
        assert state["iteration"] == 3 and all(t.isfinite().all() for t in state["model"].values())
        assert run.read_summary().status == ("failed" if k == 1 else "interrupted")


def test_plan_packs_groups_runs_that_share_everything_but_seed_and_arch(tmp_path):
    def planned(*overrides):
        tiny = [o for o in TINY if not o.startswith("model.n=")]  # the sweep's n, not one n for all
        cfg = compose_experiment("sweep_cifar", ["profile=smoke", *tiny, "seeds=3", f"runs_dir={tmp_path}", *overrides])
        cfg.experiment.runs = sweep_entries(["plain", "resnet"], [1, 2])
        runs = expand_runs(cfg)
        return runs, plan_packs(runs, setup_engine(runs[0]))

    runs, packs = planned("engine.pack=4")
    assert [[c.run.id.split("-sample")[0] for c in p] for p in packs] == [
        ["plain8-seed0", "plain8-seed1", "plain8-seed2", "resnet8-A-seed0"],
        ["plain14-seed0", "plain14-seed1", "plain14-seed2", "resnet14-A-seed0"],
        ["resnet8-A-seed1", "resnet8-A-seed2"], ["resnet14-A-seed1", "resnet14-A-seed2"]]
    solo_runs, solo = planned()  # engine.pack: 1 (the default), and auto on a CPU
    assert [len(p) for p in solo] == [1] * 12 and [len(p) for p in planned("engine.pack=auto")[1]] == [1] * 12
    assert [c.run.id for c in runs] == [c.run.id for c in solo_runs]  # engine.pack is no part of a run's id
    assert [len(p) for p in planned("engine.pack=4", "model.bn_group=16")[1]] == [1] * 12  # BN groups train solo
    assert pack_size("auto", torch.device("cpu"), 3) == 1 and pack_size("auto", torch.device("cuda"), 200) == 1
