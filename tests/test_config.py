"""Composing experiments with Hydra, expanding them into runs, run ids, and the commands that make runs."""

import re

import pytest
from omegaconf import OmegaConf

from resnet_repro.config import (check_folder, compose_experiment, config_dir, expand_runs, keeps_schedule, list_group,
                                 net_command, run_command, runs_root, runs_root_for, variant_of)
from resnet_repro.errors import UserError


@pytest.mark.parametrize("experiment", sorted(list_group("experiment")))
def test_every_experiment_composes_and_expands(experiment):
    cfg = compose_experiment(experiment, ["profile=smoke"])
    runs = expand_runs(cfg)
    assert cfg.experiment.name == experiment
    for run in runs:
        assert run.run.id and run.profile.name == "smoke"
        OmegaConf.to_yaml(run, resolve=True)  # every interpolation resolves


def test_paper_recipe_is_the_default():
    cfg = compose_experiment("table6", [])
    t = cfg.train
    assert (t.iterations, t.lr, list(t.milestones), t.momentum, t.weight_decay, t.batch_size) == (
        64000, 0.1, [32000, 48000], 0.9, 0.0001, 128)
    assert (t.warmup.lr, t.warmup.until_train_error, t.warmup.min_depth) == (0.01, 80.0, 110)
    assert cfg.profile.full_schedule and cfg.model.shortcut == "A" and not cfg.data.sample


def test_table6_expands_depths_and_seeds():
    runs = expand_runs(compose_experiment("table6", ["seeds=2"]))
    assert [r.run.id for r in runs][:3] == ["resnet20-A-seed0", "resnet20-A-seed1", "resnet32-A-seed0"]
    assert sorted({r.run.depth for r in runs}) == [20, 32, 44, 56, 110]


def test_user_model_overrides_win_and_duplicates_collapse():
    runs = expand_runs(compose_experiment("table6", ["model.shortcut=B"]))
    assert {r.model.shortcut for r in runs} == {"B"}
    runs = expand_runs(compose_experiment("fig1", ["model.n=5"]))
    assert [r.run.id for r in runs] == ["plain32-seed0"]


def test_variants_name_overrides_that_change_results():
    assert variant_of(["profile=smoke", "seed=3", "data_dir=/x", "model.n=5"]) == ""
    tag = variant_of(["train.lr=0.05"])
    assert tag and tag == variant_of(["+train.lr=0.05"]) and tag != variant_of(["train.lr=0.02"])
    assert variant_of(["engine.precision=bf16"]) == "bf16" and variant_of(["engine.precision=auto"]) == ""
    assert variant_of(["engine.precision=fp32"]) == "fp32" and variant_of(["model.bn_group=64"]) == "bn64"
    assert variant_of(["engine.threads=1", "engine.compile=false", "engine.pack=4", "results_dir=/r"]) == ""
    assert variant_of(["train.lr=0.02", "train.lr=0.05"]) == tag  # a key given twice counts once, as Hydra does
    assert variant_of(["engine.precision=fp32", "train.lr=0.05"]) == f"fp32-{tag}"
    runs = expand_runs(compose_experiment("custom", ["train.lr=0.05"]))
    assert runs[0].run.id == f"resnet20-A-seed0-{tag}"


@pytest.mark.parametrize("overrides, message", [
    (["model.nope=1"], "bad override"),
    (["model.shortcut"], "malformed override"),
    (["profile=nonexistent"], "bad override"),
])
def test_bad_overrides_are_user_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        compose_experiment("table6", overrides)


def test_bad_model_values_are_user_errors():
    for override in ("model.n=0", "model.n=x", "model.shortcut=D", "model.arch=wide"):
        with pytest.raises(UserError):
            expand_runs(compose_experiment("custom", [override]))


def test_unknown_experiment_lists_known_ones():
    with pytest.raises(UserError, match="table6"):
        compose_experiment("table99", [])


def test_config_dir_from_environment(tmp_path, monkeypatch):
    (tmp_path / "config.yaml").write_text("defaults: []\n")
    monkeypatch.setenv("RESNET_REPRO_CONFIG_DIR", str(tmp_path))
    assert config_dir() == tmp_path.resolve()
    assert config_dir("/nonexistent/or/not") == tmp_path.resolve()


