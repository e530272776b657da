#!/bin/sh
# The counter workload: one timestamped, numbered line every $interval seconds, for ever.
set -eu
dir="${STARLING_UNIT_DIR:-.}"
interval="${STARLING_CONFIG_interval:-1}"
case "$interval" in ''|*[!0-9]*) interval=1 ;; esac
[ "$interval" -ge 1 ] || interval=1
n=0
[ -f "$dir/counter.log" ] && n=$(wc -l < "$dir/counter.log")
while :; do
    n=$((n + 1))
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $n" >> "$dir/counter.log"
    sleep "$interval"
done
