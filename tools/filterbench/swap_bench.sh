#!/bin/sh
# Ruleset swap under load: filter_rr (32 in flight, counts every request)
# -> udp_echo through two fragnet stacks (same layout as rr_bench.sh), both
# stacks starting with rules_<N>.nft; after WARM seconds the script loads
# rules_<N>b.nft, rules_<N>.nft, ... alternately into a_stack (server) and
# b_stack (client) with nft_load.py (LOADER=py, default: the control
# request of `fragnet nft -f`, with a send buffer large enough for a
# ~490 KiB file) or `fragnet nft --socket S --target T -f FILE`
# (LOADER=fragnet; fails for files above ~208 KiB, see RESULTS.md), SWAPS
# times, GAP seconds apart, timing each command (start to the stack's "ok"). Then it prints filter_rr's summary (sent / answered / lost,
# latency percentiles, longest gap) and, per swap, the worst latency and the
# answers seen from the command's start to 50 ms after its end (from the
# 1 ms timeline). SWAPS=0 gives the control run (same load, no swap).
# Knobs: N (10000), SWAPS (8), GAP (1.0), WARM (2), INFLIGHT (32), RULEDIR,
#   KEEP=1 (keep the temp dir), BIN, YIELD_US.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
N=${N:-10000}; LOADER=${LOADER:-py}; SWAPS=${SWAPS:-8}; GAP=${GAP:-1.0}; WARM=${WARM:-2}; INFLIGHT=${INFLIGHT:-32}
YIELD_US=${YIELD_US:-200}; export FRAGNET_YIELD_US=$YIELD_US
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
TMP=$(mktemp -d /tmp/fnfb_swap.XXXXXX)
NS=fnfb$$
cleanup() { ip netns pids $NS 2>/dev/null | xargs -r kill 2>/dev/null || true; ip netns del $NS 2>/dev/null || true; [ -n "${KEEP:-}" ] && echo "kept $TMP" >&2 || rm -rf "$TMP"; }
trap cleanup EXIT INT TERM
if [ -z "${RULEDIR:-}" ]; then RULEDIR=$TMP/rules; python3 "$HERE/gen_rules.py" "$RULEDIR" --sizes "$N" >&2; fi
DUR=$(python3 -c "print($WARM + $SWAPS * ($GAP + 0.5) + 2)")
ip netns add $NS; ip -n $NS link set lo up
NFT="<nftables file=\"$RULEDIR/rules_$N.nft\"/>"
cat > "$TMP/run.xml" <<X
<config control="$TMP/run.sock">
  <start name="switch"><binary name="nic_switch"/><affinity cpu="1"/><provides><service name="Nic"/></provides></start>
  <start name="a_stack"><binary name="ip_stack"/><affinity cpu="1"/><config ip="10.90.0.10/24" yield_us="$YIELD_US">$NFT</config>
    <route><service name="Nic"><child name="switch"/></service></route><provides><service name="Socket"/></provides></start>
  <start name="a_app"><binary name="udp_echo"/><config port="7"/><affinity cpu="1"/><route><service name="Socket"><child name="a_stack"/></service></route></start>
  <start name="b_stack"><binary name="ip_stack"/><affinity cpu="0"/><config ip="10.90.0.20/24" yield_us="$YIELD_US">$NFT</config>
    <route><service name="Nic"><child name="switch"/></service></route><provides><service name="Socket"/></provides></start>
  <start name="b_app"><binary name="filter_rr"/><config server="10.90.0.10:7" inflight="$INFLIGHT" duration="$DUR" delay="0.5" out="$TMP/rr.out" timeline="$TMP/timeline.txt"/><affinity cpu="0"/><route><service name="Socket"><child name="b_stack"/></service></route></start>
</config>
X
ip netns exec $NS "$BIN/fragnet" run "$TMP/run.xml" > "$TMP/run.log" 2>&1 &
FPID=$!
# wait for the load to start (the socket exists and a little more)
i=0; while [ ! -S "$TMP/run.sock" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
sleep $(python3 -c "print(0.5 + 1.0 + $WARM)")
: > "$TMP/swaps.txt"
s=1
while [ $s -le $SWAPS ]; do
  if [ $((s % 2)) -eq 1 ]; then f=$RULEDIR/rules_${N}b.nft; else f=$RULEDIR/rules_$N.nft; fi
  if [ $(( ((s + 1) / 2) % 2)) -eq 1 ]; then t=a_stack; else t=b_stack; fi
  t0=$(date +%s%N)
  if [ "$LOADER" = fragnet ]; then
    r=$("$BIN/fragnet" nft --socket "$TMP/run.sock" --target $t -f "$f" 2>&1 | tr '\n' ' ') || r="FAILED $r"
  else
    r=$(python3 "$HERE/nft_load.py" "$TMP/run.sock" $t "$f" 2>&1 | tr '\n' ' ') || r="FAILED $r"
  fi
  t1=$(date +%s%N)
  echo "$s $t $(basename $f) $t0 $t1 $r" >> "$TMP/swaps.txt"
  sleep $GAP
  s=$((s+1))
done
i=0; while [ ! -s "$TMP/rr.out" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
# init restarts the client when it exits: keep this run's files
sleep 0.2; cp "$TMP/rr.out" "$TMP/rr.first" 2>/dev/null || true; cp "$TMP/timeline.txt" "$TMP/timeline.first" 2>/dev/null || true
for t in a_stack b_stack; do echo "$t: $("$BIN/fragnet" stats --socket "$TMP/run.sock" $t 2>&1 | grep -E 'filter_generation|drop_filter' | tr '\n' ' ')"; done
kill $FPID 2>/dev/null || true; wait $FPID 2>/dev/null || true
cat "$TMP/rr.first" 2>/dev/null || { echo "no result"; tail -15 "$TMP/run.log"; exit 1; }
python3 - "$TMP/swaps.txt" "$TMP/timeline.first" <<'PY'
import sys
tl = {}
for line in open(sys.argv[2]):
    ms, n, mx = map(int, line.split())
    tl[ms] = (n, mx)
print("swap target file cmd_ms worst_latency_ms_in_window answers_in_window longest_gap_ms reply")
for line in open(sys.argv[1]):
    p = line.split()
    s, t, f, t0, t1 = p[0], p[1], p[2], int(p[3]), int(p[4])
    a, b = t0 // 1_000_000, t1 // 1_000_000 + 50
    worst = max((tl.get(m, (0, 0))[1] for m in range(a, b + 1)), default=0)
    answers = sum(tl.get(m, (0, 0))[0] for m in range(a, b + 1))
    gap = run = 0
    for m in range(a, b + 1):
        run = run + 1 if tl.get(m, (0, 0))[0] == 0 else 0
        gap = max(gap, run)
    print(f"{s} {t} {f} {(t1 - t0) / 1e6:.1f} {worst / 1000:.2f} {answers} {gap} {' '.join(p[5:])}")
PY
