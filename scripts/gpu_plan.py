"""The prepared plan for a lent GPU (the `device` tool: 15 minutes in all, the machine's start included; 10 per
command; 64 MiB carried per call; its files gone 30 s after a call ends). Four calls back to back, the
measurements first, each writing its results under $OUT as it goes, so a cut-off call still brings back
what it measured. The whole plan stays under 13 minutes: about 2 to start the machine, at most 3 for the
probe, well under 1 for each data call, and the training call ends 90 s before the time left runs out.

Here, once (git-ignored outputs):
    python3 scripts/gpu_plan.py prepare       # .gpu-data/: three parts of the pixel-exact CIFAR-10, COMMIT; .whl/

On the device, S being the seconds of device time left when the call is made (`status`: budget_left_s):
  1. python3 scripts/gpu_plan.py probe --left S        carry [.whl, .gpu-data/COMMIT]
     precision chosen and why; host syncs per step, solo and packed; the nvJPEG race check; images/s of a
     solo run with CUDA graphs and of packs of K = 1, 4, 8, 16, at n = 3 and n = 9 (probe.jsonl, bench.csv)
  2. python3 scripts/gpu_plan.py part 1                carry [.whl, .gpu-data/cifar10_lossless.part1-of-3.npz]
  3. python3 scripts/gpu_plan.py part 2                carry [.whl, .gpu-data/cifar10_lossless.part2-of-3.npz]
     (copy a part where the next calls find it, and exit)
  4. python3 scripts/gpu_plan.py train --left S        carry [.whl, .gpu-data/COMMIT,
                                                              .gpu-data/cifar10_lossless.part3-of-3.npz]
     rebuilds CIFAR-10 from the parts, refuses to train unless every batch file's sha256 is the committed
     scripts/cifar10_lossless.sha256, then trains the paper schedule as packs (`engine.pack`) in one process
     until the deadline; every run directory comes back, checkpoints of unfinished runs included, as
     runs.tgz.NN (at most 15 MiB each): unpack with `cat runs.tgz.* | tar xz`, resume anywhere.

`--dry-run` runs any step on this machine's CPU with everything shrunk (the tests do), to check the plan.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GPU_DATA = REPO / ".gpu-data"
PARTS_ON_DEVICE = Path(os.environ.get("GPU_PLAN_PARTS", "/root/parts"))
SHARED = REPO.parent / "shared" / "data" / "cifar10"
RETURN_S = 90  # kept at the end of the training call: stop, pack the run directories, bring them back
PROBE_S = 170  # the probe's own limit, inside its 3 minutes
# what the training call trains, in this order, each a `resnet-repro run custom` of the paper schedule: the
# runs the CPU campaign (scripts/reproduce_cpu.sh paper) comes to last among the cheap ones
TRAIN = ["model.n=3 seed=1 seeds=2", "model.n=3 model.bn_group=64"]
TRAIN_DRY = ["model.n=1 seed=1 seeds=2", "model.n=1 model.bn_group=16"]  # the same, at the smoke profile's batch


def out_dir() -> Path:
    out = os.environ.get("OUT")
    if not out:
        sys.exit("run this on the device machine, where OUT is set (or give --dry-run with OUT=DIR)")
    return Path(out)


def record(out: Path, **fields) -> None:
    """One result, appended and flushed at once: a call cut off keeps every line written before."""
    with open(out / "probe.jsonl", "a") as f:
        f.write(json.dumps(fields, default=str) + "\n")
    print(json.dumps(fields, default=str), flush=True)


def commit() -> str:
    path = GPU_DATA / "COMMIT"
    return path.read_text().strip() if path.exists() else "unknown"


# ----------------------------------------------------------------------------------------------- here


def prepare() -> None:
    GPU_DATA.mkdir(exist_ok=True)
    subprocess.run([sys.executable, str(SHARED / "split_lossless.py"), str(GPU_DATA)], check=True)
    shutil.copy(SHARED / "make_cifar10.py", GPU_DATA / "make_cifar10.py")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "--", "src",
                            "conf"], capture_output=True, text=True).stdout.strip()
    (GPU_DATA / "COMMIT").write_text(head + ("-dirty" if dirty else "") + "\n")
    # the GPU image has torch and torchvision, not Hydra: pure-Python wheels for its Python
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(REPO / ".whl"),
                    "hydra-core==1.3.2", "omegaconf==2.3.0", "antlr4-python3-runtime==4.9.3"], check=True)
    for sdist in (REPO / ".whl").glob("*.tar.gz"):
        sdist.unlink()
    print(f"prepared at {head}: " + ", ".join(sorted(p.name for p in GPU_DATA.iterdir())))


# ------------------------------------------------------------------------------------------- the probe


def probe(out: Path, left: float, dry: bool) -> None:
    import torch

    from resnet_repro.engine import choose_precision, set_tf32

    start = time.monotonic()
    budget = min(PROBE_S, left - 60) if not dry else 6

    check_s, speed_s = (1, 1) if dry else (20, 15)  # what a check or a speed needs at least, else it is skipped

    def attempt(needs: float, check: str, measure, **keys) -> None:
        """One result, measured if the budget still holds what it needs, else skipped; `at_s` says when it
        started. A failed check is a result too: say it, go on."""
        at = round(time.monotonic() - start, 2)
        if budget - at < needs:
            record(out, check=check, **keys, skipped="out of time", at_s=at)
            return
        try:
            record(out, check=check, **keys, **measure(), at_s=at)
        except Exception as e:
            record(out, check=check, **keys, failed=f"{type(e).__name__}: {e}", at_s=at)

    device = torch.device("cuda" if torch.cuda.is_available() and not dry else "cpu")
    precision, why = choose_precision("auto", device)
    set_tf32("fp32")
    record(out, check="precision", device=str(device), precision=precision, why=why, commit=commit(),
           torch=torch.__version__, cudnn_tf32_off_for_fp32=not torch.backends.cudnn.allow_tf32,
           budget_s=budget, check_needs_s=check_s, speed_needs_s=speed_s)
    attempt(check_s, "syncs per step", lambda: check_syncs(device, dry))
    attempt(check_s, "nvjpeg race", lambda: check_nvjpeg_race(device, dry))
    for n in (3, 9):
        for pack in (0, 1, 4, 8, 16):  # 0: a solo run as fit steps it (CUDA graphs on one GPU)
            attempt(speed_s, "images/s", lambda: speed(device, n, pack, out, dry), n=n, pack=pack)
    record(out, check="done", seconds=round(time.monotonic() - start, 1))


def _setup(device, n: int, dry: bool, *overrides: str):
    from resnet_repro.config import compose_experiment, expand_runs
    from resnet_repro.engine import setup_engine

    cfg = expand_runs(compose_experiment("custom", [f"model.n={n}", f"engine.device={device.type}",
                                                    *(["engine.compile=false"] if dry else []), *overrides]))[0]
    return cfg, setup_engine(cfg)


def _loader(engine, count: int, seed: int = 0):
    import torch

    from resnet_repro.cifar import TensorImageLoader

    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (count,))
    return TensorImageLoader.from_images(x, y, x.float().div(255).mean(0), 128, True, engine.device, seed)


def _stepper(cfg, engine, pack: int):
    import torch

    from resnet_repro.steppers import Packed, Solo, prepare_model

    solos = []
    for seed in range(max(1, pack)):
        torch.manual_seed(seed)
        solos.append(prepare_model(cfg, engine, 10))
    return Solo(*solos[0], engine) if pack == 0 else Packed(solos, engine)


def check_syncs(device, dry: bool) -> dict:
    import torch

    result = {}
    for pack in (0, 4):
        cfg, engine = _setup(device, 3, dry, "engine.compile=false")
        stepper = _stepper(cfg, engine, pack)
        loader = stepper.loader([_loader(engine, 2048, s) for s in range(stepper.members)])
        batches = iter(loader.epoch(0))
        for _ in range(3):
            stepper.step([0.1] * stepper.members, *next(batches))
        name = "packed" if pack else "solo"
        if device.type != "cuda":
            result[name] = "not measured on a CPU"
            continue
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(5):
                stepper.step([0.1] * stepper.members, *next(batches))
            result[name] = "no host sync in 5 steps"
        except RuntimeError as e:
            result[name] = f"SYNC: {e}"
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return result


def check_nvjpeg_race(device, dry: bool) -> dict:
    import tempfile

    import torch

    from resnet_repro import imagenet
    from resnet_repro.bench_imagenet import generate_jpegs
    from resnet_repro.imagenet_transforms import Normalize, Sizes

    if device.type != "cuda" or not imagenet.decodes_on_device("auto", device):
        return {"result": "not measured: no nvJPEG here"}
    files = imagenet.list_images(generate_jpegs(Path(tempfile.mkdtemp()), 64) / "train")
    sizes = Sizes((256, 480), 224, 256, (224,))

    def batches():
        return imagenet.FolderLoader(files, sizes, Normalize(torch.zeros(3, 1, 1), device), 16, device, 0, 0.0, 4,
                                     decode_on_device=True).epoch(0)

    reference = [x.clone() for x, _ in batches()]
    torch.cuda.synchronize()
    wrong = 0
    for _ in range(3):
        for (x, _), ref in zip(batches(), reference):
            busy = torch.randn(4096, 4096, device=device)
            for _ in range(10):  # queued work that allocates and frees blocks of the training stream
                busy = (busy @ busy).tanh_()
            del busy
            wrong += int(not torch.equal(x, ref))
    return {"result": "identical batches" if not wrong else f"RACE: {wrong} batches differ", "batches": 3 * len(reference)}


def speed(device, n: int, pack: int, out: Path, dry: bool) -> dict:
    import torch

    from resnet_repro.bench import append_rows, timed

    cfg, engine = _setup(device, n, dry, *([] if pack == 0 else ["engine.compile=false"]))
    stepper = _stepper(cfg, engine, pack)
    loader = stepper.loader([_loader(engine, 8192 if not dry else 512, s) for s in range(stepper.members)])
    batches = iter(loader.epoch(0))

    def step() -> int:
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader.epoch(1))
            x, y = next(batches)
        stepper.step([0.1] * stepper.members, x, y)
        return 128 * stepper.members

    warm, steps = (2, 3) if dry else (10 if pack else 30, 40 if pack else 200)
    started = time.monotonic()
    timed(step, warm, engine.device)
    compile_s = time.monotonic() - started
    images, seconds = timed(step, steps, engine.device)
    name = f"resnet{6 * n + 2}-A"
    label = "solo, " + engine.compilation if pack == 0 else f"{pack} packed, eager"
    append_rows(out / "bench.csv", [{
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "device": _device_name(engine.device), "torch": torch.__version__,
        "model": name, "batch": 128, "data": "synthetic batches on the device", "ours_images_per_s": round(images / seconds, 1),
        "ours_pipeline": label, "steps": steps, "git_commit": commit(), "precision": engine.precision_text,
        "pack": pack or None, "member_images_per_s": round(images / seconds / max(1, pack), 1), "bench": "gpu probe"}])
    return {"images_per_s": round(images / seconds, 1), "per_run_images_per_s": round(images / seconds / max(1, pack), 1),
            "pipeline": label, "warmup_s": round(compile_s, 1)}


def _device_name(device) -> str:
    from resnet_repro.hardware import device_name

    return device_name(device)


# -------------------------------------------------------------------------------------------- the data


def part(k: int) -> None:
    name = f"cifar10_lossless.part{k}-of-3.npz"
    PARTS_ON_DEVICE.mkdir(parents=True, exist_ok=True)
    shutil.copy(GPU_DATA / name, PARTS_ON_DEVICE / name)
    print(f"kept {PARTS_ON_DEVICE / name} ({(PARTS_ON_DEVICE / name).stat().st_size:,} bytes)")


def rebuild(data: Path) -> bool:
    """CIFAR-10 from the three parts; True only if every batch file is the committed pixel-exact build."""
    parts = [PARTS_ON_DEVICE / f"cifar10_lossless.part{k}-of-3.npz" for k in (1, 2)]
    parts.append(GPU_DATA / "cifar10_lossless.part3-of-3.npz")
    make = GPU_DATA / "make_cifar10.py" if (GPU_DATA / "make_cifar10.py").exists() else SHARED / "make_cifar10.py"
    subprocess.run([sys.executable, str(make), str(data), *(a for p in parts for a in ("--npz", str(p)))], check=True)
    expected = dict(reversed(line.split()) for line in (REPO / "scripts" / "cifar10_lossless.sha256").read_text().splitlines())
    got = {f"cifar-10-batches-py/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
           for p in (data / "cifar-10-batches-py").iterdir()}
    return all(got.get(name) == digest for name, digest in expected.items())


# ---------------------------------------------------------------------------------------- the training


def train(out: Path, left: float, dry: bool, data: Path | None) -> None:
    runs = out.parent / "gpu-runs" if not dry else out / "runs"
    started = time.monotonic()
    if data is None and not dry:
        data = Path("/root/data")
        if not rebuild(data):
            sys.exit("sha256 of the rebuilt CIFAR-10 differs from scripts/cifar10_lossless.sha256: not training")
        print("sha256: every batch file is the pixel-exact CIFAR-10", flush=True)
    deadline = started + left - RETURN_S
    env = {**os.environ, "RESNET_REPRO_GIT_COMMIT": commit(), "PYTHONUNBUFFERED": "1"}
    profile = ["profile=smoke"] if dry else ["profile=paper"]
    with open(out / "train.log", "a") as log:
        for overrides in TRAIN_DRY if dry else TRAIN:
            seconds = deadline - time.monotonic()
            if seconds < 30:
                print(f"not started, out of time: {overrides}", file=log, flush=True)
                continue
            cmd = [sys.executable, "-m", "resnet_repro", "run", "custom", *profile, *overrides.split(),
                   "engine.pack=auto" if not dry else "engine.pack=2", *(["--data-dir", str(data)] if data else []),
                   "--runs-dir", str(runs), "--results-dir", str(runs.parent / "gpu-results")]
            print("$ " + " ".join(cmd), file=log, flush=True)
            job = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
            try:
                job.wait(timeout=seconds)
            except subprocess.TimeoutExpired:  # the deadline: checkpoint at the next step, then stop
                job.send_signal(signal.SIGTERM)
                job.wait(timeout=60)
    pack_runs(runs, out)


def pack_runs(runs: Path, out: Path, chunk: int = 15 * 2**20) -> None:
    """Every run directory, checkpoints included, as runs.tgz.00, .01, ... of at most `chunk` bytes."""
    if not runs.exists():
        return
    archive = subprocess.run(["tar", "czf", "-", "--exclude=.lock", "-C", str(runs), "."], capture_output=True,
                             check=True).stdout
    for i in range(0, len(archive), chunk):
        (out / f"runs.tgz.{i // chunk:02d}").write_bytes(archive[i : i + chunk])
    print(f"{len(archive):,} bytes of run directories in {-(-len(archive) // chunk)} files", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=["prepare", "probe", "part", "train"])
    parser.add_argument("k", nargs="?", type=int, help="part: which of the three")
    parser.add_argument("--left", type=float, default=600, help="seconds of device time left when the call is made")
    parser.add_argument("--dry-run", action="store_true", help="on this CPU, everything shrunk")
    parser.add_argument("--data-dir", type=Path, help="train: a cifar-10-batches-py folder instead of the parts")
    args = parser.parse_args()
    if args.step == "prepare":
        return prepare()
    if args.step == "part":
        return part(args.k)
    out = out_dir()
    out.mkdir(parents=True, exist_ok=True)
    if args.step == "probe":
        return probe(out, args.left, args.dry_run)
    train(out, args.left, args.dry_run, args.data_dir)


if __name__ == "__main__":
    main()
