#!/bin/sh
# UDP request/response through two fragnet stacks with growing rulesets.
# Same setup as components/ip_stack/bench.sh (udp_rr -> udp_echo, two apps on
# two ip_stacks through nic_switch; server trio on CPU 1, client pair on
# CPU 0), both stacks loading the same ruleset; UDP only, and the
# configurations alternate inside ONE run: for each repetition, for each
# in-flight count, every ruleset once (order rotated per repetition), so slow
# phases of this shared machine hit all configurations alike.
# Configurations: "none" (no ruleset: the filter is not consulted) and
# rules_N.nft from gen_rules.py (N generated rules between
# `ct state established,related accept` and the echo accept; policy drop).
# Knobs: SECS (3), REPS (5), SIZES ("0 10 100 1000"), INFLIGHT ("32 1"),
#   RULEDIR (generated if unset), OUT (raw result lines; default stdout),
#   YIELD_US (200), BIN.
# Usage: tools/filterbench/rr_bench.sh  (root; release build of fragnet_init
#   nic_switch ip_stack fragnet_apps); summary: summarize.py OUT
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
SECS=${SECS:-3}; REPS=${REPS:-5}; SIZES=${SIZES:-0 10 100 1000}
YIELD_US=${YIELD_US:-200}; export FRAGNET_YIELD_US=$YIELD_US
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
TMP=$(mktemp -d /tmp/fnfb_rr.XXXXXX)
NS=fnfb$$
cleanup() { ip netns pids $NS 2>/dev/null | xargs -r kill 2>/dev/null || true; ip netns del $NS 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT INT TERM
if [ -z "${RULEDIR:-}" ]; then RULEDIR=$TMP/rules; python3 "$HERE/gen_rules.py" "$RULEDIR" --sizes "$(echo $SIZES | tr ' ' ,)" >&2; fi
ip netns add $NS; ip -n $NS link set lo up

run1() { # $1 config name, $2 inflight
  if [ "$1" = none ]; then NFT=""; else NFT="<nftables file=\"$RULEDIR/rules_$1.nft\"/>"; fi
  cat > "$TMP/run.xml" <<X
<config control="$TMP/run.sock">
  <start name="switch"><binary name="nic_switch"/><affinity cpu="1"/><provides><service name="Nic"/></provides></start>
  <start name="a_stack"><binary name="ip_stack"/><affinity cpu="1"/><config ip="10.90.0.10/24" yield_us="$YIELD_US">$NFT</config>
    <route><service name="Nic"><child name="switch"/></service></route><provides><service name="Socket"/></provides></start>
  <start name="a_app"><binary name="udp_echo"/><config port="7"/><affinity cpu="1"/><route><service name="Socket"><child name="a_stack"/></service></route></start>
  <start name="b_stack"><binary name="ip_stack"/><affinity cpu="0"/><config ip="10.90.0.20/24" yield_us="$YIELD_US">$NFT</config>
    <route><service name="Nic"><child name="switch"/></service></route><provides><service name="Socket"/></provides></start>
  <start name="b_app"><binary name="udp_rr"/><config server="10.90.0.10:7" inflight="$2" duration="$SECS" delay="0.5" out="$TMP/run.out"/><affinity cpu="0"/><route><service name="Socket"><child name="b_stack"/></service></route></start>
</config>
X
  rm -f "$TMP/run.out"
  ip netns exec $NS "$BIN/fragnet" run "$TMP/run.xml" > "$TMP/run.log" 2>&1 &
  FPID=$!
  i=0; while [ ! -s "$TMP/run.out" ] && [ $i -lt $((SECS * 10 + 100)) ]; do sleep 0.1; i=$((i+1)); done
  kill $FPID 2>/dev/null || true; wait $FPID 2>/dev/null || true
  if [ -s "$TMP/run.out" ]; then
    echo "rep=$rep rules=$1 $(cat "$TMP/run.out")"
  else
    echo "rep=$rep rules=$1 inflight=$2 NO RESULT: $(tail -3 "$TMP/run.log" | tr '\n' ' ')"
  fi
}

CFGS="none $SIZES"
NCFG=$(echo $CFGS | wc -w)
rep=1
while [ $rep -le $REPS ]; do
  for inflight in ${INFLIGHT:-32 1}; do
    # rotate the order by the repetition number
    set -- $CFGS; k=$(( (rep - 1) % NCFG )); j=0
    while [ $j -lt $k ]; do c=$1; shift; set -- "$@" $c; j=$((j+1)); done
    for cfg in "$@"; do run1 $cfg $inflight; done
  done
  rep=$((rep+1))
done | tee ${OUT:-/dev/null}
