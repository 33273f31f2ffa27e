"""Every setting's type and allowed values, declared once, and checked on the composed config of every run
before data is read or a net is built (config.expand_runs calls `check_config`).

A value outside its rule is one line: the key, the value given, what is allowed and an example. Keys
Hydra does not know fail at composition already ("bad override"); keys known to Hydra but not declared
here are refused too, so a new setting cannot slip in unchecked.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from omegaconf import DictConfig, ListConfig, OmegaConf

from .errors import UserError
from .spec import ARCHS, IMAGENET_LAYERS, STRIDES

AUTO = "auto"


@dataclass(frozen=True)
class Rule:
    """What one setting may be: `ok(value)` says whether a value is allowed, `allowed` says it in words."""

    ok: Callable[[object], bool]
    allowed: str
    example: str


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def whole(low: int = 0, example: int | None = None, auto: bool = False, null: bool = False,
          high: int | None = None, why: str = "") -> Rule:
    """A whole number >= low (and <= high: `why` says why), or auto, or null."""
    extra = "".join([", or auto" if auto else "", ", or null" if null else ""])
    span = f"from {low} to {high} ({why})" if high is not None else f">= {low}"
    return Rule(lambda v: (_is_int(v) and v >= low and (high is None or v <= high)) or (auto and v == AUTO)
                or (null and v is None), f"a whole number {span}{extra}", str(low if example is None else example))


def number(low: float | None = None, high: float | None = None, above: float | None = None,
           below: float | None = None, example: float = 0.1) -> Rule:
    """A number within the bounds (`low`/`high` inclusive, `above`/`below` exclusive)."""
    bounds = [f">= {low:g}" if low is not None else "", f"> {above:g}" if above is not None else "",
              f"<= {high:g}" if high is not None else "", f"< {below:g}" if below is not None else ""]
    return Rule(lambda v: _is_number(v) and (low is None or v >= low) and (high is None or v <= high)
                and (above is None or v > above) and (below is None or v < below),
                "a number " + " and ".join(b for b in bounds if b), f"{example:g}")


def choice(*options, example=None) -> Rule:
    words = ", ".join("null" if o is None else str(o).lower() if isinstance(o, bool) else str(o) for o in options)
    return Rule(lambda v: any(v == o and type(v) is type(o) for o in options), f"one of {words}",
                str(options[0] if example is None else example))


def text(pattern: str = r".+", allowed: str = "a name", example: str = "x", null: bool = False) -> Rule:
    return Rule(lambda v: (isinstance(v, str) and re.fullmatch(pattern, v) is not None) or (null and v is None),
                allowed + (", or null" if null else ""), example)


def whole_list(low: int = 1, size: int | None = None, increasing: bool = False, example: str = "[1]") -> Rule:
    """A list of whole numbers >= low (of `size` items; strictly increasing)."""
    def ok(v) -> bool:
        items = list(v) if isinstance(v, (list, tuple, ListConfig)) else None
        return (items is not None and all(_is_int(i) and i >= low for i in items)
                and (size is None or len(items) == size)
                and (not increasing or all(a < b for a, b in zip(items, items[1:]))))
    shape = f"{size} " if size else ""
    return Rule(ok, f"a list of {shape}whole numbers >= {low}" + (", increasing" if increasing else ""), example)


def choices(*options, example: str) -> Rule:
    return Rule(lambda v: isinstance(v, (list, tuple, ListConfig)) and all(i in options for i in v),
                f"a list from {', '.join(options)}", example)


BOOL = choice(True, False)
AUTO_BOOL = choice(AUTO, True, False)
PATH = text(allowed="a folder", example="~/data", null=True)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

SCHEMA: dict[str, Rule] = {
    # which runs, and where
    "seed": whole(0), "seeds": whole(1, example=5, high=1000, why="each seed is a whole run"),
    "data_dir": PATH, "download": BOOL, "results_dir": text(allowed="a folder", example="results"),
    "runs_dir": PATH, "run_index": whole(0, null=True),
    # the net (conf/model)
    "model.family": choice("cifar", "imagenet"), "model.arch": choice(*ARCHS, example="resnet"),
    "model.n": whole(1, example=3), "model.depth": choice(*sorted(IMAGENET_LAYERS), example=50),
    "model.shortcut": choice("A", "B", "C"), "model.stride_on": choice(*STRIDES),
    "model.bn_group": whole(2, example=64, null=True),
    # the data (conf/data)
    "data.family": choice("cifar", "imagenet"), "data.name": text(r"[a-z0-9]+", "a lowercase name", "cifar10"),
    "data.subset": text(r"[a-z0-9_]+", "a lowercase name", "64px_proxy", null=True),
    "data.sample": AUTO_BOOL, "data.validation_size": whole(0, example=5000), "data.pad": whole(0, example=4, high=16, why="the paper pads 4; the padded set stays in memory"),
    "data.encoding": text(r"original|jpeg\d{1,3}", "original, or jpegQ for a JPEG copy of quality Q", "jpeg90"),
    "data.test_subset": whole(1, example=500, null=True),
    "data.train_dir": text(allowed="a folder name", example="train"),
    "data.val_dir": text(allowed="a folder name", example="val"),
    "data.scale_range": whole_list(1, 2, example="[256,480]"), "data.crop": whole(1, example=224),
    "data.mean": choice("pixel", "channel"), "data.mean_images": whole(1, example=10000),
    "data.lighting_std": number(low=0, example=0.1),
    "data.eval_protocol": choice("center", "10crop", "multiscale"),
    "data.final_protocols": choices("center", "10crop", "multiscale", example="[10crop,multiscale]"),
    "data.test_resize": whole(1, example=256), "data.multiscale": whole_list(1, example="[224,256,384,480,640]"),
    "data.multiscale_flips": BOOL, "data.bn_recalibrate_images": whole(0, example=10000),
    "data.tiny.scale_range": whole_list(1, 2, example="[40,48]"), "data.tiny.crop": whole(1, example=32),
    "data.tiny.test_resize": whole(1, example=36), "data.tiny.multiscale": whole_list(1, example="[32,48]"),
    "data.tiny.max_classes": whole(1, example=10), "data.tiny.train_per_class": whole(1, example=8),
    "data.tiny.val_per_class": whole(1, example=2), "data.tiny.mean_images": whole(1, example=64),
    "data.tiny.workers": whole(0),
    # the optimizer and schedule (conf/train)
    "train.iterations": whole(1, example=64000), "train.lr": number(above=0, example=0.1),
    "train.milestones": whole_list(1, increasing=True, example="[32000,48000]"),
    "train.momentum": number(low=0, below=1, example=0.9), "train.weight_decay": number(low=0, example=0.0001),
    "train.batch_size": whole(1, example=128), "train.schedule": choice("step", "plateau"),
    "train.plateau.patience": whole(1, example=5), "train.plateau.threshold": number(low=0, example=0.1),
    "train.plateau.max_drops": whole(0, example=3),
    "train.warmup.min_depth": whole(1, example=110, null=True), "train.warmup.lr": number(above=0, example=0.01),
    "train.warmup.until_train_error": number(above=0, high=100, example=80),
    "train.warmup.window": whole(10, example=100), "train.warmup.min_iterations": whole(0, example=200),
    # how it runs (conf/engine)
    "engine.device": text(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N", "cpu"),
    "engine.precision": choice(AUTO, "bf16", "fp16", "tf32", "fp32", example="fp32"),
    "engine.channels_last": AUTO_BOOL, "engine.compile": choice(AUTO, True, False, *COMPILE_MODES, example="false"),
    "engine.threads": whole(1, example=1, auto=True), "engine.pack": whole(1, example=4, auto=True),
    "engine.log_every": whole(1, example=100), "engine.eval_every": whole(1, example=2000),
    "engine.checkpoint_every": whole(1, example=1000), "engine.eval_batch_size": whole(1, example=1000),
    "engine.responses": BOOL, "engine.decode": choice(AUTO, "cpu", "gpu", example="cpu"),
    "engine.workers": whole(0, example=8),
}
# what the experiment and profile files say of themselves, and the run's own names: written by us, not set
UNCHECKED = ("experiment", "profile", "run", "hydra")


def leaves(cfg: DictConfig, prefix: str = ""):
    """(dotted key, value) of every setting, lists as values."""
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            yield from leaves(value, f"{name}.")
        else:
            yield name, value


def check_config(cfg: DictConfig) -> None:
    """Each setting within its rule, and the settings that constrain each other consistent."""
    for key, value in leaves(cfg):
        if key.split(".")[0] in UNCHECKED:
            continue
        rule = SCHEMA.get(key)
        if rule is None:
            raise UserError(f"{key} is not a setting this version knows (see conf/ and `resnet-repro list`)")
        if isinstance(value, ListConfig):
            value = OmegaConf.to_container(value)
        if not rule.ok(value):
            raise UserError(f"{key}={_show(value)}: use {rule.allowed}, e.g. {key}={rule.example}")
    _check_together(cfg)


def _check_together(cfg: DictConfig) -> None:
    t, d = cfg.train, cfg.data
    if cfg.model.family != d.family:
        hint = ("profile=proxy and data=imagenette are for the ImageNet experiments (table2, table3, table4, fig4)"
                if d.family == "imagenet" else "choose an experiment of that family (resnet-repro list)")
        raise UserError(f"model.family={cfg.model.family} with data.family={d.family}: a net and its data go "
                        f"together; {hint}")
    if t.get("schedule", "step") == "plateau" and "plateau" not in t:
        raise UserError("train.schedule=plateau: this recipe has no train.plateau settings (the ImageNet recipe's "
                        "LR drop on a plateau, Sec. 3.4); the CIFAR-10 recipe divides the LR at train.milestones")
    if t.get("schedule", "step") == "step" and any(m >= t.iterations for m in t.milestones):
        raise UserError(f"train.milestones={_show(list(t.milestones))}: each must be below train.iterations="
                        f"{t.iterations} (the LR is divided at each), e.g. train.milestones=[{t.iterations // 2}]")
    if d.family == "imagenet":
        for sizes in (d, d.tiny):
            low, high = sizes.scale_range
            if low > high or sizes.crop > low or sizes.test_resize < sizes.crop:
                where = "data.tiny" if sizes is d.tiny else "data"
                raise UserError(f"{where}.scale_range={_show(list(sizes.scale_range))}, {where}.crop={sizes.crop}, "
                                f"{where}.test_resize={sizes.test_resize}: the crop must fit the smallest scale and "
                                f"the test resize, e.g. scale_range=[256,480] crop=224 test_resize=256")


def _show(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)
