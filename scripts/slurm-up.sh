#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (munge + slurmctld + slurmd), for the `slurm` tests and
# for trying `spatialprobe study run ... --launcher submitit --cluster slurm` without a real cluster.
#
#   scripts/slurm-up.sh              # CPU-only node, partitions `cpu` (default) and `extract`
#   scripts/slurm-up.sh --gpus 2     # plus 2 emulated GPUs (gres bookkeeping only, no CUDA) and a `gpu` partition
#   scripts/slurm-down.sh            # stops what this script started, restores what it replaced
#
# Idempotent: a cluster this script already started with the same settings is left as it is; a SLURM
# that answers `sinfo` and was not started here is used as it is (nothing is touched). Installs the
# Debian packages munge, slurmctld, slurmd and slurm-client with apt when they are missing (needs root or
# sudo). State, logs and pid files live in $SPATIALPROBE_SLURM_STATE (default /var/tmp/spatialprobe-slurm).
set -euo pipefail

GPUS=0
STATE="${SPATIALPROBE_SLURM_STATE:-/var/tmp/spatialprobe-slurm}"
while [ $# -gt 0 ]; do
  case "$1" in
    --gpus) GPUS="$2"; shift 2 ;;
    --gpus=*) GPUS="${1#*=}"; shift ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "slurm-up: unknown option $1 (use --gpus N)" >&2; exit 2 ;;
  esac
done
case "$GPUS" in ''|*[!0-9]*) echo "slurm-up: --gpus takes a number, not '$GPUS'" >&2; exit 2 ;; esac

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "slurm-up: needs root (or sudo) to install and start SLURM" >&2; exit 1; }
  SUDO="sudo"
fi
CONF=/etc/slurm/slurm.conf
GRES=/etc/slurm/gres.conf
MARK="# written by spatialprobe scripts/slurm-up.sh"
HOST="$(hostname -s)"

up() { timeout 10 sinfo -h >/dev/null 2>&1; }

# ---------------------------------------------------------------- already running?
if up; then
  if [ -f "$STATE/started" ] && [ "$(cat "$STATE/gpus" 2>/dev/null)" = "$GPUS" ]; then
    echo "slurm-up: the cluster is already up ($(sinfo -h -o '%P %t' | tr '\n' ' '))"
    exit 0
  elif [ -f "$STATE/started" ]; then
    echo "slurm-up: restarting the cluster with --gpus $GPUS"
    "$(dirname "$0")/slurm-down.sh"
  else
    echo "slurm-up: a SLURM cluster not started by this script answers sinfo; using it as it is"
    exit 0
  fi
fi

# ---------------------------------------------------------------- install
missing=()
for b in munged slurmctld slurmd sinfo; do command -v "$b" >/dev/null || missing+=("$b"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "slurm-up: installing munge, slurmctld, slurmd, slurm-client (missing: ${missing[*]})"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    munge slurmctld slurmd slurm-client >/dev/null
fi

$SUDO mkdir -p "$STATE/ctld" "$STATE/d"
$SUDO touch "$STATE/started"   # what this script started, one name a line (slurm-down stops only those)
echo "$GPUS" | $SUDO tee "$STATE/gpus" >/dev/null

# ---------------------------------------------------------------- munge
if ! pgrep -x munged >/dev/null; then
  $SUDO mkdir -p /run/munge && $SUDO chown munge:munge /run/munge && $SUDO chmod 0755 /run/munge
  [ -f /etc/munge/munge.key ] || $SUDO mungekey --create
  $SUDO runuser -u munge -- /usr/sbin/munged
  echo munged | $SUDO tee -a "$STATE/started" >/dev/null
fi

# ---------------------------------------------------------------- configuration
$SUDO mkdir -p /etc/slurm
for f in "$CONF" "$GRES"; do  # keep a configuration this script did not write, restored by slurm-down
  if [ -f "$f" ] && ! grep -qF "$MARK" "$f"; then $SUDO mv "$f" "$f.spatialprobe-orig"; fi
done
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
NODE_GRES=""
if [ "$GPUS" -gt 0 ]; then
  NODE_GRES=" Gres=gpu:$GPUS"
  for i in $(seq 0 $((GPUS - 1))); do  # character devices for gres bookkeeping (/dev/null's numbers)
    if [ ! -e "/dev/fgpu$i" ]; then $SUDO mknod "/dev/fgpu$i" c 1 3; echo "/dev/fgpu$i" | $SUDO tee -a "$STATE/devices" >/dev/null; fi
  done
  printf '%s\nName=gpu File=/dev/fgpu[0-%d]\n' "$MARK" $((GPUS - 1)) | $SUDO tee "$GRES" >/dev/null
fi
$SUDO tee "$CONF" >/dev/null <<EOF
$MARK
ClusterName=spatialprobe
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
DefMemPerCPU=1024
SchedulerParameters=sched_interval=2
$( [ "$GPUS" -gt 0 ] && echo "GresTypes=gpu" )
NodeName=$HOST CPUs=$(nproc) RealMemory=$MEM_MB$NODE_GRES State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=extract Nodes=$HOST MaxTime=INFINITE State=UP
$( [ "$GPUS" -gt 0 ] && echo "PartitionName=gpu Nodes=$HOST MaxTime=INFINITE State=UP" )
EOF

# ---------------------------------------------------------------- daemons
if ! pgrep -x slurmctld >/dev/null; then
  $SUDO slurmctld && echo slurmctld | $SUDO tee -a "$STATE/started" >/dev/null
fi
if ! pgrep -x slurmd >/dev/null; then
  $SUDO slurmd && echo slurmd | $SUDO tee -a "$STATE/started" >/dev/null
fi

for _ in $(seq 60); do
  st="$(timeout 10 sinfo -h -N -o '%t' 2>/dev/null | head -1 || true)"
  case "$st" in
    idle*|mix*|alloc*) echo "slurm-up: up: node $HOST ($(nproc) CPUs, $MEM_MB MB, $GPUS GPUs), partitions: $(sinfo -h -o '%P' | tr '\n' ' ')"; exit 0 ;;
    down*|drain*|drng*) $SUDO scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
  esac
  sleep 1
done
echo "slurm-up: the node did not become idle within 60 s; see $STATE/slurmctld.log and $STATE/slurmd.log" >&2
exit 1
