#!/bin/sh
# A stand-in workload: rewrites heartbeat with the time every second, for ever. No network.
set -eu
dir="${STARLING_UNIT_DIR:-.}"
while :; do
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) ${STARLING_UNIT:-unit} port=${STARLING_CONFIG_port:-0}" > "$dir/heartbeat.tmp"
    mv "$dir/heartbeat.tmp" "$dir/heartbeat"
    sleep 1
done
