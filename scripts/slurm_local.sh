#!/usr/bin/env bash
# A throwaway one-node SLURM cluster made of this machine, for the `slurm` tests and CI.
#
#   scripts/slurm_local.sh start    # then: . /tmp/resnet-repro-slurm/env   (exports SLURM_CONF)
#   scripts/slurm_local.sh status   # exit 0 when the node answers idle/mixed/allocated
#   scripts/slurm_local.sh stop     # cancels its jobs, stops the daemons it started; safe to repeat
#
# Installs nothing (Debian/Ubuntu: apt-get install slurm-wlm munge) and needs root: slurmd runs jobs.
# Everything lives in SLURM_LOCAL_DIR (default /tmp/resnet-repro-slurm): slurm.conf, a munge key,
# munged's socket, the daemons' state, logs and PID files. No systemd, no slurmdbd, no cgroups; the
# system's /etc/slurm and /etc/munge are not read. Ports: SLURM_LOCAL_PORT and SLURM_LOCAL_PORT+1
# (default 6817, 6818).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # the daemons, also from a shell whose PATH lacks them

D=$(realpath -m -- "${SLURM_LOCAL_DIR:-/tmp/resnet-repro-slurm}")  # absolute: the daemons run in /
PORT=${SLURM_LOCAL_PORT:-6817}
CONF=$D/slurm.conf
NODE=$(hostname -s)
export SLURM_CONF=$CONF
DAEMONS=(slurmd slurmctld munged)  # stop order; start is the reverse

pidfile() { echo "$D/run/$1.pid"; }

# PID of daemon $1 when its PID file names a live process of that program started on this folder
pid_of() {
  local f pid
  f=$(pidfile "$1"); [ -r "$f" ] || return 1
  pid=$(tr -dc 0-9 <"$f"); [ -n "$pid" ] || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  local cmd; cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline")
  [ "$(basename -- "${cmd%% *}")" = "$1" ] && [[ $cmd == *" "*"$D/"* ]] || return 1
  echo "$pid"
}

node_state() { timeout 5 sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -1; }

is_up() {
  local d
  for d in "${DAEMONS[@]}"; do pid_of "$d" >/dev/null || return 1; done
  case $(node_state) in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac  # not idle* (not responding)
}

write_conf() {
  local cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)  # a bit below the real amount
  : >"$D/plugstack.conf"  # no SPANK plugins from /etc/slurm
  cat >"$CONF" <<EOF
# Written by scripts/slurm_local.sh: a one-node test cluster, rewritten at every start.
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also holds a requeued job back this long before it may start again (default 120 s)
AuthInfo=socket=$D/munge/munged.socket,cred_expire=10
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$D/plugstack.conf
# no cgroups, no accounting database: sacct answers "accounting storage is disabled"
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
# a request the node can never hold is refused at submission instead of pending forever
EnforcePartLimits=ALL
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
JobRequeue=1
ReturnToService=2
# short timeouts: a test cluster on one machine
MessageTimeout=10
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=300
OverTimeLimit=0
# the node as configured here even if the hardware looks bigger (containers, CPU quotas)
SlurmdParameters=config_overrides
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
# FORCE:4: up to 4 jobs share a core, so small CPU jobs run side by side
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE OverSubscribe=FORCE:4 State=UP
EOF
}

start_munged() {
  local key=$D/munge/munged.key
  if [ ! -s "$key" ]; then
    dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
  fi
  chmod 400 "$key"
  munged --key-file="$key" --socket="$D/munge/munged.socket" --pid-file="$(pidfile munged)" \
    --log-file="$D/log/munged.log" --seed-file="$D/munge/munged.seed" </dev/null >>"$D/log/munged.log" 2>&1
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2 t=0; shift 2
  until "$@"; do
    if [ "$t" -ge "$limit" ]; then
      echo "slurm_local: $what did not happen within ${limit}s; logs in $D/log" >&2
      tail -n 5 "$D"/log/*.log >&2 || true
      return 1
    fi
    sleep 1; t=$((t + 1))
  done
}

start() {
  if is_up; then echo "slurm_local: already up ($CONF)"; write_env; return 0; fi
  [ "$(id -u)" -eq 0 ] || { echo "slurm_local: must run as root (slurmd runs the jobs)" >&2; return 1; }
  local b
  for b in munged slurmctld slurmd sinfo; do
    command -v "$b" >/dev/null || { echo "slurm_local: $b not found (apt-get install slurm-wlm munge)" >&2; return 1; }
  done
  stop >/dev/null  # whatever is left of an earlier start
  mkdir -p "$D"/{munge,state,spool,log,run}
  chmod 755 "$D" "$D/munge"  # munged wants its socket folder searchable by all
  write_conf
  start_munged
  wait_for 10 "munged's socket" test -S "$D/munge/munged.socket"
  # -c: forget the jobs of an earlier cluster in this folder
  slurmctld -c -f "$CONF" </dev/null >>"$D/log/slurmctld.log" 2>&1
  wait_for 20 "slurmctld answering" eval 'timeout 5 scontrol ping 2>/dev/null | grep -q UP'
  slurmd -c -f "$CONF" </dev/null >>"$D/log/slurmd.log" 2>&1
  wait_for 60 "node $NODE idle" is_up
  echo "slurm_local: up, one node $NODE ($(nproc) CPUs), partition debug"
  write_env
}

write_env() {  # what a client needs, for `. $D/env`; printed too
  echo "export SLURM_CONF=$CONF" >"$D/env"
  echo "# . $D/env"; cat "$D/env"
}

stop() {
  local d pid t
  if pid_of slurmctld >/dev/null; then  # the jobs first, so no job step outlives its slurmd
    timeout 10 scancel --full --quiet $(timeout 5 squeue -h -o %i 2>/dev/null) 2>/dev/null || true
    for t in 1 2 3 4 5 6 7 8 9 10; do
      [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break
      sleep 1
    done
  fi
  for d in "${DAEMONS[@]}"; do
    if pid=$(pid_of "$d"); then
      kill -TERM "$pid" 2>/dev/null || true
      for t in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
      echo "slurm_local: stopped $d ($pid)"
    fi
    rm -f "$(pidfile "$d")"
  done
  rm -f "$D/env"
}

status() {
  local d pid
  for d in munged slurmctld slurmd; do
    if pid=$(pid_of "$d"); then echo "$d: running ($pid)"; else echo "$d: not running"; fi
  done
  if is_up; then
    echo "slurm_local: up ($CONF), node $NODE $(node_state)"
  else
    echo "slurm_local: down"; return 1
  fi
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status   (state in \$SLURM_LOCAL_DIR, default /tmp/resnet-repro-slurm)" >&2; exit 2 ;;
esac
