"""`resnet-repro`: parse, call, print. No logic lives here: experiments run in runner.py, tables,
figures and the README come from tables/plots/report.py, saved models are scored in evaluate.py.

Nothing heavy is imported at start (no torch, pandas or matplotlib), so `--help` and bad input
answer at once; each command imports what it needs."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from . import config as config_mod
from .errors import UserError
from .signals import install_setup_handlers
from .spec import spec_from_config
from .terminal import console, err_console, friendly_errors, print_written, train_and_report

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Re-run He et al. 2015, 'Deep Residual Learning for Image Recognition'.")
models_app = typer.Typer(no_args_is_help=True, help="Layers, parameters and multiply-adds of the nets, counted from their shapes.")
app.add_typer(models_app, name="models")
analyze_app = typer.Typer(no_args_is_help=True, help="Analyses of trained runs.")
app.add_typer(analyze_app, name="analyze")

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Folder with the data (else $RESNET_REPRO_DATA).")]
ResultsDir = Annotated[Path, typer.Option("--results-dir", help="Tables and figures go here.")]
RunsDir = Annotated[Path | None, typer.Option("--runs-dir", help="Run directories (default: experiments/ beside --results-dir).")]
ConfigDir = Annotated[Path | None, typer.Option("--config-dir", help="Config tree to use instead of the project's conf/.")]
Restart = Annotated[bool, typer.Option("--restart", help="Start unfinished runs over instead of resuming.")]
Overrides = Annotated[list[str] | None, typer.Argument(help="Hydra overrides, e.g. profile=smoke model.shortcut=B seeds=5 engine.precision=fp32.")]


class Arch(str, Enum):
    plain = "plain"
    resnet = "resnet"


class Shortcut(str, Enum):
    A = "A"  # identity; zero-padding where dimensions grow (no parameters)
    B = "B"  # projections where dimensions grow
    C = "C"  # projections everywhere


class Family(str, Enum):
    cifar = "cifar"


class Launcher(str, Enum):
    local = "local"  # train here, one run after another
    slurm = "slurm"  # one SLURM job per run, through Hydra's submitit launcher


LauncherOpt = Annotated[Launcher, typer.Option(
    "--launcher", help="local: train here. slurm: one SLURM job per run through Hydra's submitit launcher "
                       "(needs the slurm extra: pip install -e '.\\[slurm]'), waiting for them, then the tables and figures; "
                       "hydra.launcher.KEY=VALUE overrides set partition, gpus_per_node, timeout_min, ...")]


class Figure(str, Enum):
    fig1 = "fig1"
    fig4 = "fig4"
    fig6 = "fig6"
    fig7 = "fig7"
    all = "all"


class Protocol(str, Enum):
    center = "center"  # shorter side 256, center 224 crop
    ten_crop = "10crop"  # 4 corners + center and their flips (Tables 2, 3)
    multiscale = "multiscale"  # whole image at shorter sides 224..640 (Table 4; mirrors with data.multiscale_flips=true)


class Stride(str, Enum):
    v1 = "v1"
    v1_5 = "v1.5"


def parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated whole numbers, e.g. 3,5,7 (got {text!r})")
    if not values:
        raise UserError(f"{what} is empty: give comma-separated whole numbers, e.g. 3,5,7")
    return values


def parse_archs(text: str) -> list[str]:
    archs = [a.strip() for a in text.split(",") if a.strip()]
    bad = [a for a in archs if a not in Arch.__members__]
    if bad or not archs:
        raise UserError(f"--arch takes plain and/or resnet, e.g. plain,resnet (got {text!r})")
    return archs


# `--arch plain,resnet`: one option naming several choices, listed in --help by its metavar
ARCHS_METAVAR = "<" + "|".join(a.value for a in Arch) + ">,..."


def _existing(path: Path, what: str) -> Path:
    """A folder the command reads from: it must be there (a folder it writes to is made: check_folder)."""
    if not Path(path).is_dir():
        raise UserError(f"{what} {path}: no such folder")
    return path


def _path_overrides(data_dir, results_dir, runs_dir) -> list[str]:
    config_mod.check_folder(results_dir, "--results-dir")  # now, not after hours of training
    if runs_dir is not None:
        config_mod.check_folder(runs_dir, "--runs-dir")
    out = [f"results_dir={results_dir}"]
    if data_dir is not None:
        out.append(f"data_dir={data_dir}")
    if runs_dir is not None:
        out.append(f"runs_dir={runs_dir}")
    return out


@app.command()
@friendly_errors
def run(
    experiment: Annotated[str, typer.Argument(help="An experiment from `resnet-repro list`, e.g. table6.")],
    overrides: Overrides = None,
    data_dir: DataDir = None,
    results_dir: ResultsDir = Path("results"),
    runs_dir: RunsDir = None,
    config_dir: ConfigDir = None,
    restart: Restart = False,
    launcher: LauncherOpt = Launcher.local,
):
    """Train what EXPERIMENT needs (resuming unfinished runs), then write its tables and figures."""
    ours, hydra_args = _hydra_apart(overrides)
    paths = _path_overrides(data_dir, results_dir, runs_dir)
    cfg = config_mod.compose_experiment(experiment, [*ours, *paths], config_dir)
    _train_or_submit(cfg, launcher, [f"experiment={experiment}", *ours, *paths], hydra_args, restart)


@app.command()
@friendly_errors
def sweep(
    family: Annotated[Family, typer.Argument(help="The nets to sweep (CIFAR-10; ImageNet: resnet-repro run table3).")],
    n: Annotated[str, typer.Option("--n", help="Comma-separated n (depth 6n+2), e.g. 3,5,7,9,18.")] = "3,5,7,9,18",
    arch: Annotated[str, typer.Option("--arch", metavar=ARCHS_METAVAR, help="plain, resnet or plain,resnet.")] = "resnet",
    overrides: Overrides = None,
    data_dir: DataDir = None,
    results_dir: ResultsDir = Path("results"),
    runs_dir: RunsDir = None,
    config_dir: ConfigDir = None,
    restart: Restart = False,
    launcher: LauncherOpt = Launcher.local,
):
    """One run per (arch, n, seed) on CIFAR-10."""
    ns, archs = parse_ints(n, "--n"), parse_archs(arch)
    if bad := [v for v in ns if v < 1]:
        raise UserError(f"--n must be >= 1 (depth 6n+2), got {bad[0]}")
    ours, hydra_args = _hydra_apart(overrides)
    paths = _path_overrides(data_dir, results_dir, runs_dir)
    cfg = config_mod.compose_experiment("sweep_cifar", [*ours, *paths], config_dir)
    cfg.experiment.runs = config_mod.sweep_entries(archs, ns)
    entries = ",".join(f"{{arch:{e['arch']},n:{e['n']}}}" for e in cfg.experiment.runs)
    _train_or_submit(cfg, launcher, ["experiment=sweep_cifar", f"experiment.runs=[{entries}]", *ours, *paths],
                     hydra_args, restart)


def _train_or_submit(cfg, launcher: Launcher, job_overrides: list[str], hydra_args: list[str], restart: bool):
    """Train here, or submit one SLURM job per run with `job_overrides` (what composes `cfg` again), wait for
    them, then write the tables and figures once."""
    if launcher is Launcher.slurm:
        import importlib.util

        if restart:
            raise UserError("--restart is not for --launcher slurm: delete the unfinished run directories instead")
        if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
            raise UserError("--launcher slurm needs Hydra's submitit launcher: pip install -e '.[slurm]'")
        from .launch import submit  # torch and Hydra's launcher: only now

        return submit(cfg, job_overrides, hydra_args)
    _refuse_hydra(hydra_args)
    train_and_report(cfg, restart)


def _hydra_apart(overrides: list[str] | None) -> tuple[list[str], list[str]]:
    """The overrides for our config, and those for Hydra itself (hydra.launcher.partition=gpu, ...)."""
    overrides = list(overrides or [])
    return [o for o in overrides if not o.startswith("hydra.")], [o for o in overrides if o.startswith("hydra.")]


def _refuse_hydra(hydra_args: list[str]) -> None:
    if hydra_args:
        raise UserError(f"{hydra_args[0]}: hydra.* settings are for --launcher slurm (Hydra's launcher); "
                        f"without it, leave them out")


BENCH_KINDS = ("cifar", "imagenet")


@app.command()
@friendly_errors
def bench(
    args: Annotated[list[str] | None, typer.Argument(
        help="What to time, cifar (the default) or imagenet, then Hydra overrides, e.g. engine.precision=fp32.")] = None,
    n: Annotated[int, typer.Option("--n", help="CIFAR net of depth 6n+2 (3: ResNet-20).")] = 3,
    arch: Annotated[Arch, typer.Option("--arch", help="resnet or plain.")] = Arch.resnet,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Mini-batch (CIFAR: the paper's 128; ImageNet: 256 on a GPU, 16 on a CPU).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Timed steps per pipeline (default 20 on CPU, 300 on GPU; ImageNet 3 and 50).")] = None,
    warmup: Annotated[int | None, typer.Option("--warmup", min=0, help="Untimed steps first, compilation included (default 3 CPU, 30 GPU).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=0, help="DataLoader workers (CIFAR reference: min(4, cores); ImageNet: all cores).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    pack: Annotated[int | None, typer.Option("--pack", help="Instead: one run alone against K runs packed (engine.pack=K).")] = None,
    images: Annotated[int, typer.Option("--images", help="ImageNet: how many ImageNet-sized JPEGs to generate (once, cached).")] = 2000,
    data_dir: DataDir = None,
    results_dir: ResultsDir = Path("results"),
):
    """Images/s of our training step against the usual pipeline, a row in RESULTS/bench.csv.

    cifar: our training step against the usual PIL + DataLoader pipeline (or, with --pack K, one run alone
    against K packed). imagenet: the input pipelines (CPU workers; nvJPEG on a GPU) and ResNet-50's step,
    each alone, on generated ImageNet-sized JPEGs or --data-dir."""
    args = list(args or [])
    kind = args.pop(0) if args and args[0] in BENCH_KINDS else "cifar"
    if args and "=" not in args[0]:
        raise UserError(f"bench {args[0]}: choose one of {', '.join(BENCH_KINDS)} (then Hydra overrides key=value)")
    config_mod.check_folder(results_dir, "--results-dir")
    log = lambda line: console.print(line, highlight=False)  # noqa: E731
    if kind == "imagenet":
        from .bench_imagenet import run_imagenet_bench

        run_imagenet_bench(data_dir, images, batch_size, steps, workers, device, results_dir=results_dir,
                           overrides=args, log=log)
        return
    from .bench import run_bench, run_pack_bench

    if pack is not None:
        run_pack_bench(pack, arch.value, n, batch_size or 128, data_dir, steps, warmup, device=device,
                       results_dir=results_dir, overrides=args, log=log)
        return
    run_bench(arch.value, n, batch_size or 128, data_dir, steps, warmup, workers=workers, device=device,
              results_dir=results_dir, overrides=args, log=log)


@app.command("list")
@friendly_errors
def list_(config_dir: ConfigDir = None):
    """Experiments and profiles, one line each."""
    for group in ("experiment", "profile"):
        for name, text in config_mod.list_group(group, config_dir).items():
            console.print(f"{group:<10} {name:<14} {text}", highlight=False, soft_wrap=True)


@app.command()
@friendly_errors
def plot(
    figure: Annotated[Figure, typer.Argument(help="A figure of the paper, or all.")],
    results_dir: ResultsDir = Path("results"),
    runs_dir: RunsDir = None,
    profile: Annotated[str | None, typer.Option("--profile", help="Draw runs of this profile only.")] = None,
):
    """Figures from finished (and partial) runs, into --results-dir as PNG and PDF."""
    from . import plots

    config_mod.check_folder(results_dir, "--results-dir")
    runs = config_mod.runs_root_for(results_dir, runs_dir and _existing(runs_dir, "--runs-dir"))
    names = list(plots.FIGURES) if figure is Figure.all else [figure.value]
    print_written([r for name in names for r in plots.plot_figures(name, runs, results_dir, profile=profile)], runs)


@app.command()
@friendly_errors
def report(
    results_dir: ResultsDir = Path("results"),
    runs_dir: RunsDir = None,
):
    """Tables 2-6 and results/README.md from the run directories."""
    from . import report as report_mod

    config_mod.check_folder(results_dir, "--results-dir")
    runs = config_mod.runs_root_for(results_dir, runs_dir and _existing(runs_dir, "--runs-dir"))
    print_written(report_mod.write_report(runs, results_dir), runs)


@app.command()
@friendly_errors
def collect(
    source: Annotated[Path, typer.Argument(help="A runs folder holding <profile>/<run id>/, e.g. the CPU campaign's.")],
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where the finished runs go.")] = Path("experiments"),
    data_dir: DataDir = None,
):
    """Finished CIFAR-10 runs of SOURCE into --runs-dir, each with its weights.

    weights.pt is the net in fp32 with the training images' pixel mean; its sha256 and size go into
    summary.json. A finished run already in --runs-dir is never replaced."""
    from .weights import collect as collect_runs

    _existing(source, "SOURCE")
    config_mod.check_folder(runs_dir, "--runs-dir")
    for run_id in collect_runs(source, runs_dir, data_dir):
        console.print(f"collected {run_id}", highlight=False)


@analyze_app.command("responses")
@friendly_errors
def analyze_responses(
    runs: Annotated[list[Path], typer.Argument(help="Run directories with a checkpoint.pt.")],
    data_dir: DataDir = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
):
    """Fig. 7: std of each 3x3 layer's response on the test set, into RUN/responses.csv."""
    from .evaluate import analyze_responses

    for run_path in runs:
        console.print(f"wrote {analyze_responses(run_path, device, data_dir)}", highlight=False)


