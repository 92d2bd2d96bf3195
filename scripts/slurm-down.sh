#!/usr/bin/env bash
# Stop the one-node SLURM cluster that scripts/slurm-up.sh started: only the daemons it started (a munged
# that was already running stays), the emulated GPU devices it created, and its slurm.conf / gres.conf
# (a configuration it replaced is put back). Logs stay in $SPATIALPROBE_SLURM_STATE.
set -euo pipefail
STATE="${SPATIALPROBE_SLURM_STATE:-/var/tmp/spatialprobe-slurm}"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
MARK="# written by spatialprobe scripts/slurm-up.sh"
if [ ! -f "$STATE/started" ]; then
  echo "slurm-down: nothing to stop (no cluster started by scripts/slurm-up.sh; $STATE/started is absent)"
  exit 0
fi

stop() {  # name pidfile
  local pid
  pid="$(cat "$2" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    $SUDO kill "$pid"
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    echo "slurm-down: stopped $1 (pid $pid)"
  fi
}
grep -qx slurmd "$STATE/started" && stop slurmd "$STATE/slurmd.pid"
grep -qx slurmctld "$STATE/started" && stop slurmctld "$STATE/slurmctld.pid"
grep -qx munged "$STATE/started" && stop munged /run/munge/munged.pid

if [ -f "$STATE/devices" ]; then
  while read -r dev; do [ -c "$dev" ] && $SUDO rm -f "$dev"; done < "$STATE/devices"
  $SUDO rm -f "$STATE/devices"
fi
for f in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
  if [ -f "$f" ] && grep -qF "$MARK" "$f"; then $SUDO rm -f "$f"; fi
  if [ -f "$f.spatialprobe-orig" ]; then $SUDO mv "$f.spatialprobe-orig" "$f"; fi
done
$SUDO rm -f "$STATE/started" "$STATE/gpus"
echo "slurm-down: done (logs kept in $STATE)"
