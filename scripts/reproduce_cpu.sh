#!/usr/bin/env bash
# The reproductions trained on a CPU, in two parts.
#
# `paper`: the paper-schedule CIFAR-10 runs of Table 6 and Fig. 6 on the original pixels, trained on
# whatever CPU cores are idle (issue 27). Every run is `resnet-repro run custom profile=paper ...`, so it resumes from
# its checkpoint (every 1,000 iterations) wherever it stopped, and two workers share the queue through
# the runs' locks. The code is a frozen clone, so editing this checkout never changes a run mid-way.
#
#   bash scripts/reproduce_cpu.sh paper start     # freeze the code (once), build the data (once), start workers
#   bash scripts/reproduce_cpu.sh paper status    # done, running, left, with times
#   bash scripts/reproduce_cpu.sh paper stop      # workers checkpoint and exit (SIGTERM); `start` resumes
#   bash scripts/reproduce_cpu.sh paper collect   # finished runs, with their weights, into experiments/paper/
#   bash scripts/reproduce_cpu.sh paper save      # the runs not collected yet, checkpoints included, into campaign/
#
# A session's machine is not always the next one's, so what must outlive it is committed: STATE (default
# campaign/ in this checkout) holds the frozen commit (code.commit) and, after `save`, every run that
# experiments/<profile>/ lacks, with its checkpoint (<profile>-uncollected.tar). `start` on a new machine
# clones that commit, takes the runs collected into experiments/<profile>/ as finished, and unpacks the rest.
#
# CAMPAIGN (default ~/campaign) holds code/, data/, runs/, results/ and logs/. WORKERS (default: every core)
# is how many runs train at once, one thread each, at nice 19: the campaign uses idle time and yields.
# To try the machinery in seconds (the tests do): PROFILE=smoke DATA=DIR (a folder holding
# cifar-10-batches-py/, used as it is) RUNS=K (the first K runs of the queue). The paper profile always
# trains on the pixel-exact copy built from LOSSLESS.
#
# `budget` (the default): the shortened CIFAR-10 schedule and the ImageNet proxy committed in results/
# (issue 7), two queues side by side, one thread each. Re-running continues where it stopped.
#
#   CIFAR=DIR (holds cifar-10-batches-py/)  PROXY=DIR (holds imagenette_64px/)  bash scripts/reproduce_cpu.sh
set -euo pipefail
repo="${REPO:-$(cd "$(dirname "$0")/.." && pwd)}"
campaign="${CAMPAIGN:-$HOME/campaign}"
lossless="${LOSSLESS:-$repo/../shared/data/cifar10/cifar10_lossless.npz}"
python="${PYTHON:-$repo/.venv/bin/python}"
profile="${PROFILE:-paper}"
data_dir="${DATA:-$campaign/data}"
state="${STATE:-$repo/campaign}"
saved="$state/$profile-uncollected.tar"
runs="$campaign/runs/$profile"

# The order of issue 27: precision control and depths first, the noise and BN-64 controls, ResNet-110 last.
# Each line is the overrides of one run (run ids as `resnet-repro` derives them).
QUEUE=(
  "model.n=3 seed=0"
  "model.n=5 seed=0"
  "model.arch=plain model.n=3 seed=0"
  "model.n=7 seed=0"
  "model.arch=plain model.n=5 seed=0"
  "model.n=9 seed=0"
  "model.arch=plain model.n=7 seed=0"
  "model.arch=plain model.n=9 seed=0"
  "model.n=3 seed=1"
  "model.n=3 seed=2"
  "model.n=3 model.bn_group=64 seed=0"
  "model.n=18 seed=0"
  "model.n=18 seed=1"
  "model.n=18 seed=2"
  "model.n=18 seed=3"
  "model.n=18 seed=4"
)

[ -n "${RUNS:-}" ] && QUEUE=("${QUEUE[@]:0:$RUNS}")

frozen() { PYTHONPATH="$campaign/code/src" nice -n 19 "$python" "$@"; }

freeze() {  # a clone of the commit in STATE (HEAD the first time), so checkpoints always meet the code that wrote them
  if [ ! -d "$campaign/code/.git" ]; then
    local commit
    commit=$(cat "$state/code.commit" 2>/dev/null || git -C "$repo" rev-parse HEAD)
    git clone -q "$repo" "$campaign/code"
    git -C "$campaign/code" checkout -q "$commit" ||
      { rm -rf "$campaign/code"; echo "error: commit $commit (in $state/code.commit) is not in $repo" >&2; exit 2; }
    mkdir -p "$state" && echo "$commit" > "$state/code.commit"
    echo "froze the code at $(git -C "$campaign/code" rev-parse --short=12 HEAD)"
  fi
}

saved_runs() { tar -tf "$saved" 2>/dev/null | cut -d/ -f1 | sort -u; }  # the run ids in $saved

