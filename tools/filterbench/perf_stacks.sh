#!/bin/sh
# Profile both ip_stack processes while udp_rr (32 in flight) runs through
# them with rules_<N>.nft loaded (N=none: no ruleset): `perf record -g` on
# the two stack pids for PERF_SECS, then `perf report --no-children` top
# lines. Knobs: N (1000), PERF_SECS (4), RULEDIR, OUTDIR (perf.data and the
# report; default a temp dir that is removed), BIN.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
N=${N:-1000}; PERF_SECS=${PERF_SECS:-4}; YIELD_US=${YIELD_US:-200}; export FRAGNET_YIELD_US=$YIELD_US
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
TMP=$(mktemp -d /tmp/fnfb_perf.XXXXXX); OUTDIR=${OUTDIR:-$TMP}
NS=fnfb$$
cleanup() { ip netns pids $NS 2>/dev/null | xargs -r kill 2>/dev/null || true; ip netns del $NS 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT INT TERM
if [ -z "${RULEDIR:-}" ]; then RULEDIR=$TMP/rules; python3 "$HERE/gen_rules.py" "$RULEDIR" --sizes "$N" >&2; fi
NFT=""; [ "$N" != none ] && NFT="<nftables file=\"$RULEDIR/rules_$N.nft\"/>"
ip netns add $NS; ip -n $NS link set lo up
cat > "$TMP/run.xml" <<X
<config control="$TMP/run.sock">
  <start name="switch"><binary name="nic_switch"/><affinity cpu="1"/><provides><service name="Nic"/></provides></start>
  <start name="a_stack"><binary name="ip_stack"/><affinity cpu="1"/><config ip="10.90.0.10/24" yield_us="$YIELD_US">$NFT</config>
    <route><service name="Nic"><child name="switch"/></service></route><provides><service name="Socket"/></provides></start>
  <start name="a_app"><binary name="udp_echo"/><config port="7"/><affinity cpu="1"/><route><service name="Socket"><child name="a_stack"/></service></route></start>
  <start name="b_stack"><binary name="ip_stack"/><affinity cpu="0"/><config ip="10.90.0.20/24" yield_us="$YIELD_US">$NFT</config>
    <route><service name="Nic"><child name="switch"/></service></route><provides><service name="Socket"/></provides></start>
  <start name="b_app"><binary name="udp_rr"/><config server="10.90.0.10:7" inflight="32" duration="$((PERF_SECS + 3))" delay="0.5" out="$TMP/rr.out"/><affinity cpu="0"/><route><service name="Socket"><child name="b_stack"/></service></route></start>
</config>
X
ip netns exec $NS "$BIN/fragnet" run "$TMP/run.xml" > "$TMP/run.log" 2>&1 &
FPID=$!
sleep 2.5
PIDS=$(ip netns pids $NS | while read p; do [ "$(cat /proc/$p/comm 2>/dev/null)" = ip_stack ] && echo $p; done | tr '\n' ',' | sed 's/,$//')
echo "ip_stack pids: $PIDS" >&2
perf record -g -o "$OUTDIR/perf.data" -p "$PIDS" -- sleep "$PERF_SECS" 2> "$TMP/perf.err" || { cat "$TMP/perf.err"; exit 1; }
i=0; while [ ! -s "$TMP/rr.out" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
kill $FPID 2>/dev/null || true; wait $FPID 2>/dev/null || true
cat "$TMP/rr.out"
perf report -i "$OUTDIR/perf.data" --no-children --percent-limit 0.7 --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -60
