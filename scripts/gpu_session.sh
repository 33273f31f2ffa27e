#!/usr/bin/env bash
# A lent GPU session (the `device` tool: 15 device-minutes, 10 per command, 64 MiB carried per call, files
# kept only while the machine stays warm), in three calls back to back, the most valuable work last-proof:
# each call ends with its results under $OUT.
#
# Here, once:  bash scripts/gpu_session.sh prepare
#   splits the pixel-exact CIFAR-10 into three ~37 MB parts in .gpu-data/ (git-ignored), copies
#   make_cifar10.py beside them, writes the sha256 of a build made here, and downloads the wheels the
#   GPU image lacks (hydra-core, omegaconf, antlr4) into .whl/.
# Then, on the device (command, carry):
#   1. bash scripts/gpu_session.sh 1   carry [.whl, .gpu-data/cifar10_lossless.part1-of-3.npz]
#      keeps part 1; `bench imagenet`: nvJPEG pipeline, CPU workers and ResNet-50's step (about 2 min)
#   2. bash scripts/gpu_session.sh 2   carry [.whl, .gpu-data/cifar10_lossless.part2-of-3.npz]
#      keeps part 2; `bench --pack 8` and `bench` on the bundled sample (about 1 min)
#   3. bash scripts/gpu_session.sh 3   carry [.whl, .gpu-data/cifar10_lossless.part3-of-3.npz,
#                                            .gpu-data/make_cifar10.py, .gpu-data/SHA256SUMS]
#      rebuilds CIFAR-10 from the three parts, checks its sha256 against the build made here (no
#      training on a mismatch), then trains ResNet-20 at the paper schedule, seeds 0-2 plus the fp32 and
#      BN-over-64 controls, side by side until DEADLINE seconds (default 420); run directories come
#      back as $OUT/runs.tgz (no checkpoints): unpack into experiments/ only the finished ones.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: gpu_session.sh prepare|1|2|3}
PARTS=${PARTS:-/root/parts}
DATA=${DATA:-/root/data}
RUNS=${RUNS:-/root/runs}

if [[ $stage == prepare ]]; then
  shared=${SHARED:-../shared/data/cifar10}
  mkdir -p .gpu-data
  grep -qx '/.gpu-data/' .git/info/exclude 2>/dev/null || echo '/.gpu-data/' >> .git/info/exclude
  python3 "$shared/split_lossless.py" .gpu-data
  cp "$shared/make_cifar10.py" .gpu-data/
  python3 "$shared/make_cifar10.py" .gpu-data/build
  (cd .gpu-data/build/cifar-10-batches-py && sha256sum -- *) > .gpu-data/SHA256SUMS
  rm -rf .gpu-data/build
  # pure-Python packages: wheels for any Python (antlr4 4.9.3 ships only as source, so build its wheel here)
  python3 -m pip wheel -q --no-deps -w .whl hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3
  rm -f .whl/*.tar.gz
  ls -la .gpu-data .whl
  exit 0
fi

# On the device: the image has torch, torchvision, typer, rich, pandas, matplotlib; not Hydra.
OUT=${OUT:?run this on the device machine, where OUT is set}
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src RESNET_REPRO_GIT_COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
mkdir -p "$PARTS"
cp .gpu-data/cifar10_lossless.part"$stage"-of-3.npz "$PARTS"/
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>&1 | tee "$OUT/gpu.txt" || true
RR="python3 -m resnet_repro"

case $stage in
  1) timeout 240 $RR bench imagenet --images 2000 --results-dir "$OUT" 2>&1 | tee "$OUT/bench_imagenet.log" ;;
  2) timeout 120 $RR bench --pack 8 --results-dir "$OUT" 2>&1 | tee "$OUT/bench_pack.log"
     timeout 90 $RR bench --results-dir "$OUT" 2>&1 | tee -a "$OUT/bench_pack.log" ;;
  3)
    ls "$PARTS"
    python3 .gpu-data/make_cifar10.py "$DATA" --npz "$PARTS"/cifar10_lossless.part1-of-3.npz \
      --npz "$PARTS"/cifar10_lossless.part2-of-3.npz --npz "$PARTS"/cifar10_lossless.part3-of-3.npz
    (cd "$DATA/cifar-10-batches-py" && sha256sum -- *) | tee "$OUT/SHA256SUMS.device"
    if ! diff <(sort .gpu-data/SHA256SUMS) <(sort "$OUT/SHA256SUMS.device"); then
      echo "sha256 of the rebuilt CIFAR-10 differs from the build made here: not training" >&2
      exit 3
    fi
    echo "sha256: all batch files match the build made here"
    deadline=${DEADLINE:-420}
    mkdir -p "$RUNS/logs"
    # a run directory of its own (runs_dir), so nothing committed in experiments/ is resumed or overwritten;
    # the fp32 control takes seed 1, beside bf16 seed 1 (seed 0 fp32 is the CPU run)
    common=(--n 3 --data-dir "$DATA" --log-dir "$RUNS/logs")  # at most 8 files come back
    python3 scripts/reproduce_gpu.py --deadline "$deadline" "${common[@]}" --seeds 0,1,2 runs_dir="$RUNS" \
      > "$OUT/seeds.log" 2>&1 &
    python3 scripts/reproduce_gpu.py --deadline "$deadline" "${common[@]}" --seeds 1 runs_dir="$RUNS" \
      engine.precision=fp32 > "$OUT/fp32.log" 2>&1 &
    python3 scripts/reproduce_gpu.py --deadline "$deadline" "${common[@]}" --seeds 0 runs_dir="$RUNS" \
      model.bn_group=64 > "$OUT/bn64.log" 2>&1 &
    wait
    tar czf "$OUT/runs.tgz" --exclude=checkpoint.pt --exclude='.checkpoint.pt.*' --exclude=.lock -C "$RUNS" .
    tail -n 3 "$OUT"/{seeds,fp32,bn64}.log
    ;;
  *) echo "unknown stage $stage: prepare, 1, 2 or 3" >&2; exit 2 ;;
esac
