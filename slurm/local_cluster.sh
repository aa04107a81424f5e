#!/usr/bin/env bash
# A real SLURM cluster on this machine, for trying sbatch scripts before a real cluster sees them:
# munge, slurmctld and two slurmd "nodes" (n1, n2) on 127.0.0.1. Bonsai's SLURM tests use it.
#
#   slurm/local_cluster.sh install        # apt-get the Debian packages (root)
#   slurm/local_cluster.sh start [DIR]    # write DIR/slurm.conf, start the daemons, wait until idle
#   export SLURM_CONF=DIR/slurm.conf      # then sbatch, squeue, scontrol, scancel talk to it
#   slurm/local_cluster.sh stop [DIR]     # stop the daemons by their PID files
#
# DIR defaults to /tmp/bonsai-slurm. The daemons run as root (SlurmUser=root), so this needs root.
set -euo pipefail

cmd=${1:-}
dir=$(realpath -m "${2:-${BONSAI_SLURM_DIR:-/tmp/bonsai-slurm}}")
nodes=(n1 n2)
ports=(17001 17002)
MUNGE_PID=/run/munge/munged.pid

die() { echo "local_cluster: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "the SLURM daemons run as root here: run this as root (e.g. sudo $0 $cmd)"; }

# Waits up to $1 seconds for "$2..." to succeed.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# A PID file names a live daemon only if that PID still runs the program (PIDs get reused).
pid_alive() {
  local pid
  [ -f "$1" ] && pid=$(cat "$1") && [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] &&
    [[ "$(cat "/proc/$pid/comm")" =~ ^(munged|slurmctld|slurmd)$ ]]
}

write_conf() {
  local cpus; cpus=$(nproc)
  mkdir -p "$dir/state" "$dir/log" "${nodes[@]/#/$dir/spool/slurmd-}"
  cat >"$dir/slurm.conf" <<EOF
# Written by slurm/local_cluster.sh. Why the odd lines are there:
# proctrack/linuxproc: the default (cgroup) needs a cgroup.conf, else jobs fail and the node drains.
# cred_expire=5 and the 1 s scheduler intervals: a requeued job restarts in seconds, not minutes.
ClusterName=bonsai-local
SlurmctldHost=localhost
SlurmctldPort=16817
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SchedulerParameters=sched_interval=1,bf_interval=1
MailProg=/bin/true
ReturnToService=2
KillWait=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/slurmd-%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
EOF
  local i
  for i in "${!nodes[@]}"; do
    echo "NodeName=${nodes[$i]} NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=${ports[$i]} CPUs=$cpus RealMemory=1000 State=UNKNOWN" >>"$dir/slurm.conf"
  done
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >>"$dir/slurm.conf"
}

all_idle() {
  local states; states=$(sinfo -h -N -o '%N %T')
  [ "$(grep -c ' idle$' <<<"$states")" = "${#nodes[@]}" ]
}

start() {
  need_root
  for bin in munged slurmctld slurmd sbatch; do
    command -v "$bin" >/dev/null || [ -x "/usr/sbin/$bin" ] || die "$bin not found: run '$0 install' first"
  done
  export PATH="$PATH:/usr/sbin"
  if pid_alive "$dir/slurmctld.pid"; then die "a cluster is already running from $dir (stop it first)"; fi
  # A clean start: a node drained by an earlier run stays drained across restarts otherwise.
  rm -rf "$dir/state" "$dir/spool" "$dir/log"
  write_conf
  export SLURM_CONF="$dir/slurm.conf"
  if ! pid_alive "$MUNGE_PID"; then
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- munged
    touch "$dir/started_munge"
  fi
  wait_for 10 bash -c 'munge -n | unmunge' || die "munge does not answer (is /etc/munge/munge.key there?)"
  slurmctld || die "slurmctld did not start; see $dir/log/slurmctld.log"
  local n
  for n in "${nodes[@]}"; do slurmd -N "$n" || die "slurmd -N $n did not start; see $dir/log/slurmd-$n.log"; done
  if ! wait_for 30 all_idle; then
    sinfo -N >&2 || true
    die "nodes not idle after 30 s; see $dir/log/"
  fi
  echo "SLURM is up: nodes ${nodes[*]} idle. Use it with:"
  echo "  export SLURM_CONF=$dir/slurm.conf"
}

stop() {
  local pids=() f
  for f in "$dir"/slurmd-*.pid "$dir/slurmctld.pid"; do
    if pid_alive "$f"; then pids+=("$(cat "$f")"); fi
  done
  if [ -f "$dir/started_munge" ] && pid_alive "$MUNGE_PID"; then pids+=("$(cat "$MUNGE_PID")"); fi
  rm -f "$dir/started_munge"
  [ "${#pids[@]}" -gt 0 ] || { echo "nothing running from $dir"; return 0; }
  kill -TERM "${pids[@]}" 2>/dev/null || true
  local p
  for p in "${pids[@]}"; do
    if ! wait_for 15 bash -c "! kill -0 $p"; then kill -KILL "$p" 2>/dev/null || true; fi
  done
  echo "stopped ${#pids[@]} daemon(s)"
}

install_packages() {
  need_root
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge
}

case "$cmd" in
  install) install_packages ;;
  start) start ;;
  stop) stop ;;
  *) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