restore() {  # on a new machine: the runs collected already count as finished, the saved ones resume
  mkdir -p "$runs"
  local run
  for run in "$repo/experiments/$profile"/*/; do
    [ -f "$run/summary.json" ] && [ ! -e "$runs/$(basename "$run")" ] && cp -r "$run" "$runs/"
  done
  local listed missing=()
  [ -f "$saved" ] || return 0
  listed=$(saved_runs) || { echo "error: $saved could not be read; remove it to start those runs again" >&2; exit 2; }
  for run in $listed; do  # a run already here (collected, or newer on this machine) is kept whole
    [ -e "$runs/$run" ] || missing+=("$run")
  done
  [ ${#missing[@]} -eq 0 ] || tar -xf "$saved" -C "$runs" "${missing[@]}" 2>/dev/null ||
    { echo "error: $saved could not be unpacked; remove it to start those runs again" >&2; exit 2; }
}

save() {  # every run with a checkpoint that experiments/ lacks (unfinished, or finished and not collected)
  # safe while they train: a checkpoint is renamed into place whole, and a resumed run rewrites its
  # metrics from the checkpoint's rows, so the copy is what a run killed at that moment would leave
  local kept=() run
  for run in "$runs"/*/; do
    [ -f "$run/checkpoint.pt" ] && [ ! -f "$repo/experiments/$profile/$(basename "$run")/summary.json" ] &&
      kept+=("$(basename "$run")")
  done
  mkdir -p "$state"
  if [ ${#kept[@]} -eq 0 ]; then rm -f "$saved"; echo "every run is collected: nothing to save"; return; fi
  # written beside and renamed into place, so an interrupted save leaves the last one whole
  local part="$state/.$(basename "$saved").new"
  tar -cf "$part" -C "$runs" --exclude=.lock --exclude='.checkpoint.pt.*' "${kept[@]}" && mv -f "$part" "$saved"
  echo "saved ${kept[*]} into $saved ($(du -h "$saved" | cut -f1)); commit $state"
}

same_precision() {  # frozen code from before a resumed run kept its precision picks auto's by this machine
  grep -q in_its_precision "$campaign/code/src/resnet_repro/runner.py" 2>/dev/null && return 0
  local changed
  changed=$(frozen - "$runs" <<'PY'
import json, sys
from pathlib import Path

import torch

try:
    from resnet_repro.engine import choose_precision
    here = choose_precision("auto", torch.device("cpu"))[0]
except ImportError:  # the code of before engine.precision
    from resnet_repro.engine import choose_amp
    here = "bf16" if choose_amp("auto", torch.device("cpu"))[0] else "fp32"
for summary in sorted(Path(sys.argv[1]).glob("*/summary.json")):
    s = json.loads(summary.read_text())
    trained = s.get("precision") or ("bf16" if s.get("amp") else "fp32")
    if s.get("status") != "finished" and (summary.parent / "checkpoint.pt").exists() and trained != here:
        print(f"{summary.parent.name} ({trained}, here {here})")
PY
) || { echo "error: the frozen code could not say which precision this machine trains in; see the message above" >&2; exit 2; }
  [ -z "$changed" ] || { echo "error: the frozen code would resume $(echo $changed) in this machine's precision, changing it midway: resume them on a CPU like the one they started on, or delete them from $runs to start them again" >&2; exit 2; }
}

build_data() {  # CIFAR-10 from the pixel-exact copy, checked against the sha256 of the batch files every start
  if [ -n "${DATA:-}" ]; then
    [ "$profile" != paper ] || { echo "error: DATA is for trying the machinery (PROFILE=smoke); the paper runs train on the pixel-exact copy built from LOSSLESS" >&2; exit 2; }
    [ -d "$DATA/cifar-10-batches-py" ] || { echo "error: DATA=$DATA holds no cifar-10-batches-py/" >&2; exit 2; }
    return
  fi
  local out="$campaign/data"
  if [ ! -d "$out/cifar-10-batches-py" ]; then
    [ -f "$lossless" ] || { echo "error: $lossless not found; set LOSSLESS to cifar10_lossless.npz" >&2; exit 2; }
    "$python" "$(dirname "$lossless")/make_cifar10.py" "$out" --npz "$lossless" >/dev/null
  fi
  (cd "$out" && sha256sum --quiet -c "$repo/scripts/cifar10_lossless.sha256") ||
    { echo "error: $out/cifar-10-batches-py is not the pixel-exact CIFAR-10; remove it and start again" >&2; exit 2; }
}

worker() {  # one run after another in queue order; finished runs are skipped, runs another worker holds are busy
  # setsid gave this worker a session of its own, and Linux shares the CPU between sessions (autogroups)
  # before it looks at nice: without this the campaign takes a fair share, not the idle time
  echo 19 2>/dev/null > /proc/self/autogroup || true
  local runs threads=engine.threads=1
  [ -d "$campaign/code/conf/engine" ] || threads=train.threads=1  # code frozen before the engine group existed
  for runs in "${QUEUE[@]}"; do
    # shellcheck disable=SC2086
    frozen -m resnet_repro run custom profile="$profile" $runs $threads \
      --data-dir "$data_dir" --results-dir "$campaign/results" --runs-dir "$campaign/runs" || {
        rc=$?
        [ "$rc" -eq 130 ] && exit 130  # stopped: checkpoint saved, `start` resumes
        echo "run '$runs' ended with status $rc; going on with the next" >&2
      }
  done
}

start() {
  freeze
  restore
  same_precision
  build_data
  mkdir -p "$campaign/logs"
  # workers run a copy of this script: bash reads a script as it goes, so an edit here would reach them;
  # the copy is renamed into place, so the workers still running keep reading the one they started with
  cp "$0" "$campaign/worker.sh.new" && mv -f "$campaign/worker.sh.new" "$campaign/worker.sh"
  local running
  running=$(pgrep -fc "$campaign/worker.sh paper worker" || true)  # this campaign's, not another's
  local want="${WORKERS:-$(nproc)}"
  for ((i = running; i < want; i++)); do
    REPO="$repo" nohup setsid nice -n 19 bash "$campaign/worker.sh" paper worker >> "$campaign/logs/worker$i.log" 2>&1 < /dev/null &
    echo "worker $i started (log $campaign/logs/worker$i.log)"
    if ((i + 1 < want)); then sleep 20; fi  # let it take its run's lock before the next one looks
  done
}

stop() {  # the workers first, so none goes on to its next run; then the runs, which checkpoint and exit
  pkill -TERM -f "$campaign/worker.sh paper worker" || true
  local training="resnet_repro run custom profile=$profile .*--runs-dir $campaign/runs"
  pkill -TERM -f "$training" || true
  local waited
  for ((waited = 0; waited < 300; waited++)); do  # until every run has written its checkpoint
    pgrep -f "$training" > /dev/null || return 0
    sleep 1
  done
  echo "error: a run still trains 300 s after SIGTERM; see $campaign/logs" >&2; exit 1
}

status() {
  PYTHONPATH="$repo/src" "$python" "$repo/scripts/campaign_status.py" "$runs" "$data_dir" "${QUEUE[@]}"
  if [ -f "$saved" ]; then
    echo "saved for the next machine ($saved, $(date -u -r "$saved" '+%Y-%m-%d %H:%M UTC')):" \
      "$(saved_runs | paste -sd ' ')"
  fi
}

collect() {  # finished runs into this checkout's experiments/, their weights beside them; then the reports again
  cd "$repo"
  .venv/bin/resnet-repro collect "$campaign/runs" --runs-dir experiments --data-dir "$campaign/data"
  .venv/bin/resnet-repro plot all >/dev/null && .venv/bin/resnet-repro report >/dev/null
  git status --short experiments results README.md
}

budget() {
  cd "$repo"
  : "${CIFAR:?set CIFAR to the folder holding cifar-10-batches-py/}"
  : "${PROXY:?set PROXY to the folder holding imagenette_64px/}"
  rr() { .venv/bin/resnet-repro "$@"; }
  mkdir -p logs

  # Cheapest and most-needed runs first (ResNet-20 seeds, then Fig. 6 depths 32-56), the 110-layer nets last.
  cifar_queue() {
    rr run fig1 profile=budget engine.threads=1 --data-dir "$CIFAR"
    rr run custom profile=budget model.n=3 seeds=3 engine.threads=1 --data-dir "$CIFAR"
    rr sweep cifar --n 5,7 --arch resnet profile=budget engine.threads=1 --data-dir "$CIFAR"
    rr sweep cifar --n 7 --arch plain profile=budget engine.threads=1 --data-dir "$CIFAR"
    rr run table6 profile=budget engine.threads=1 --data-dir "$CIFAR"
    rr run fig6 profile=budget engine.threads=1 --data-dir "$CIFAR"
  }

  second_queue() {
    rr run table2 profile=proxy --data-dir "$PROXY"
    rr run fig4 profile=proxy --data-dir "$PROXY"
    sleep 30  # let the first queue claim ResNet-20 seed 1; this one then takes seed 2
    rr run custom profile=budget model.n=3 seeds=3 engine.threads=1 --data-dir "$CIFAR"
    rr sweep cifar --n 5 --arch plain profile=budget engine.threads=1 --data-dir "$CIFAR"
    rr sweep cifar --n 9 --arch resnet profile=budget engine.threads=1 --data-dir "$CIFAR"
    rr run fig7 profile=budget engine.threads=1 --data-dir "$CIFAR"
    rr sweep cifar --n 18 --arch resnet profile=budget seed=1 engine.threads=1 --data-dir "$CIFAR"
    rr run fig6 profile=budget engine.threads=1 --data-dir "$CIFAR"
  }

  cifar_queue > logs/cifar_queue.log 2>&1 &
  second_queue > logs/second_queue.log 2>&1 &
  wait
  rr plot all && rr report
}

case "${1:-budget} ${2:-}" in
  "budget "*) budget ;;
  "paper start") start ;;
  "paper stop") stop ;;
  "paper status") status ;;
  "paper collect") collect ;;
  "paper save") save ;;
  "paper worker") worker ;;
  *) echo "usage: $0 [budget] | paper start|status|stop|collect|save" >&2; exit 2 ;;
esac
