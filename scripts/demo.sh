#!/usr/bin/env bash
# The main job on its default configuration: builds fragnet, starts
# run/showcase.xml inside a private network namespace, and shows it working
# from the Linux side: ping through TAP and switch, UDP echo through the
# application's own stack, a filter rule loaded at run time by the control
# utility, counters. Everything it creates is removed on exit. Needs root.
#   ./scripts/demo.sh [--keep]   (--keep: leave it running until Ctrl-C)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
echo "== building (release)"
cargo build --release --workspace --bins -q
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
NS=fndemo$$
SCRIPT=$PWD/run/showcase.xml
LOG=$(mktemp /tmp/fragnet-demo.XXXXXX.log)
FN="ip netns exec $NS $BIN/fragnet"
cleanup() {
    [ -n "${PID:-}" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up

udp() { # send a datagram to the echo app from the Linux side, print the answer
    ip netns exec "$NS" python3 - "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.0)
s.sendto(sys.argv[1].encode(), ("10.77.0.10", 7))
try:
    print("   echo:", s.recvfrom(2048)[0].decode())
except socket.timeout:
    print("   no answer (timed out)")
PY
}

echo "== fragnet run run/showcase.xml   (log: $LOG)"
ip netns exec "$NS" env FRAGNET_BIN_DIR="$BIN" "$BIN/fragnet" run "$SCRIPT" >"$LOG" 2>&1 &
PID=$!
for _ in $(seq 50); do $FN ps --script "$SCRIPT" >/dev/null 2>&1 && break; sleep 0.1; done
sleep 0.5
$FN ps --script "$SCRIPT"
echo "== ping the frame endpoint and the application's stack (host -> TAP -> switch)"
ip netns exec "$NS" ping -n -c 3 -i 0.2 10.77.0.11 | tail -2
ip netns exec "$NS" ping -n -c 3 -i 0.2 10.77.0.10 | tail -2
echo "== UDP to udp_echo on its own stack (allowed by run/etc/echo_stack.nft)"
udp "hello fragnet"
echo "== the privileged utility swaps in run/etc/echo_stack_closed.nft (the application cannot)"
$FN nft --script "$SCRIPT" --target echo_stack -f "$PWD/run/etc/echo_stack_closed.nft"
udp "this one is filtered"
$FN nft --script "$SCRIPT" --target echo_stack list counters
echo "== the original rule file is loaded again"
$FN nft --script "$SCRIPT" --target echo_stack -f "$PWD/run/etc/echo_stack.nft"
udp "back again"
echo "== a rule added at run time"
$FN nft --script "$SCRIPT" --target echo_stack add rule inet filter output counter
echo "== ruleset with counters"
$FN nft --script "$SCRIPT" --target echo_stack list ruleset
echo "== counters of the stack and the switch"
$FN stats --script "$SCRIPT" echo_stack | head -20
$FN stats --script "$SCRIPT" switch | head -20
if [ "${1:-}" = "--keep" ]; then
    echo "== running; Ctrl-C to stop (in the namespace: ip netns exec $NS bash)"
    wait "$PID"
fi
echo "== stopping (SIGTERM): devices and processes are removed"
kill -TERM "$PID"; wait "$PID" || true; PID=
tail -3 "$LOG"
