"""What the machine is: the CPU's model and whether it runs bf16 natively, the device's name.

Every CPU figure depends on the bf16 question: where bf16 is only emulated (AVX2 CPUs), bf16
autocast trains far slower than fp32 (README, "Speed"), so `engine.precision: auto` asks here.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from .errors import UserError


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features() -> dict:
    """What torch and oneDNN report about this CPU (one function, so tests can stand in another CPU)."""
    return {"capability": torch.backends.cpu.get_cpu_capability(), "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
            "amx": torch.cpu._is_amx_tile_supported(), "onednn_bf16": torch.ops.mkldnn._is_mkldnn_bf16_supported()}


def cpu_bf16_native() -> tuple[bool, str]:
    """Whether this CPU runs bf16 convolutions natively, and the evidence. AVX512-BF16 or AMX only
    count where ATen dispatches AVX-512 kernels and oneDNN has its bf16 path: on an AVX2-only CPU (or
    one capped by ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA) bf16 is emulated, and ResNet-20 trained
    many times slower than in fp32 (README, "Speed")."""
    f = cpu_features()
    capability, avx512_bf16, amx, onednn = f["capability"], f["avx512_bf16"], f["amx"], f["onednn_bf16"]
    native = bool((avx512_bf16 or amx) and capability.startswith("AVX512") and onednn)
    found = ", ".join(name for name, on in (("AVX512-BF16", avx512_bf16), ("AMX", amx)) if on)
    return native, f"{capability} dispatch, {found or 'no AVX512-BF16/AMX'}, oneDNN bf16 {'yes' if onednn else 'no'}"


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model, cores, threads, ATen dispatch level and bf16 support."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    native, _ = cpu_bf16_native()
    caps = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if os.environ.get(k)]
    capped = f" (capped by {' '.join(caps)})" if caps else ""  # an emulated smaller CPU says so
    return (f"cpu ({cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
            f"{cpu_features()['capability']}{capped}, {'native bf16' if native else 'no native bf16'})")


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_times(stat: Path = Path("/proc/stat")) -> tuple[int, int]:
    """(busy, total) CPU time over all cores since boot, in clock ticks (Linux)."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, stat.read_text().split()[1:9])
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return total - idle - iowait, total


def busy_cores(sample_s: float = 0.2) -> int:
    """How many cores other processes keep busy now: /proc/stat over `sample_s` seconds on Linux, else the
    1-minute load average, which still counts a job that ended a minute ago."""
    try:
        busy0, total0 = cpu_times()
        time.sleep(sample_s)
        busy1, total1 = cpu_times()
        return round((busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1))
    except (OSError, ValueError):
        try:
            return round(os.getloadavg()[0])
        except OSError:  # not on this platform
            return 0


def cpu_threads(setting) -> int:
    """`engine.threads`: a number, or auto = the cores this process may use that other processes are not
    keeping busy, at least one. OpenMP threads wait on each other: on 2 cores with another job running,
    2 threads train several times slower than 1, while on an idle machine 2 are faster than 1 (README)."""
    cores = usable_cores()
    if setting != "auto":
        if int(setting) > cores:  # more OpenMP threads than cores wait on each other: slower, never faster
            raise UserError(f"engine.threads={setting}: this process may use {cores} cores here; use at most "
                            f"{cores}, or engine.threads=auto")
        return int(setting)
    return max(1, cores - busy_cores())


def free_memory(device: torch.device) -> tuple[int, str]:
    """Bytes a run can still allocate on `device`, and what they are: a GPU's free memory, or the memory
    Linux says it can give without swapping (MemAvailable), else the machine's whole memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"{torch.cuda.get_device_name(device)} has {free / 2**30:.1f} GiB free"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
                return free, f"this machine has {free / 2**30:.1f} GiB available"
    except (OSError, ValueError, IndexError):
        pass
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total, f"this machine has {total / 2**30:.1f} GiB"
