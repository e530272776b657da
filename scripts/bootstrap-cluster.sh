#!/usr/bin/env bash
# Bootstraps a local controller: N `ctld` nodes on loopback, registered in the client store
# ($CTL_DATA), and returns once the group has a leader. Prints the cluster's work dir.
#
#   scripts/bootstrap-cluster.sh NAME [-n N] [--cloud C] [--region R] [--version V]
#
# Environment: STARLING_WORK (state root, default <repo>/.work), STARLING_BIN_DIR (default
# <repo>/target/debug), STARLING_CTLD_ARGS (extra `ctld run` arguments, kept for restarts),
# STARLING_LEADER_WAIT_SECS (default 60). Stop it with scripts/stop-cluster.sh NAME.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    echo "usage: $0 NAME [-n N] [--cloud C] [--region R] [--version V]" >&2
    exit 2
}

name=""
n_nodes=3
cloud=local
region=default
version=""
while (($#)); do
    case "$1" in
    -n) n_nodes="${2:?}"; shift 2 ;;
    --cloud) cloud="${2:?}"; shift 2 ;;
    --region) region="${2:?}"; shift 2 ;;
    --version) version="${2:?}"; shift 2 ;;
    -h | --help) usage ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) [[ -z "$name" ]] || usage; name="$1"; shift ;;
    esac
done
[[ -n "$name" ]] || usage
check_cluster_name "$name"
[[ "$n_nodes" =~ ^[1-9]$ ]] || die "-n must be between 1 and 9, got \"$n_nodes\""

ctld="$STARLING_BIN_DIR/ctld"
ctl="$STARLING_BIN_DIR/ctl"
need_bin "$ctld"
need_bin "$ctl"

dir="$(cluster_dir "$name")"
if [[ -e "$dir" ]]; then
    if [[ -f "$dir/ports" ]]; then
        for id in $(cluster_node_ids "$name"); do
            if node_running "$name" "$id"; then
                die "controller \"$name\" is already running (node $id, pid $(recorded_pid "$name" "$id")); stop it with scripts/stop-cluster.sh $name"
            fi
        done
    fi
    die "controller \"$name\" has state in $dir but is not running: restart its nodes with scripts/start-node.sh $name ID, or remove it with scripts/stop-cluster.sh $name"
fi
mkdir -p "$(dirname "$dir")"

mapfile -t ports < <(free_ports $((2 * n_nodes)))
node_args=()
for ((i = 1; i <= n_nodes; i++)); do
    node_args+=(--node "$i,127.0.0.1:${ports[2 * i - 2]},127.0.0.1:${ports[2 * i - 1]}")
done
init_args=(init --name "$name" --out "$dir" "${node_args[@]}" --cloud "$cloud" --region "$region")
[[ -z "$version" ]] || init_args+=(--version "$version")
"$ctld" "${init_args[@]}" >&2 || {
    rm -rf "$dir"
    die "ctld init failed for \"$name\""
}
[[ -f "$dir/registration.yaml" ]] || die "ctld init wrote no $dir/registration.yaml"
for ((i = 1; i <= n_nodes; i++)); do
    echo "$i 127.0.0.1:${ports[2 * i - 2]} 127.0.0.1:${ports[2 * i - 1]}"
done >"$dir/ports"
echo "$STARLING_BIN_DIR" >"$dir/bin-dir"
echo "${STARLING_CTLD_ARGS:-}" >"$dir/ctld-args"
: >"$dir/pids"
mkdir -p "$dir/logs"

if ! "$ctl" register "$dir/registration.yaml" >&2; then
    rm -rf "$dir" # nothing runs yet: leave no half-made cluster behind
    die "ctl register failed; if a stale \"$name\" is in the client store, remove it with: $ctl unregister $name"
fi

for id in $(cluster_node_ids "$name"); do
    pid="$(start_cluster_node "$name" "$id")"
    note "started node $id (pid $pid), log $dir/logs/node-$id.log"
done

seconds_max="${STARLING_LEADER_WAIT_SECS:-60}"
if ! leader="$(wait_for_leader "$name" "$seconds_max" "$ctl")"; then
    show_log_tails "$name"
    for id in $(cluster_node_ids "$name"); do
        node_running "$name" "$id" || note "node $id is not running"
    done
    die "controller \"$name\" has no leader after ${seconds_max}s; stop it with scripts/stop-cluster.sh $name"
fi
note "controller \"$name\" is up: $n_nodes nodes, leader is node $leader"
echo "$dir"
