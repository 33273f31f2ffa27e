"""Every bad input through the real CLI (Typer's runner, real Hydra, the real checks): a non-zero exit and one
line that names the setting, the value and what is allowed, before any data is read or net is built (so each
case answers at once, without allocating the memory a huge net would take), and no traceback."""

import resource
import time

import pytest
from typer.testing import CliRunner

from resnet_repro.cli import app

SMOKE = ["profile=smoke", "engine.device=cpu", "engine.threads=1"]
BAD = [  # (the command after `run`, what the one line must say)
    (["custom", "train.iterations=0"], "train.iterations=0: use a whole number >= 1"),
    (["custom", "train.batch_size=0"], "train.batch_size=0: use a whole number >= 1"),
    (["custom", "train.batch_size=-5"], "train.batch_size=-5: use a whole number >= 1"),
    (["custom", "train.lr=abc"], "train.lr=abc: use a number > 0"),
    (["custom", "train.lr=0"], "train.lr=0: use a number > 0"),
    (["custom", "train.momentum=1.5"], "train.momentum=1.5: use a number >= 0 and < 1"),
    (["custom", "train.weight_decay=-1"], "train.weight_decay=-1: use a number >= 0"),
    (["custom", "train.milestones=[5,3]"], "train.milestones=[5,3]: use a list of whole numbers >= 1, increasing"),
    (["custom", "train.milestones=[3,60]"], "each must be below train.iterations=6"),
    (["custom", "train.schedule=cosine"], "train.schedule=cosine: use one of step, plateau"),
    (["custom", "train.schedule=plateau"], "train.schedule=plateau: this recipe has no train.plateau settings"),
    (["custom", "model.family=imagenet"], "model.family=imagenet with data.family=cifar: a net and its data go"),
    (["custom", "data.family=imagenet"], "model.family=cifar with data.family=imagenet: a net and its data go"),
    (["custom", "train.warmup.until_train_error=150"], "train.warmup.until_train_error=150: use a number > 0 and <= 100"),
    (["custom", "engine.threads=-1"], "engine.threads=-1: use a whole number >= 1, or auto"),
    (["custom", "engine.threads=many"], "engine.threads=many: use a whole number >= 1, or auto"),
    (["custom", "engine.threads=100000"], "engine.threads=100000: this process may use"),
    (["custom", "engine.precision=fp8"], "engine.precision=fp8: use one of auto, bf16, fp16, tf32, fp32"),
    (["custom", "engine.compile=fastest"], "engine.compile=fastest: use one of auto, true, false, default"),
    (["custom", "engine.pack=0"], "engine.pack=0: use a whole number >= 1, or auto"),
    (["custom", "engine.log_every=0"], "engine.log_every=0: use a whole number >= 1"),
    (["custom", "engine.eval_batch_size=0"], "engine.eval_batch_size=0: use a whole number >= 1"),
    (["custom", "engine.device=tpu"], "engine.device=tpu: use auto, cpu, cuda or cuda:N"),
    (["custom", "data.validation_size=60000"], "data.validation_size=60000: hold out fewer than the 1,000 training"),
    (["custom", "data.pad=-1"], "data.pad=-1: use a whole number from 0 to 16"),
    (["custom", "data.pad=40"], "data.pad=40: use a whole number from 0 to 16"),
    (["custom", "train.batch_size=5000"], "train.batch_size=5000 is more than the 1,000 training images"),
    (["custom", "data.validation_size=999"], "more than the 1 training images left after data.validation_size=999"),
    (["custom", "seeds=100000"], "seeds=100000: use a whole number from 1 to 1000"),
    (["custom", "data.encoding=png"], "data.encoding=png: use original, or jpegQ"),
    (["custom", "data.test_subset=0"], "data.test_subset=0: use a whole number >= 1, or null"),
    (["custom", "seeds=0"], "seeds=0: use a whole number from 1 to 1000"),
    (["custom", "seeds=-1"], "seeds=-1: use a whole number from 1 to 1000"),
    (["custom", "seed=-3"], "seed=-3: use a whole number >= 0"),
    (["custom", "model.shortcut=D"], "model.shortcut=D: use one of A, B, C"),
    (["custom", "model.arch=wide"], "model.arch=wide: use one of plain, resnet"),
    (["custom", "model.n=0"], "model.n=0: use a whole number >= 1"),
    (["custom", "model.bn_group=48"], "model.bn_group=48 must divide train.batch_size=32"),
    (["custom", "model.n=1000000"], "resnet6000002-A-seed0-sample needs about"),
    (["custom", "train.amp=false"], "train.amp is now engine.precision: write engine.precision=fp32"),
    (["custom", "model.nope=1"], "bad override"),
    (["sweep_cifar"], "experiment sweep_cifar makes no runs"),
    (["table2", "data.crop=1000"], "the crop must fit the smallest scale"),
    (["table2", "engine.workers=-1"], "engine.workers=-1: use a whole number >= 0"),
    (["table2", "engine.decode=nvjpeg"], "engine.decode=nvjpeg: use one of auto, cpu, gpu"),
]