def test_runs_go_beside_results_unless_given(tmp_path):
    cfg = compose_experiment("custom", [f"results_dir={tmp_path}/results"])
    assert runs_root(cfg) == tmp_path / "experiments"
    cfg = compose_experiment("custom", [f"runs_dir={tmp_path}/elsewhere"])
    assert runs_root(cfg) == tmp_path / "elsewhere"


def test_a_lossy_copy_of_the_data_is_named_not_a_variant():
    runs = expand_runs(compose_experiment("custom", ["data.encoding=jpeg90", "data_dir=/x"]))
    assert runs[0].run.id == "resnet20-A-seed0-jpeg90" and runs[0].run.variant == ""
    runs = expand_runs(compose_experiment("custom", ["data_dir=/x"]))
    assert runs[0].run.id == "resnet20-A-seed0"


def test_a_precision_control_is_still_the_papers_schedule_a_shorter_one_is_not():
    assert keeps_schedule(["engine.precision=fp32", "profile=paper", "seed=2"])
    assert not keeps_schedule(["train.iterations=1000"]) and not keeps_schedule(["engine.precision=fp32", "train.lr=0.2"])
    [run] = expand_runs(compose_experiment("custom", ["engine.precision=fp32"]))
    assert run.run.id == "resnet20-A-seed0-fp32" and run.run.keeps_schedule


def test_commands_that_make_missing_runs():
    assert run_command("table3") == "resnet-repro run table3" == run_command("table3", "paper")
    assert run_command("fig4", "proxy") == "resnet-repro run fig4 profile=proxy"
    assert net_command("plain56") == "resnet-repro sweep cifar --n 9 --arch plain"
    assert net_command("resnet110-A", "budget") == "resnet-repro sweep cifar --n 18 --arch resnet profile=budget"
    assert net_command("resnet1202-A") == "resnet-repro run resnet1202"  # its own experiment
    [run] = expand_runs(compose_experiment("custom", ["model.n=9", "model.arch=plain"]))
    assert run.run.model_name == "plain56"  # the net the sweep command above trains


def test_paths_beside_results_and_folders_under_a_file(tmp_path):
    assert runs_root_for(tmp_path / "results") == tmp_path / "experiments"
    assert runs_root_for(tmp_path / "results", tmp_path / "elsewhere") == tmp_path / "elsewhere"
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file"):
        check_folder(tmp_path / "file" / "results", "--results-dir")
    assert check_folder(tmp_path / "new" / "results") == tmp_path / "new" / "results"


@pytest.mark.parametrize("old, new", [
    ("train.compile=false", "train.compile is now engine.compile: write engine.compile=false"),
    ("train.amp=false", "train.amp is now engine.precision: write engine.precision=fp32"),
    ("train.threads=1", "train.threads is now engine.threads: write engine.threads=1"),
    ("device=cpu", "device is now engine.device: write engine.device=cpu"),
    ("data.root=/d", "data.root is now data_dir: write data_dir=/d"),
    ("data.decode=cpu", "data.decode is now engine.decode: write engine.decode=cpu"),
])
def test_a_setting_that_moved_names_its_new_place(old, new):
    with pytest.raises(UserError, match=re.escape(new)):
        compose_experiment("custom", [old])


@pytest.mark.parametrize("overrides, run_id", [  # how the committed runs were made, in today's names
    (["model.n=3", "engine.precision=fp32", "engine.threads=1", "results_dir=/r", "data_dir=/d"],
     "resnet20-A-seed0-fp32"),
    (["profile=budget", "model.n=3", "model.bn_group=64", "seed=1", "engine.threads=1"], "resnet20-A-seed1-bn64"),
    (["model.arch=resnet", "model.n=5", "data.encoding=jpeg90", "engine.compile=reduce-overhead", "data_dir=/d"],
     "resnet32-A-seed0-jpeg90"),
    (["profile=budget", "model.n=18", "seeds=3", "engine.threads=1"], "resnet110-A-seed0"),
    (["experiment=table2", "profile=proxy", "data_dir=/d"], "plain18-seed0"),
])
def test_engine_settings_and_folders_never_change_a_run_id(overrides, run_id):
    experiment = next((o.split("=")[1] for o in overrides if o.startswith("experiment=")), "custom")
    runs = expand_runs(compose_experiment(experiment, [o for o in overrides if not o.startswith("experiment=")]))
    assert runs[0].run.id == run_id
    assert runs[0].run.keeps_schedule
