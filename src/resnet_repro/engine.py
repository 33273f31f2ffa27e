"""Where and how a run computes (`engine.*` in the config): the device, DDP ranks under torchrun, the
precision (bf16 or fp16 autocast, TF32, fp32), channels_last and the torch.compile mode (`Engine`),
whether a net fits the device's memory, and DDP's agreement on a stop (signals.py sets the flag).

None of this changes what a run computes, only how fast: the recipe lives in the model, data and train
groups. Precision is the one exception that is named in the run id when it is not auto.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import torch
import torch.distributed as dist
from omegaconf import DictConfig

from .errors import UserError
from .hardware import cpu_bf16_native, cpu_threads, free_memory
from .signals import StopFlag
from .spec import footprint, spec_from_config


PRECISIONS = ("auto", "bf16", "fp16", "tf32", "fp32")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Engine:
    device: torch.device
    precision: str  # bf16 | fp16 (autocast; fp16 with a gradient scaler) | tf32 | fp32
    channels_last: bool
    compile: str | None  # a torch.compile mode ("default", "reduce-overhead" = CUDA graphs), None = eager
    rank: int = 0
    world: int = 1
    cpu_group: object = None  # DDP: a gloo group for host-side agreement (stop flag) that never syncs the GPU
    precision_reason: str = ""  # why this precision (goes into the summary and the bench output)
    compile_reason: str = ""  # why torch.compile is on or off (summary and bench output)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def amp(self) -> bool:
        """Autocast on: the convolutions run in bf16 or fp16."""
        return self.precision in _AUTOCAST

    @property
    def precision_text(self) -> str:
        """What the engine trains in, and why (`engine.precision: auto` decides by the hardware)."""
        return f"{self.precision} ({self.precision_reason})"

    @property
    def compilation(self) -> str:
        """The torch.compile mode or eager, and why."""
        return f"{self.compile or 'eager'} ({self.compile_reason})" if self.compile_reason else self.compile or "eager"

    def autocast(self):
        return torch.autocast(self.device.type, dtype=_AUTOCAST.get(self.precision, torch.bfloat16), enabled=self.amp)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 needs its loss scaled so small gradients do not underflow; bf16 and fp32 do not."""
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x


def choose_precision(value, device: torch.device) -> tuple[str, str]:
    """`engine.precision` for `device`: (bf16 | fp16 | tf32 | fp32, why). auto = bf16 autocast where the
    device runs it natively, fp16 autocast (with a gradient scaler) on a GPU that has fast fp16 but no bf16
    (Volta, Turing: a V100, a T4), fp32 everywhere else."""
    if value not in PRECISIONS:
        raise UserError(f"engine.precision={value!r}: choose one of {', '.join(PRECISIONS)}")
    if value == "tf32" and not (device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)):
        raise UserError("engine.precision=tf32 needs a CUDA GPU of compute capability 8.0 or more (Ampere and "
                        "later); use fp32 here")
    if value != "auto":
        return value, f"engine.precision={value}"
    if device.type == "cuda":
        name, capability = torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)
        cc = f"compute capability {capability[0]}.{capability[1]}"
        # is_bf16_supported() alone also says yes where bf16 is only emulated (a V100, a T4), and slow
        if capability >= (8, 0) and torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", f"auto: bf16, native on {name} ({cc})"
        if capability >= (7, 0):
            return "fp16", f"auto: fp16 with a gradient scaler, {name} ({cc}) has no native bf16"
        return "fp32", f"auto: fp32, {name} ({cc}) has neither native bf16 nor fast fp16"
    if device.type == "cpu":
        native, evidence = cpu_bf16_native()
        return ("bf16" if native else "fp32"), f"auto: {'bf16, native' if native else 'fp32, bf16 not native'} (CPU {evidence})"
    return "fp32", f"auto: fp32 on {device.type}"


def set_tf32(precision: str) -> None:
    """fp32 means fp32: cuDNN's convolutions otherwise run in TF32 on Ampere and later by default."""
    torch.backends.cudnn.allow_tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


# Compiling for the CPU takes tens of seconds per net once per machine (inductor caches it), then trains
# faster in bf16 and fp32 alike (README, "Speed"); a run this short would not repay the compile.
CPU_COMPILE_MIN_ITERATIONS = 2000
CPU_COMPILERS = ("g++", "clang++", "c++")  # inductor writes C++ kernels for the CPU


def cpu_compiler() -> str | None:
    """The C++ compiler inductor would use ($CXX first), or None."""
    for name in (os.environ.get("CXX"), *CPU_COMPILERS):
        if name and shutil.which(name):
            return name
    return None