@pytest.mark.parametrize("args, says", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_bad_input_is_one_line_at_once(tmp_path, args, says):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    experiment, *overrides = args
    result = CliRunner().invoke(app, ["run", experiment, *SMOKE, *overrides, "--results-dir", str(tmp_path / "results")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], result.stderr
    assert time.monotonic() - start < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 512 * 1024  # KiB: nothing big was built
    assert not (tmp_path / "experiments").exists()  # refused before any run directory was made


OTHER = [  # commands besides `run`: (arguments, what the one line must say)
    (["collect", "/nonexistent"], "SOURCE /nonexistent: no such folder"),
    (["report", "--runs-dir", "/nonexistent"], "--runs-dir /nonexistent: no such folder"),
    (["plot", "fig1", "--runs-dir", "/nonexistent"], "--runs-dir /nonexistent: no such folder"),
    (["eval", "/nonexistent"], "no checkpoint at /nonexistent"),
    (["eval", "--hub", "cifar10_resnet7"], "unknown hub model 'cifar10_resnet7'"),
    (["sweep", "cifar", "--n", "a,b"], "--n must be comma-separated whole numbers"),
    (["sweep", "cifar", "--n", "0"], "--n must be >= 1"),
    (["models", "imagenet", "--depth", "77"], "ImageNet depth must be one of [18, 34, 50, 101, 152], got 77"),
    (["bench", "--pack", "0"], "--pack 0: give a whole number >= 1"),
]


@pytest.mark.parametrize("args, says", OTHER, ids=[" ".join(a) for a, _ in OTHER])
def test_other_commands_refuse_bad_input_in_one_line(tmp_path, args, says):
    result = CliRunner().invoke(app, args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], result.stderr


def test_the_memory_check_names_the_estimate_and_the_device():
    result = CliRunner().invoke(app, ["run", "custom", "model.n=1000000", *SMOKE])
    line = result.stderr.strip()
    assert "GiB" in line and "parameters" in line and "this machine has" in line and "smaller" in line


def test_resnet1202_at_batch_128_is_not_refused():
    """The paper's largest net must still start on a 24 GB machine: its estimate fits well below that."""
    import torch

    from resnet_repro.config import compose_experiment, expand_runs
    from resnet_repro.engine import Engine, training_memory

    [cfg] = expand_runs(compose_experiment("resnet1202", []))
    for precision in ("bf16", "fp32"):
        need, _ = training_memory(cfg, Engine(torch.device("cpu"), precision, True, None), 32, 10)
        assert need < 20 * 2**30


def test_progress_goes_to_a_log_as_plain_lines(tmp_path):
    """Output that is not a terminal (CliRunner's, as nohup's or a cluster's) gets one line per row at most
    every 30 s, and every evaluation: here the first row and the evaluated last one."""
    result = CliRunner().invoke(app, ["run", "custom", "model.n=1", *SMOKE, "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if ": iteration " in line]
    assert len(lines) == 2, result.stdout
    first, last = lines
    assert first.startswith("resnet8-A-seed0-sample: iteration 2/6, lr 0.1, train error ")
    assert "images/s" in first and " trained, about " in first and first.endswith(" left")
    assert last.startswith("resnet8-A-seed0-sample: iteration 6/6, lr 0.001, ") and ", test error " in last


@pytest.mark.parametrize("args, says", [
    (["bench", "--steps", "0"], "error: Invalid value for '--steps'"),
    (["plot", "fig9"], "error: Invalid value for 'figure'"),
    (["sweep", "cifar", "--bogus"], "error: No such option: --bogus (see resnet-repro sweep --help)"),
])
def test_a_usage_error_from_the_installed_command_is_one_line(args, says):
    """The entry point users run (`resnet-repro`, `python -m resnet_repro`): an option or argument Typer itself
    refuses is one line as well, not Click's box."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "resnet_repro", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(says), done.stderr
