#!/usr/bin/env bash
# Stops exactly the nodes bootstrap-cluster.sh / start-node.sh started for NAME (SIGTERM, then
# SIGKILL after a bounded wait), unregisters NAME from the client store and removes its state
# unless --keep-data.
#
#   scripts/stop-cluster.sh NAME [--keep-data]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

name=""
keep_data=false
for arg in "$@"; do
    case "$arg" in
    --keep-data) keep_data=true ;;
    -*) echo "usage: $0 NAME [--keep-data]" >&2; exit 2 ;;
    *) name="$arg" ;;
    esac
done
[[ -n "$name" ]] || { echo "usage: $0 NAME [--keep-data]" >&2; exit 2; }
check_cluster_name "$name"
dir="$(cluster_dir "$name")"
[[ -d "$dir" ]] || die "no local cluster \"$name\" in $dir"

# Only pids we recorded, and only while they still are this cluster's ctld.
ours=()
if [[ -f "$dir/pids" ]]; then
    while read -r id pid; do
        [[ -n "${id:-}" ]] || continue
        if pid_is_node "$pid" "$dir/node-$id"; then
            ours+=("$pid")
            kill -TERM "$pid" 2>/dev/null || true
            kill -CONT "$pid" 2>/dev/null || true # a SIGSTOPped node handles SIGTERM only once thawed
        fi
    done <"$dir/pids"
fi

alive() {
    local pid left=()
    for pid in "${ours[@]}"; do
        [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" =~ ^[^ZX]$ ]] && left+=("$pid")
    done
    ours=("${left[@]+"${left[@]}"}")
    ((${#ours[@]} > 0))
}

deadline=$((SECONDS + ${STARLING_STOP_WAIT_SECS:-15}))
while alive && ((SECONDS < deadline)); do sleep 0.2; done
if alive; then
    note "SIGKILL to pids still running after SIGTERM: ${ours[*]}"
    kill -KILL "${ours[@]}" 2>/dev/null || true
    deadline=$((SECONDS + 5))
    while alive && ((SECONDS < deadline)); do sleep 0.1; done
    ! alive || die "pids ${ours[*]} survived SIGKILL"
fi

ctl="$(cluster_bin_dir "$name")/ctl"
if [[ -x "$ctl" ]]; then
    "$ctl" unregister "$name" >/dev/null 2>&1 || note "\"$name\" was not registered in the client store"
fi

if $keep_data; then
    : >"$dir/pids"
    note "stopped \"$name\"; data kept in $dir"
else
    rm -rf "$dir"
    note "stopped \"$name\" and removed $dir"
fi
