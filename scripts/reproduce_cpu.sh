#!/usr/bin/env bash
# The reproduction committed in results/, as run on a 2-core CPU (issue 7): two queues side by side,
# one thread each (on a shared 2-core box two threads per run are several times slower). Every command
# resumes its unfinished runs and skips finished ones, so re-running this script continues where it
# stopped; runs claimed by the other queue are skipped (locked), not trained twice.
#
#   CIFAR=DIR (holds cifar-10-batches-py/)  PROXY=DIR (holds imagenette_64px/)  bash scripts/reproduce_cpu.sh
set -u
cd "$(dirname "$0")/.."
: "${CIFAR:?set CIFAR to the folder holding cifar-10-batches-py/}"
: "${PROXY:?set PROXY to the folder holding imagenette_64px/}"
rr() { .venv/bin/resnet-repro "$@"; }
mkdir -p logs

cifar_queue() {
  rr run fig1 profile=budget train.threads=1 --data-dir "$CIFAR"
  rr run table6 profile=budget train.threads=1 --data-dir "$CIFAR"
  rr run fig6 profile=budget train.threads=1 --data-dir "$CIFAR"
}

second_queue() {
  rr run table2 profile=proxy --data-dir "$PROXY"
  rr run fig4 profile=proxy --data-dir "$PROXY"
  rr run custom profile=budget model.n=3 seeds=3 train.threads=1 --data-dir "$CIFAR"
  rr run fig7 profile=budget train.threads=1 --data-dir "$CIFAR"
  rr run fig6 profile=budget train.threads=1 --data-dir "$CIFAR"
}

cifar_queue > logs/cifar_queue.log 2>&1 &
second_queue > logs/second_queue.log 2>&1 &
wait
rr plot all && rr report
