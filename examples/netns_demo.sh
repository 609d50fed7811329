#!/usr/bin/env bash
# netns_demo.sh: a three-device edgemesh LAN on one Linux machine, and a pulled cable.
#
#   sudo examples/netns_demo.sh            # about 30 s
#   sudo examples/netns_demo.sh --quick    # a shorter load, for CI
#
# Each "device" is a network namespace with its own address (10.78.0.1-3) on
# a private bridge with no address of its own, so nothing here touches the
# machine's real interfaces or routes. One `edgemesh node` runs in each, with
# a shared mesh key and mDNS bound to the namespace's own interface: the nodes
# find each other by multicast alone. A client in h1, given all three nodes'
# addresses, then sends digits for a while; h3's cable is pulled mid-run (its bridge-side veth
# set down), h1 and h2 declare it dead and carry the load on; the cable is
# plugged back and h3 rejoins. Everything it made is removed on exit, on
# Ctrl-C and on failure.
#
# Each node acts as a device that takes 50 ms per request (--emulate-speed 1
# --emulate-service-ms 50, one slot; the real model still runs), so that one
# machine shows three devices sharing load.
#
# Needs root, iproute2 (`ip`) and Python with edgemesh installed: the
# repository's .venv if there is one, else python3; set PYTHON to choose.
# Exit status: 0 the demo ran and the load carried on; 1 it failed;
# 77 it cannot run here (not root, no `ip`, no network namespaces).
# EM_DEMO_PREFIX (default em-demo) names what it makes; a run that was
# SIGKILLed leaves those behind, and the next run with that prefix removes them.
# EM_DEMO_LOGS=DIR keeps the nodes' logs there.

set -euo pipefail

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h | --help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

PREFIX=${EM_DEMO_PREFIX:-em-demo}
SUBNET=10.78.0
PORT=7700
HOSTS=(h1 h2 h3)
RATE=45 # requests per second from h1: 3/4 of three nodes' capacity, more than two can take
if ((QUICK)); then DURATION=9; PULL_AT=2; else DURATION=16; PULL_AT=4; fi
HOLD_S=2                       # the cable stays out this long after h3 is declared dead
FORM_S=30 DEAD_S=15 REJOIN_S=30  # bounds, not targets

skip() { echo "SKIP: $*" >&2; exit 77; }
step() { printf '\n==> %s\n' "$*"; }
say() { printf '    %s\n' "$*"; }

[[ $PREFIX =~ ^[a-z][a-z0-9-]{0,10}$ ]] || { echo "EM_DEMO_PREFIX: 1-11 of [a-z0-9-]" >&2; exit 2; }
[[ $(uname -s) == Linux ]] || skip "network namespaces need Linux"
((EUID == 0)) || skip "network namespaces need root (sudo $0)"
command -v ip >/dev/null || skip "the \`ip\` command (iproute2) is not installed"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
"$PYTHON" -c 'import mesh' 2>/dev/null ||
    { echo "$PYTHON cannot import mesh: pip install edgemesh first, or set PYTHON" >&2; exit 1; }

ns() { echo "$PREFIX-$1"; }               # h1 -> em-demo-h1
veth() { echo "$PREFIX-v${1#h}"; }        # h1 -> em-demo-v1 (the bridge-side end)
addr() { echo "$SUBNET.${1#h}"; }         # h1 -> 10.78.0.1
BRIDGE=$PREFIX-br
# Children do not inherit the lock (fd 9): a node left running must not hold it.
in_ns() { local host=$1; shift; ip netns exec "$(ns "$host")" "$@" 9>&-; }

# One run per prefix at a time; whatever that prefix left behind is ours to remove.
LOCK_DIR=/run/lock; [[ -d $LOCK_DIR ]] || LOCK_DIR=/tmp
exec 9>"$LOCK_DIR/$PREFIX.lock"
if command -v flock >/dev/null && ! flock -n 9; then
    echo "another netns_demo.sh with prefix $PREFIX is running" >&2; exit 1
