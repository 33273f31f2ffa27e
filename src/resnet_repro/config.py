"""Compose an experiment with Hydra and expand it into one config per run.

Hydra's compose API does not read sys.argv, create output folders or multirun: the CLI hands us
the overrides, our own code owns run directories, and we expand the static grid
(experiment.runs x seeds) here. Hydra's launchers are for `python -m resnet_repro.launch -m ...`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from .errors import UserError
from .schema import check_config
from .spec import NET_KEYS, ModelSpec, spec_from_config

CONFIG_ENV = "RESNET_REPRO_CONFIG_DIR"
DATA_ENV = "RESNET_REPRO_DATA"

# What a run computes: these groups and the seed (conf/config.yaml). An override of anything else (engine.*,
# the folders, which seeds or profile) changes where, how fast or how visibly a run goes, never its id.
RECIPE_GROUPS = ("model", "data", "train")
DATA_TAG_KEYS = ("data.sample", "data.encoding")  # named in the run id as the data it trained on (`run_id`)

# Settings that left the recipe groups (or the top level) for the engine or the folders: an old override
# is refused with one line that names the new one.
MOVED = {
    "device": "engine.device", "train.amp": "engine.precision", "train.channels_last": "engine.channels_last",
    "train.compile": "engine.compile", "train.threads": "engine.threads", "train.pack": "engine.pack",
    "train.log_every": "engine.log_every", "train.eval_every": "engine.eval_every",
    "train.checkpoint_every": "engine.checkpoint_every", "train.eval_batch_size": "engine.eval_batch_size",
    "train.responses": "engine.responses", "data.decode": "engine.decode", "data.workers": "engine.workers",
    "data.root": "data_dir", "data.download": "download",
}
_AMP_AS_PRECISION = {"true": "bf16", "false": "fp32", "auto": "auto"}


def data_root(configured: str | None) -> Path | None:
    """The data folder: the config (`data_dir`, `--data-dir`) first, then $RESNET_REPRO_DATA."""
    root = configured or os.environ.get(DATA_ENV)
    return Path(root).expanduser() if root else None


def make_dir(path: str | Path) -> Path:
    """`path` and its parents as folders; a path under a regular file is the user's to fix, not a traceback."""
    path = check_folder(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot make the folder {path} ({e.strerror}); give another folder")
    return path


def check_folder(path: str | Path, what: str = "folder") -> Path:
    """`path` as a folder that is there or can be made: no part of it that exists may be a file."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise UserError(f"{what} {path} cannot be a folder: {part} is a file; give another folder")
            break
    return path


def config_dir(explicit: str | Path | None = None) -> Path:
    """--config-dir, then $RESNET_REPRO_CONFIG_DIR, then the installed copy, then the source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (explicit, os.environ.get(CONFIG_ENV), here / "conf", here.parents[1] / "conf"):
        if candidate and (Path(candidate) / "config.yaml").is_file():
            return Path(candidate).resolve()
    raise UserError(f"no config.yaml found: pass --config-dir or set {CONFIG_ENV} to the project's conf/ folder")


def list_group(group: str, conf: Path | None = None) -> dict[str, str]:
    """Options of a config group with their description (or profile label)."""
    folder = config_dir(conf) / group
    out = {}
    for path in sorted(folder.glob("*.yaml")):
        cfg = OmegaConf.load(path)
        text = OmegaConf.select(cfg, "experiment.description") or OmegaConf.select(cfg, "profile.label") or ""
        out[path.stem] = text
    return out


def compose_experiment(experiment: str, overrides: list[str] = (), conf: Path | None = None) -> DictConfig:
    """conf/config.yaml with `experiment=EXPERIMENT`, its profile and the user's overrides, composed by Hydra
    (one config for the whole command; `expand_runs` makes one per run). Bad input is a one-line UserError."""
    conf = config_dir(conf)
    known = list_group("experiment", conf)
    if experiment not in known:
        raise UserError(f"unknown experiment {experiment!r}; known: {', '.join(known)} (see `resnet-repro list`)")
    for o in overrides:
        if "=" not in o or o.startswith("="):
            raise UserError(f"malformed override {o!r}: write key=value, e.g. model.shortcut=B or profile=smoke")
        refuse_moved(o)
    if GlobalHydra.instance().is_initialized():  # a previous context was left open (tests, notebooks)
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose("config", overrides=[f"experiment={experiment}", *overrides])
    except (HydraException, OmegaConfBaseException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"bad override: {first} (see `resnet-repro list` and conf/)")
    with open_dict(cfg):
        cfg.experiment.overrides = list(overrides)
    return cfg


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


_ABSENT = object()


def upgraded(cfg: DictConfig) -> DictConfig:
    """A run's saved config.yaml of an older version in today's layout: the settings that moved (MOVED) in their
    new place, so a run trained by older code can be scored and exported (its id and results are its own)."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    with open_dict(cfg):
        cfg.setdefault("engine", {})
        for old, new in MOVED.items():
            value = OmegaConf.select(cfg, old, default=_ABSENT)
            if value is _ABSENT:
                continue
            parent, _, leaf = old.rpartition(".")
            (OmegaConf.select(cfg, parent) if parent else cfg).pop(leaf)
            if old == "train.amp":
                value = _AMP_AS_PRECISION.get(str(value).lower(), "auto")
            if OmegaConf.select(cfg, new, default=None) is None:
                OmegaConf.update(cfg, new, value, force_add=True)
    return cfg


def refuse_moved(override: str) -> None:
    """A setting that moved is refused in one line that names its new place."""
    key, value = _key(override), override.split("=", 1)[1]
    if key in MOVED:
        new = MOVED[key]
        example = _AMP_AS_PRECISION.get(value.lower(), "fp32") if key == "train.amp" else value
        raise UserError(f"{key} is now {new}: write {new}={example}")


# Overrides that change how a run computes but keep the paper's recipe and schedule, named in words in
# the run id (value -> tag; "" for the default) so a control reads as what it is: resnet20-A-seed0-fp32.
NAMED_VARIANTS = {
    "engine.precision": lambda v: "" if v == "auto" else str(v),
    "model.bn_group": lambda v: "" if v is None else f"bn{v}",
}
# The tags `engine.precision` gives: they change the arithmetic, not the paper's recipe
PRECISION_TAGS = ("bf16", "fp16", "tf32", "fp32")


DECODES = ("auto", "cpu", "gpu")  # engine.decode: where ImageNet JPEGs are decoded (device_decode.decodes_on_device)


def override_role(key: str) -> str:
    """What an override key (today's name, or one that has since moved) does to a run: "named" (a named
    variant), "net" (part of the net's name), "data" (named as the data), "recipe" (changes the paper's
    recipe: a hashed variant) or "engine" (where, how fast, how visibly: nothing)."""
    key = MOVED.get(key, key)
    if key in NAMED_VARIANTS:
        return "named"
    if key in NET_KEYS:
        return "net"
    if key in DATA_TAG_KEYS:
        return "data"
    return "recipe" if key.split(".")[0] in RECIPE_GROUPS else "engine"


def _parsed(overrides: list[str]) -> list:
    """The overrides parsed, each key once with its last value, as Hydra applies them: a run's id must not
    depend on how often a key was given."""
    parsed = OverridesParser.create().parse_overrides([o.lstrip("+") for o in overrides])
    return list({o.key_or_group: o for o in parsed}.values())


def variant_of(overrides: list[str]) -> str:
    """A short stable tag for overrides that change what a run computes ("" for none): named tags for
    precision and BN grouping, then a hash of any other change to the recipe. Values are parsed first, so
    `x=true` (typed) and `x=True` (as Hydra's multirun passes it back) agree."""
    parsed = _parsed(overrides)
    named = [NAMED_VARIANTS[o.key_or_group](o.value()) for o in parsed if o.key_or_group in NAMED_VARIANTS]
    changing = sorted(f"{o.key_or_group}={json.dumps(o.value(), sort_keys=True, default=str)}"
                      for o in parsed if override_role(o.key_or_group) == "recipe")
    tags = sorted(t for t in named if t) + ([hashlib.sha1("\n".join(changing).encode()).hexdigest()[:6]] if changing else [])
    return "-".join(tags)


def keeps_schedule(overrides: list[str]) -> bool:
    """True when no override changes the recipe or schedule (named variants, the net, the data's name and
    the engine do not). Such a run on the `paper` profile is still the paper's schedule."""
    return all(override_role(o.key_or_group) != "recipe" for o in _parsed(overrides))


def recipe_overrides(overrides: list[str]) -> list[str]:
    """The overrides (as a summary lists them, old names included) that make a run a variant of the paper's
    recipe: what a table names beside the run, never a machine's folders or engine settings."""
    return [o for o in overrides if override_role(_key(o)) in ("named", "recipe")]


def run_id(spec: ModelSpec, seed: int, variant: str, data_tag: str = "") -> str:
    """`<net>-seed<k>[-<data>][-<variant>]`: `data` is `sample`, or a lossy copy's encoding (`jpeg90`)."""
    return f"{spec.name}-seed{seed}" + (f"-{data_tag}" if data_tag else "") + (f"-{variant}" if variant else "")


def resolve_sample(cfg: DictConfig) -> bool:
    """`data.sample: auto` (the smoke profile) uses the given data folder if there is one, else the
    bundled sample; full-data profiles say false and never fall back."""
    if cfg.data.sample == "auto":
        # ImageNet has no bundled sample: there it means a tiny subset of the given folder
        return data_root(cfg.data_dir) is None if cfg.data.family == "cifar" else True
    return bool(cfg.data.sample)


CIFAR_TRAIN_IMAGES = {True: 1000, False: 50_000}  # the bundled sample's, and CIFAR-10's


def expand_runs(cfg: DictConfig) -> list[DictConfig]:
    """One resolved config per (entry of experiment.runs, seed), each checked against the schema (schema.py)
    before anything is read or built; the user's model.* overrides win over the experiment's entries, and
    identical runs are kept once."""
    check_config(cfg)
    overrides = list(cfg.experiment.get("overrides", []))
    user_model = OmegaConf.from_dotlist([o.lstrip("+") for o in overrides if _key(o).startswith("model.")])
    variant, keeps = variant_of(overrides), keeps_schedule(overrides)
    runs, seen = [], set()
    for entry in cfg.experiment.runs:
        for seed in range(int(cfg.seed), int(cfg.seed) + int(cfg.seeds)):
            run = cfg.copy()
            try:
                run.model = OmegaConf.merge(cfg.model, entry, user_model.get("model", {}))
            except OmegaConfBaseException as e:
                raise UserError(f"bad model settings {dict(entry)}: {e}")
            run.seed = seed
            run.data.sample = resolve_sample(cfg)
            check_config(run)
            try:
                spec = spec_from_config(run.model)
            except ValueError as e:
                raise UserError(f"bad model settings {dict(entry)}: {e}")
            _check_run(run)
            # a run on the sample is kept apart from the same run on the full data, except in the
            # profile that exists for the sample
            on_sample = run.data.sample and cfg.profile.name != "sample"
            encoding = run.data.get("encoding", "original")
            data_tag = "sample" if on_sample else "" if run.data.sample or encoding == "original" else encoding
            with open_dict(run):
                run.run = {"id": run_id(spec, seed, variant, data_tag), "variant": variant,
                           "keeps_schedule": keeps,
                           "model_name": spec.name, "depth": spec.depth}
            if run.run.id not in seen:
                seen.add(run.run.id)
                runs.append(run)
    return runs


def _check_run(run: DictConfig) -> None:
    """What a run's settings must agree on beyond each one's own rule (schema.py)."""
    group = run.model.get("bn_group")
    if group is not None and int(run.train.batch_size) % group:
        raise UserError(f"model.bn_group={group} must divide train.batch_size={run.train.batch_size} "
                        f"(e.g. 64 for the paper's two GPUs of 64)")
    if run.data.family == "cifar":
        images = CIFAR_TRAIN_IMAGES[bool(run.data.sample)]
        held_out = run.data.validation_size or 0
        if held_out >= images:
            raise UserError(f"data.validation_size={held_out}: hold out fewer than the {images:,} "
                            f"training images, e.g. data.validation_size=5000 (the paper's 45k/5k split)")
        check_batch_fits(run.train.batch_size, images - held_out, held_out)  # a folder of another size: once read


def check_batch_fits(batch_size: int, images: int, held_out: int) -> None:
    """A training batch no larger than the `images` left for training once `held_out` went to validation."""
    if batch_size > images:
        left = f" left after data.validation_size={held_out}" if held_out else ""
        raise UserError(f"train.batch_size={batch_size} is more than the {images:,} training images{left}: "
                        f"use at most {images}")


def sweep_entries(archs: list[str], ns: list[int]) -> list[dict]:
    return [{"arch": arch, "n": n} for arch in archs for n in ns]


def runs_root(cfg: DictConfig) -> Path:
    return runs_root_for(cfg.results_dir, cfg.runs_dir)


def runs_root_for(results_dir: str | Path, runs_dir: str | Path | None = None) -> Path:
    """Where run directories live: `runs_dir` if given, else `experiments/` beside the results folder."""
    if runs_dir:
        return Path(runs_dir)
    return Path(results_dir).resolve().parent / "experiments"


def run_command(experiment: str, profile: str | None = None) -> str:
    """The command that makes an experiment's runs (the `paper` profile is the default one)."""
    return _with_profile(f"resnet-repro run {experiment}", profile)


def net_command(model: str, profile: str | None = None) -> str:
    """The command that trains one CIFAR-10 net: its own experiment where it has one (ResNet-1202),
    else the depth sweep, e.g. `resnet-repro sweep cifar --n 9 --arch plain`."""
    spec = ModelSpec.parse(model, "cifar")
    if spec.depth == 1202:
        return run_command("resnet1202", profile)
    return _with_profile(f"resnet-repro sweep cifar --n {spec.n} --arch {spec.arch}", profile)


def _with_profile(command: str, profile: str | None) -> str:
    return command if profile in (None, "paper") else f"{command} profile={profile}"