def compile_mode(value, device: torch.device, graphs: bool = False,
                 iterations: int | None = None) -> tuple[str | None, str]:
    """`engine.compile`: true/false, a torch.compile mode, or auto; returns (mode or None for eager, why).
    auto on CUDA: on, as CUDA graphs (reduce-overhead) where `graphs`: a small CIFAR net on one GPU is
    bound by kernel launches, which graphs remove. auto on CPU: the default mode for runs of
    `CPU_COMPILE_MIN_ITERATIONS` or more where a C++ compiler is installed, else eager."""
    if value == "auto":
        if device.type == "cuda":
            mode = "reduce-overhead" if graphs else "default"
            return mode, f"auto: {mode} on CUDA"
        if device.type != "cpu":
            return None, f"auto: eager on {device.type}"
        if iterations is not None and iterations < CPU_COMPILE_MIN_ITERATIONS:
            return None, f"auto: eager, {iterations:,} iterations < {CPU_COMPILE_MIN_ITERATIONS:,} do not repay compiling"
        compiler = cpu_compiler()
        if compiler is None:
            return None, f"auto: eager, no C++ compiler ({', '.join(CPU_COMPILERS)} or $CXX) for torch.compile"
        return "default", f"auto: default on CPU with {compiler}"
    if isinstance(value, bool):
        return ("default" if value else None), f"engine.compile={str(value).lower()}"
    if value not in COMPILE_MODES:
        raise UserError(f"engine.compile={value!r}: use auto, true, false or one of {', '.join(COMPILE_MODES)}")
    return value, f"engine.compile={value}"


# Bytes a training step holds per conv-output element of the batch: the conv outputs, BN outputs and
# ReLU masks kept for the backward pass (fewer in bf16/fp16 autocast), calibrated on CPU steps of
# CIFAR ResNets; and per parameter: the weights, their gradients, the momentum and a copy in flight.
BYTES_PER_ACTIVATION = {"bf16": 8, "fp16": 8, "tf32": 13, "fp32": 13}
BYTES_PER_PARAMETER = 16
PROCESS_BYTES = 300 * 2**20  # torch itself and the data, besides the net


def training_memory(cfg: DictConfig, engine: Engine, image_size: int, num_classes: int) -> tuple[int, str]:
    """Estimated bytes one process needs to train the run `cfg` on `engine`, from the net's shape (no net
    is built), and the estimate in words."""
    fp = footprint(spec_from_config(cfg.model), image_size, num_classes)
    batch = -(-int(cfg.train.batch_size) // engine.world)  # each process holds its share of the batch
    need = (fp.activations * batch * BYTES_PER_ACTIVATION[engine.precision] + fp.params * BYTES_PER_PARAMETER
            + PROCESS_BYTES)
    return int(need), (f"about {need / 2**30:.1f} GiB ({fp.params:,} parameters, {fp.activations * batch / 1e9:.2f}G "
                       f"activations at batch {batch} in {engine.precision})")


def check_memory(cfg: DictConfig, engine: Engine, image_size: int, num_classes: int) -> None:
    """Refuse, before anything is built, a run that cannot fit the device's free memory."""
    need, what = training_memory(cfg, engine, image_size, num_classes)
    free, where = free_memory(engine.device)
    if need > free:
        raise UserError(f"{cfg.run.id} needs {what} to train, but {where}: use a smaller model or a smaller "
                        f"train.batch_size, or a device with more memory")


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
        raise UserError(f"engine.device={name} but no CUDA GPU is visible; use engine.device=cpu or engine.device=auto")
    return device


def eval_engine(device: str, precision: str = "auto") -> Engine:
    """One process scoring saved models (`eval`, ensembles): the given precision, channels_last, eager."""
    dev = select_device(device)
    precision, reason = choose_precision(precision, dev)
    set_tf32(precision)
    return Engine(device=dev, precision=precision, precision_reason=reason, channels_last=True, compile=None)


def setup_engine(cfg: DictConfig) -> Engine:
    """The engine of a run's config (`engine.*`): device, ranks, threads, precision, memory format, compile."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    e = cfg.engine
    device = select_device(e.device)
    cpu_group = None
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        cpu_group = dist.new_group(backend="gloo") if device.type == "cuda" else dist.group.WORLD
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(e.threads))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # The defaults' measured effects (bf16 against fp32 per CPU, channels_last, compile, threads on a
    # shared machine) are in the README and results/bench.csv.
    precision, precision_reason = choose_precision(e.precision, device)
    set_tf32(precision)
    mode, compile_reason = compile_mode(e.compile, device, graphs=cfg.data.family == "cifar" and world == 1,
                                        iterations=int(cfg.train.iterations))
    return Engine(
        device=device,
        precision=precision,
        precision_reason=precision_reason,
        channels_last=True if e.channels_last == "auto" else bool(e.channels_last),
        compile=mode,
        compile_reason=compile_reason,
        rank=rank,
        world=world,
        cpu_group=cpu_group,
    )


STOP_POLL = 10  # DDP: ranks agree on a stop request every this many steps (a tiny CPU all-reduce)


def stop_agreed(stop: StopFlag, engine: Engine, iteration: int) -> bool:
    """A signal reaches each rank at a slightly different step; all must stop at the same one."""
    if engine.world == 1:
        return stop.requested
    if iteration % STOP_POLL:
        return False
    flag = torch.tensor([float(stop.requested)])
    dist.all_reduce(flag, group=engine.cpu_group)
    stop.requested = flag.item() > 0
    return stop.requested