fi

WORK=""
PIDS=()
remove_lab() {
    local host pid
    for host in "${HOSTS[@]}"; do
        # Anything still inside our namespaces is ours: this run's, or a killed run's.
        for pid in $(ip netns pids "$(ns "$host")" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null || true
        done
        ip netns del "$(ns "$host")" 2>/dev/null || true # takes its veth pair with it
        ip link del "$(veth "$host")" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
}
cleanup() {
    local status=$? pid i
    trap - EXIT INT TERM
    set +e
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for ((i = 0; i < 50; i++)); do
        alive=0; for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break; sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    wait 2>/dev/null
    if ((status != 0)) && [[ -n $WORK ]]; then
        for host in "${HOSTS[@]}"; do
            [[ -f $WORK/$host.log ]] && { echo "--- $host's node log (last lines) ---"; tail -n 15 "$WORK/$host.log"; }
        done
    fi
    remove_lab
    if [[ -n $WORK ]]; then
        if [[ -n ${EM_DEMO_LOGS:-} ]]; then
            mkdir -p "$EM_DEMO_LOGS" && cp "$WORK"/*.log "$EM_DEMO_LOGS"/ 2>/dev/null &&
                echo "==> the nodes' logs are in $EM_DEMO_LOGS"
        fi
        rm -rf "$WORK"
    fi
    echo
    case $status in
        0) echo "==> cleaned up: namespaces, bridge and node processes removed" ;;
        77) echo "==> skipped; cleaned up" ;;
        *) echo "==> failed (exit $status); cleaned up" ;;
    esac
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

remove_lab
WORK=$(mktemp -d /tmp/edgemesh-netns-demo.XXXXXX)
chmod 700 "$WORK"

step "1. a bridge ($BRIDGE) and three hosts, each a network namespace on it"
ip link add "$BRIDGE" type bridge mcast_snooping 0 2>/dev/null ||
    skip "cannot make a bridge here (ip link add type bridge failed)"
# Bridged traffic bypasses the host's iptables where the kernel allows it per bridge.
ip link set "$BRIDGE" type bridge nf_call_iptables 0 2>/dev/null || true
ip link set "$BRIDGE" up
for host in "${HOSTS[@]}"; do
    ip netns add "$(ns "$host")" 2>/dev/null || skip "cannot make network namespaces here"
    ip link add "$(veth "$host")" type veth peer name eth0 netns "$(ns "$host")"
    ip link set "$(veth "$host")" multicast on master "$BRIDGE" up
    in_ns "$host" ip link set lo up
    in_ns "$host" ip addr add "$(addr "$host")/24" dev eth0
    in_ns "$host" ip link set eth0 multicast on up
    say "$host: namespace $(ns "$host"), eth0 $(addr "$host")/24, cable $(veth "$host")"
done

step "2. a mesh key, and an edgemesh node on each host (mDNS on its own interface)"
KEY=$WORK/mesh.key
"$PYTHON" -c 'import secrets; print(secrets.token_hex(32))' >"$KEY"
chmod 600 "$KEY"
for host in "${HOSTS[@]}"; do
    a=$(addr "$host")
    args=(--name "$host" --host "$a" --port "$PORT" --interface "$a" --mesh-key-file "$KEY"
        --model digits-small --slots 1 --emulate-speed 1 --emulate-service-ms 50
        --default-deadline-ms 10000 --ready-file "$WORK/$host.ready")
    say "[$host] edgemesh node ${args[*]//$WORK/WORK}"
    # Not through in_ns: a backgrounded function would be a subshell, and $! its pid.
    ip netns exec "$(ns "$host")" "$PYTHON" -m mesh node "${args[@]}" >"$WORK/$host.log" 2>&1 9>&- &
    PIDS+=($!) # `ip netns exec` execs the command: this is the node's pid
done
deadline=$((SECONDS + 60))
for i in "${!HOSTS[@]}"; do
    until [[ -s $WORK/${HOSTS[i]}.ready ]]; do
        kill -0 "${PIDS[i]}" 2>/dev/null || { echo "node ${HOSTS[i]} exited" >&2; exit 1; }
        ((SECONDS < deadline)) || { echo "node ${HOSTS[i]} did not start within 60 s" >&2; exit 1; }
        sleep 0.1
    done
done
say "all three listening on port $PORT"

# What a node says of its peers ("h2=alive h3=dead"), or with --counters some counters.
cat >"$WORK/view.py" <<'EOF'
import asyncio, sys
from pathlib import Path
from mesh import MeshClient

async def main(address: str, key_file: str, counters: bool) -> None:
    key = Path(key_file).read_bytes()
    async with MeshClient(address, mesh_key=key, timeout=2.0, connect_timeout=2.0) as client:
        status = await client.status()
    if counters:
        names = ("requests", "served_local", "stolen_out", "requeued", "failed", "refused")
        print(", ".join(f"{name} {status['counters'].get(name)}" for name in names))
        return
    peers = sorted(status["peers"], key=lambda peer: peer["name"])
    print(" ".join(f"{peer['name']}={peer['state']}" for peer in peers))

asyncio.run(main(sys.argv[1], sys.argv[2], "--counters" in sys.argv[3:]))
EOF
view() { in_ns "$1" "$PYTHON" "$WORK/view.py" "$(addr "$1"):$PORT" "$KEY" 2>/dev/null || echo "(no answer)"; }
declare -A VIEW
views() { local host; for host in "$@"; do VIEW[$host]=$(view "$host"); done; }
sees() { [[ " ${VIEW[$1]:-} " == *" $2=$3 "* ]]; }   # sees OBSERVER PEER STATE
formed() {
    views "${HOSTS[@]}"
    local a b
    for a in "${HOSTS[@]}"; do for b in "${HOSTS[@]}"; do
        [[ $a == "$b" ]] || sees "$a" "$b" alive || return 1
    done; done
}
h3_dead() { views h1 h2; sees h1 h3 dead && sees h2 h3 dead; }
now() { echo "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# wait_until WHAT SECONDS CHECK: poll CHECK until it succeeds; fail after SECONDS.
wait_until() {
    local what=$1 bound=$2 check=$3 started; started=$(now)
    local until=$((SECONDS + bound))
    until "$check"; do
        if ((SECONDS >= until)); then
            echo "FAILED: $what: not within $bound s" >&2
            local host; for host in "${!VIEW[@]}"; do echo "  $host sees: ${VIEW[$host]}" >&2; done
            return 1
        fi
        sleep 0.2
    done
    say "$what: $(since "$started") s"
}
show_views() { local host; for host in "$@"; do say "$host sees: ${VIEW[$host]}"; done; }

step "3. waiting for the nodes to find each other by mDNS (no --peer given)"
wait_until "mesh of three formed" "$FORM_S" formed ||
    { echo "  (mDNS did not cross the bridge: is multicast filtered here?)" >&2; exit 1; }
show_views "${HOSTS[@]}"
say "h1's status (edgemesh status --node $(addr h1):$PORT --mesh-key-file mesh.key), peers:"
in_ns h1 "$PYTHON" -m mesh status --node "$(addr h1):$PORT" --mesh-key-file "$KEY" |
    sed -n '/^peer/,$p' | sed 's/^/      /'

step "4. a client in h1 sends $((RATE * DURATION)) digits over $DURATION s"
say "it is given all three addresses: it uses the least loaded node, and fails over if it goes"
say "(each node acts as a device taking 50 ms per request, one at a time: 20 requests/s)"
cat >"$WORK/load.py" <<'EOF'
import asyncio, sys
from collections import Counter
from pathlib import Path
import numpy as np
from mesh import MeshClient, MeshError
from mesh.config import bundled_models_dir

async def main(addresses: list[str], key_file: str, rate: float, seconds: float) -> int:
    with np.load(bundled_models_dir() / "digits-test.npz") as data:
        pixels, truth = data["X"], data["y"]
    total = int(rate * seconds)
    ran_on: Counter[str] = Counter()
    this_second: Counter[str] = Counter()
    failed: list[str] = []
    correct = 0

    async def one(i: int) -> None:
        nonlocal correct
        row = i % len(pixels)
        try:
            out = await client.infer("digits-small", {"X": pixels[row : row + 1]})
        except MeshError as exc:
            failed.append(f"{type(exc).__name__}: {exc}")
            return
        ran_on[out.ran_on] += 1
        this_second[out.ran_on] += 1
        correct += int(out["label"][0] == truth[row])

    async def report() -> None:
        for tick in range(1, 10 * int(seconds) + 60):  # bounded: the load ends well before
            await asyncio.sleep(1.0)
            done = sum(ran_on.values())
            shares = ", ".join(f"{n} {c:2d}" for n, c in sorted(this_second.items())) or "-"
            print(f"  load | t={tick:2d} s  answered {done:3d}  failed {len(failed)}"
                  f"  this second ran on: {shares}", flush=True)
            this_second.clear()

    key = Path(key_file).read_bytes()
    # A one-second heartbeat: a client whose node's cable is pulled moves on
    # within a second, carrying a second's worth of requests with it. (There
    # is no gateway here, so the nodes take a backlog of up to 10 s rather
    # than refuse it: see --default-deadline-ms above.)
    async with MeshClient(addresses, mesh_key=key, timeout=10.0, heartbeat=1.0) as client:
        loop = asyncio.get_running_loop()
        start = loop.time()
        reporter = asyncio.create_task(report())
        async with asyncio.TaskGroup() as requests:
            for i in range(total):
                await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
                requests.create_task(one(i))
        reporter.cancel()
    answered = sum(ran_on.values())
    print(f"  load | done: {total} sent, {answered} answered, {len(failed)} failed,"
          f" accuracy {correct / max(answered, 1):.4f}; ran on: "
          + ", ".join(f"{n} {c}" for n, c in sorted(ran_on.items())), flush=True)
    for reason in Counter(failed).most_common(5):
        print(f"  load | failure: {reason[0]} (x{reason[1]})", flush=True)
    return 0 if answered == total else 1

sys.exit(asyncio.run(main(sys.argv[1].split(","), sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))))
EOF
ALL=$(addr h1):$PORT,$(addr h2):$PORT,$(addr h3):$PORT
ip netns exec "$(ns h1)" "$PYTHON" "$WORK/load.py" "$ALL" "$KEY" "$RATE" "$DURATION" 9>&- &
LOAD=$!
PIDS+=("$LOAD")
sleep "$PULL_AT"

step "5. t=$PULL_AT s: pulling h3's cable (ip link set $(veth h3) down)"
ip link set "$(veth h3)" down
wait_until "h1 and h2 declared h3 dead" "$DEAD_S" h3_dead
show_views h1 h2
sleep "$HOLD_S"

step "6. plugging h3's cable back in (ip link set $(veth h3) up)"
ip link set "$(veth h3)" up
wait_until "h3 alive again on every node" "$REJOIN_S" formed
show_views "${HOSTS[@]}"

step "7. waiting for the load to finish"
load_status=0
wait "$LOAD" || load_status=$?
if ((load_status != 0)); then
    echo "FAILED: not every request was answered" >&2
    exit 1
fi
for host in "${HOSTS[@]}"; do
    say "$host's counters: $(in_ns "$host" "$PYTHON" "$WORK/view.py" "$(addr "$host"):$PORT" "$KEY" --counters)"
done

step "OK: the mesh formed by mDNS, lost h3, kept answering, and took h3 back"
