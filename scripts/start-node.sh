#!/usr/bin/env bash
# (Re)starts one node of a cluster made by bootstrap-cluster.sh, reusing its data dir; its log is
# appended to and its pid recorded. Prints the pid.
#
#   scripts/start-node.sh NAME ID
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -eq 2 ]] || { echo "usage: $0 NAME ID" >&2; exit 2; }
name="$1"
id="$2"
check_cluster_name "$name"
[[ -f "$(cluster_dir "$name")/ports" ]] || die "no local cluster \"$name\" in $(cluster_dir "$name")"
start_cluster_node "$name" "$id"
