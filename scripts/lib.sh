# Shared helpers for Starling's scripts: where things are, local-cluster state, process checks.
# Sourced, never run. Callers set -euo pipefail themselves.
#
# Local-cluster state lives in "$(cluster_dir NAME)" = ${STARLING_WORK:-<repo>/.work}/clusters/NAME/:
#   registration.yaml   admin credential written by `ctld init` (0600)
#   node-ID/            each node's data dir
#   ports               "ID GRPC_ADDR HTTP_ADDR" lines
#   pids                "ID PID" lines of the `ctld run` processes this environment started
#   logs/node-ID.log    each node's stderr (appended on restart)
#   bin-dir             the directory whose ctld the cluster was started with
#   ctld-args           extra `ctld run` arguments (from STARLING_CTLD_ARGS at bootstrap)

STARLING_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STARLING_WORK="${STARLING_WORK:-$STARLING_REPO/.work}"
STARLING_BIN_DIR="${STARLING_BIN_DIR:-$STARLING_REPO/target/debug}"

die() {
    echo "ERROR $*" >&2
    exit 1
}

note() {
    echo "$*" >&2
}

cluster_dir() {
    echo "$STARLING_WORK/clusters/$1"
}

check_cluster_name() {
    [[ "$1" =~ ^[a-z][a-z0-9-]{0,62}$ ]] ||
        die "invalid controller name \"$1\": use lowercase letters, digits and '-', starting with a letter"
}

# ctld / ctl of the directory a cluster was started with, else of STARLING_BIN_DIR.
cluster_bin_dir() {
    local dir
    dir="$(cluster_dir "$1")"
    if [[ -s "$dir/bin-dir" ]]; then cat "$dir/bin-dir"; else echo "$STARLING_BIN_DIR"; fi
}

need_bin() {
    [[ -x "$1" ]] || die "$1 not found: build it first (cargo build --bins) or set STARLING_BIN_DIR"
}

# Prints N free TCP ports on 127.0.0.1, one per line. All sockets stay bound until every port is
# chosen, so the N are distinct.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
EOF
}

# True when PID is a live (not zombie) ctld whose command line names DATA_DIR.
pid_is_node() {
    local pid="$1" data_dir="$2" state cmdline
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != "Z" && "$state" != "X" ]] || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ "$cmdline" == *ctld* && "$cmdline" == *" $data_dir "* ]]
}

# The recorded pid of node ID of cluster NAME, empty if none.
recorded_pid() {
    local file
    file="$(cluster_dir "$1")/pids"
    [[ -f "$file" ]] || return 0
    awk -v id="$2" '$1 == id {print $2}' "$file" | tail -n 1
}

# Records PID for node ID (replacing any earlier line for ID).
record_pid() {
    local file tmp
    file="$(cluster_dir "$1")/pids"
    tmp="$file.tmp.$$"
    { [[ -f "$file" ]] && awk -v id="$2" '$1 != id' "$file"; echo "$2 $3"; } >"$tmp"
    mv "$tmp" "$file"
}

# Ids of every node of cluster NAME (from its ports file).
cluster_node_ids() {
    awk '{print $1}' "$(cluster_dir "$1")/ports"
}

# True when node ID of cluster NAME runs as recorded.
node_running() {
    local pid
    pid="$(recorded_pid "$1" "$2")"
    [[ -n "$pid" ]] && pid_is_node "$pid" "$(cluster_dir "$1")/node-$2"
}

# Starts node ID of cluster NAME in the background (own session, stderr appended to its log) and
# records its pid. Refuses if it already runs.
start_cluster_node() {
    local name="$1" id="$2" dir bin_dir data_dir log pid
    local -a extra=()
    dir="$(cluster_dir "$name")"
    data_dir="$dir/node-$id"
    [[ -d "$data_dir" ]] || die "cluster \"$name\" has no node $id ($data_dir missing)"
    if node_running "$name" "$id"; then
        die "node $id of \"$name\" already runs as pid $(recorded_pid "$name" "$id")"
    fi
    bin_dir="$(cluster_bin_dir "$name")"
    need_bin "$bin_dir/ctld"
    if [[ -s "$dir/ctld-args" ]]; then
        read -r -a extra <"$dir/ctld-args"
    fi
    mkdir -p "$dir/logs"
    log="$dir/logs/node-$id.log"
    echo "--- $(date -u +%FT%TZ) starting node $id" >>"$log"
    # Without job control a background job is no process-group leader, so setsid runs ctld in a
    # new session without forking again and $! is ctld's own pid.
    setsid nohup "$bin_dir/ctld" run --data-dir "$data_dir" "${extra[@]}" </dev/null >>"$log" 2>&1 &
    pid=$!
    record_pid "$name" "$id" "$pid"
    echo "$pid"
}

# Last lines of every node log of cluster NAME, to stderr.
show_log_tails() {
    local dir f
    dir="$(cluster_dir "$1")"
    for f in "$dir"/logs/node-*.log; do
        [[ -f "$f" ]] || continue
        note "----- tail of $f"
        tail -n "${2:-20}" "$f" >&2
    done
}

# Waits (bounded by SECONDS_MAX) until `ctl show-controller NAME --format json` names a leader and
# prints its node id. CTL is the ctl binary.
wait_for_leader() {
    local name="$1" seconds_max="$2" ctl="$3" deadline out leader
    deadline=$((SECONDS + seconds_max))
    while ((SECONDS < deadline)); do
        if out="$(timeout 10 "$ctl" show-controller "$name" --format json 2>/dev/null)"; then
            leader="$(python3 -c 'import json,sys
d = json.load(sys.stdin); c = next(iter(d.values()))
print("" if c.get("leader") is None else c["leader"])' <<<"$out" 2>/dev/null || true)"
            if [[ -n "$leader" ]]; then
                echo "$leader"
                return 0
            fi
        fi
        sleep 0.3
    done
    return 1
}

# Prints the pids (= process group ids) of the workloads an agentd data dir records, one per line.
workload_pids() {
    local state="$1/state.json"
    [[ -f "$state" ]] || return 0
    python3 - "$state" <<'PY'
import json, sys
for unit in json.load(open(sys.argv[1])).get("units", {}).values():
    workload = unit.get("workload") or {}
    if workload.get("pid"):
        print(workload["pid"])
PY
}

# Stops the workload process groups recorded in an agentd data dir (they outlive agentd by design).
stop_workloads() {
    local pid
    for pid in $(workload_pids "$1"); do
        kill -TERM -- "-$pid" 2>/dev/null || true
    done
    for pid in $(workload_pids "$1"); do
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 -- "-$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
}
