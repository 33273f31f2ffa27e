"""Where and how a run computes: the device, DDP ranks under torchrun, bf16 autocast, channels_last
and the torch.compile mode (`Engine`), and the stop flag that signals set between steps.

None of this changes what a run computes, only how fast: the recipe lives in the config.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist
from omegaconf import DictConfig

from .errors import UserError
from .hardware import cpu_bf16_native, cpu_threads


@dataclass
class Engine:
    device: torch.device
    amp: bool  # bf16 autocast
    channels_last: bool
    compile: str | None  # a torch.compile mode ("default", "reduce-overhead" = CUDA graphs), None = eager
    rank: int = 0
    world: int = 1
    cpu_group: object = None  # DDP: a gloo group for host-side agreement (stop flag) that never syncs the GPU
    amp_reason: str = ""  # why bf16 is on or off (goes into the summary and the bench output)
    compile_reason: str = ""  # why torch.compile is on or off (summary and bench output)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def precision(self) -> str:
        """What the engine trains in, and why (`train.amp: auto` decides by the hardware)."""
        return f"{'bf16' if self.amp else 'fp32'} ({self.amp_reason})"

    @property
    def compilation(self) -> str:
        """The torch.compile mode or eager, and why."""
        return f"{self.compile or 'eager'} ({self.compile_reason})" if self.compile_reason else self.compile or "eager"

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x


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


# Compiling ResNet-20 for the CPU takes 30-50 s (ResNet-110: about 100 s) once per machine (inductor
# caches it), then trains 1.29x faster in bf16 on AMX/AVX512-BF16 cores (2 threads; 1.32x at one) and
# 1.21x in fp32 capped to AVX2 (1.13x at one), measured on an idle 2-core Xeon. It pays back after
# about 1,000 iterations; below this a run stays eager.
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
    """`train.compile`: true/false, a torch.compile mode, or auto; returns (mode or None for eager, why).
    auto on CUDA: on, as CUDA graphs (reduce-overhead) where `graphs`; a small CIFAR net on one GPU is
    bound by kernel launches: ResNet-20 on an H200 trained 34.0k images/s with CUDA graphs, 11.8k with
    the default mode. auto on CPU: the default mode for runs of `CPU_COMPILE_MIN_ITERATIONS` or more
    where a C++ compiler is installed, else eager."""
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
        return ("default" if value else None), f"train.compile={str(value).lower()}"
    if value not in COMPILE_MODES:
        raise UserError(f"train.compile={value!r}: use auto, true, false or one of {', '.join(COMPILE_MODES)}")
    return value, f"train.compile={value}"


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


def eval_engine(device: str) -> Engine:
    """One process scoring saved models (`eval`, ensembles): automatic precision, channels_last, eager."""
    dev = select_device(device)
    amp, reason = choose_amp("auto", dev)
    return Engine(device=dev, amp=amp, amp_reason=reason, channels_last=True, compile=None)


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
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(t.threads))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # CPU defaults, measured for ResNet-20 at batch 128, one thread: on AMX/AVX512-BF16 cores bf16 is
    # 1.7x fp32 (738 vs 439 images/s) at the same test error (27.1% vs 27.7% after 1.5k iterations);
    # on AVX2 it is 10x slower, hence `choose_amp`. channels_last adds 10-20% to both. torch.compile: see
    # `compile_mode`. All cores are fastest on an idle machine, but 4-8x slower than one thread while
    # another process keeps a core busy: `cpu_threads`.
    amp, amp_reason = choose_amp(t.amp, device)
    mode, compile_reason = compile_mode(t.compile, device, graphs=cfg.data.family == "cifar" and world == 1,
                                        iterations=int(t.iterations))
    return Engine(
        device=device,
        amp=amp,
        amp_reason=amp_reason,
        channels_last=True if t.channels_last == "auto" else bool(t.channels_last),
        compile=mode,
        compile_reason=compile_reason,
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