def _models_table(title: str, flag: str, settings: list[dict], image_size: int) -> None:
    """Layers, parameters and multiply-adds of the nets `settings` (model config dicts) describe."""
    from omegaconf import OmegaConf

    try:  # every spec checked before torch is imported
        specs = [spec_from_config(OmegaConf.create(setting)) for setting in settings]
    except ValueError as e:
        raise UserError(f"bad {flag}/--arch/--shortcut: {e}")
    from .spec import footprint

    table = Table(title=title)
    for col in ("model", "layers", "params", "multiply-adds"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for spec in specs:
        params, macs, _ = footprint(spec, image_size, 10 if spec.family == "cifar" else 1000)
        table.add_row(spec.name, str(spec.depth), f"{params:,}", f"{macs / 1e6:,.1f}M" if macs < 1e9 else f"{macs / 1e9:.2f}G")
    console.print(table)


@models_app.command("cifar")
@friendly_errors
def models_cifar(
    n: Annotated[str, typer.Option("--n", help="Comma-separated n (depth 6n+2).")] = "3,5,7,9,18,200",
    arch: Annotated[str, typer.Option("--arch", metavar=ARCHS_METAVAR, help="plain, resnet or plain,resnet.")] = "resnet",
    shortcut: Annotated[Shortcut, typer.Option("--shortcut", help="Option A, B or C (Sec. 3.3).")] = Shortcut.A,
):
    """CIFAR-10 nets: layers, parameters, multiply-adds per 32x32 image."""
    settings = [{"family": "cifar", "arch": a, "n": value, "shortcut": shortcut.value}
                for a in parse_archs(arch) for value in parse_ints(n, "--n")]
    _models_table("CIFAR-10 nets (Sec. 4.2)", "--n", settings, 32)


@models_app.command("imagenet")
@friendly_errors
def models_imagenet(
    depth: Annotated[str, typer.Option("--depth", help="Comma-separated, from 18, 34, 50, 101, 152.")] = "18,34,50,101,152",
    arch: Annotated[str, typer.Option("--arch", metavar=ARCHS_METAVAR, help="plain, resnet or plain,resnet.")] = "resnet",
    shortcut: Annotated[Shortcut, typer.Option("--shortcut", help="Option A, B or C (Sec. 3.3).")] = Shortcut.B,
    stride: Annotated[Stride, typer.Option("--stride", help="v1: a down-sampling bottleneck strides its first 1x1 "
                                           "(the paper's); v1.5: its 3x3 (torchvision's).")] = Stride.v1,
):
    """ImageNet nets (Table 1): layers, parameters, multiply-adds per 224x224 image."""
    settings = [{"family": "imagenet", "arch": a, "depth": d, "shortcut": shortcut.value, "stride_on": stride.value}
                for a in parse_archs(arch) for d in parse_ints(depth, "--depth")]
    _models_table("ImageNet nets (Table 1)", "--depth", settings, 224)


@app.command("eval")
@friendly_errors
def eval_(
    checkpoints: Annotated[list[Path] | None, typer.Argument(
        help="CIFAR-10 run directories (their weights.pt), or ImageNet-style run directories, their checkpoint.pt "
             "or torchvision ResNet .pth state_dicts; several ImageNet models are scored as one ensemble "
             "(averaged softmax scores, Table 5).")] = None,
    hub: Annotated[str | None, typer.Option("--hub", help="A hubconf.py model instead, e.g. cifar10_resnet20: its "
                                                          "pretrained weights on the CIFAR-10 test images.")] = None,
    protocol: Annotated[Protocol, typer.Option("--protocol", help="ImageNet: center, 10crop or multiscale.")] = Protocol.ten_crop,
    data_dir: DataDir = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    precision: Annotated[str | None, typer.Option("--precision", help="CIFAR-10: bf16, fp16, tf32 or fp32 (default: "
                                                                       "the run's own).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="ImageNet: images per batch (fewer for multiscale).")] = 100,
    workers: Annotated[int | None, typer.Option("--workers", help="ImageNet: decoding processes (default: engine.workers).")] = None,
):
    """Score saved models again: CIFAR-10 runs' weights, the hub's, or ImageNet-style checkpoints.

    A CIFAR-10 run's weights are scored on its test set beside the error the run reported (equal in the
    run's precision and on fp32 beside the error its weights scored in fp32 when collected; within 0.05
    points on other hardware or in another precision); ImageNet-style checkpoints on val/."""
    from . import weights

    paths = list(checkpoints or [])
    if not paths and not hub:
        raise UserError("give run directories or checkpoints to score, or --hub NAME")
    cifar = [p for p in paths if weights.is_cifar_run(p)]
    if cifar and len(cifar) < len(paths):
        raise UserError("score CIFAR-10 runs and ImageNet-style checkpoints in separate commands")
    if cifar or hub:
        results = [weights.rescore_hub(hub, data_dir, device)] if hub else [
            weights.rescore(p, data_dir, device, precision) for p in cifar]
        for r in results:
            _print_rescore(r)
        if not all(r["agrees"] for r in results):
            raise typer.Exit(1)
        return
    from .evaluate import ensemble_eval

    r = ensemble_eval(paths, protocol.value, data_dir, device, batch_size, workers)
    console.print(f"{' + '.join(r['members'])}: top-1 error {r['top1_error']:.2f}%, top-5 error "
                  f"{r['top5_error']:.2f}% ({r['protocol']}, {r['images']:,} val images)", highlight=False)


def _print_rescore(r: dict) -> None:
    from .weights import EQUAL_WITHIN

    if r["equal"]:
        verdict = "equal"
    elif r["agrees"]:  # the same weights in other arithmetic (another precision, CPU or GPU) move a few images
        verdict = f"not equal, within {EQUAL_WITHIN} points: other arithmetic (precision or device)"
    else:
        verdict = "DIFFERS: the weights, the data or the code changed"
    console.print(f"{r['run_id']}: test error {r['error']:.2f}% on {r['images']:,} test images in {r['precision']}; "
                  f"{r['beside']}: {verdict}", highlight=False)


# Click's UsageError (a bad option or argument), wherever this Typer takes Click from: BadParameter's base
UsageError = typer.BadParameter.__mro__[1]


def main() -> None:
    install_setup_handlers()  # a signal from here to the first training step ends the command in one line
    try:
        code = app(prog_name="resnet-repro", standalone_mode=False)
    except UsageError as e:  # one line, like every other bad input (Typer would draw a box of Click's text)
        where = e.ctx.command_path if e.ctx else "resnet-repro"
        err_console.print(f"[red]error:[/red] {e.format_message()} (see {where} --help)", highlight=False,
                          soft_wrap=True)
        sys.exit(2)
    except typer.Abort:  # end of input at a prompt of Click's own
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    sys.exit(main())
