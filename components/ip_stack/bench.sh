#!/bin/sh
# Benchmarks of the fragnet stack against Linux kernel sockets, same programs:
#   UDP request/response (udp_rr -> udp_echo), 1 and 32 in flight;
#   TCP bulk (tcp_bulk client -> tcp_bulk server).
# fragnet: two apps on two ip_stacks through nic_switch (server trio on CPU 1,
# client pair on CPU 0). kernel: the same binaries with --net kernel over
# loopback in a private netns, server on CPU 1, client on CPU 0.
# Knobs: YIELD_US (idle yield before sleeping), INFLIGHT ("1 32"), RULES
# (an nft file both stacks load, e.g. components/ip_stack/bench_rules.nft),
# SKIP_KERNEL=1 (fragnet only), KEEP=1 (keep logs).
# Usage: components/ip_stack/bench.sh [seconds]   (needs root; release build:
#   cargo build --release -p fragnet_init -p nic_switch -p ip_stack -p fragnet_apps)
set -eu
SECS=${1:-5}
# Idle policy of stacks and apps: yield this long before sleeping.
YIELD_US=${YIELD_US:-200}
export FRAGNET_YIELD_US=$YIELD_US
# RULES=file: both stacks load this nft ruleset (the filter's cost).
NFT=""
if [ -n "${RULES:-}" ]; then NFT="<nftables file=\"$(realpath "$RULES")\"/>"; fi
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
TMP=$(mktemp -d /tmp/fnstk_bench.XXXXXX)
NS=fnstkb$$
cleanup() { ip netns pids $NS 2>/dev/null | xargs -r kill 2>/dev/null || true; ip netns del $NS 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
[ -n "${KEEP:-}" ] && trap "ip netns del $NS 2>/dev/null; echo logs in $TMP" EXIT
ip netns add $NS; ip -n $NS link set lo up

pair() { # $1 name, $2 server binary+config, $3 client binary+config
cat > "$TMP/$1.xml" <<X
<config control="$TMP/$1.sock">
  <start name="switch"><binary name="nic_switch"/><affinity cpu="1"/><provides><service name="Nic"/></provides></start>
  <start name="a_stack"><binary name="ip_stack"/><affinity cpu="1"/><config ip="10.90.0.10/24" yield_us="$YIELD_US">$NFT</config>
    <route><service name="Nic"><child name="switch"/></service></route><provides><service name="Socket"/></provides></start>
  <start name="a_app">$2<affinity cpu="1"/><route><service name="Socket"><child name="a_stack"/></service></route></start>
  <start name="b_stack"><binary name="ip_stack"/><affinity cpu="0"/><config ip="10.90.0.20/24" yield_us="$YIELD_US">$NFT</config>
    <route><service name="Nic"><child name="switch"/></service></route><provides><service name="Socket"/></provides></start>
  <start name="b_app">$3<affinity cpu="0"/><route><service name="Socket"><child name="b_stack"/></service></route></start>
</config>
X
rm -f "$TMP/$1.out"
ip netns exec $NS "$BIN/fragnet" run "$TMP/$1.xml" > "$TMP/$1.log" 2>&1 &
FPID=$!
i=0; while [ ! -s "$TMP/$1.out" ] && [ $i -lt $((SECS * 10 + 100)) ]; do sleep 0.1; i=$((i+1)); done
kill $FPID 2>/dev/null || true; wait $FPID 2>/dev/null || true
cat "$TMP/$1.out" 2>/dev/null || { echo "$1: no result"; tail -15 "$TMP/$1.log"; }
}

kernel() { # $1 server cmd, $2 client cmd
[ -n "${SKIP_KERNEL:-}" ] && return 0
ip netns exec $NS taskset -c 1 $1 > /dev/null 2>&1 &
SPID=$!
sleep 0.3
ip netns exec $NS taskset -c 0 $2
kill $SPID 2>/dev/null; wait $SPID 2>/dev/null || true
}

for inflight in ${INFLIGHT-1 32}; do
  pair udp$inflight '<binary name="udp_echo"/><config port="7"/>' \
    "<binary name=\"udp_rr\"/><config server=\"10.90.0.10:7\" inflight=\"$inflight\" duration=\"$SECS\" delay=\"0.5\" out=\"$TMP/udp$inflight.out\"/>"
  kernel "$BIN/udp_echo --net kernel --port 7" \
    "$BIN/udp_rr --net kernel --server 127.0.0.1:7 --inflight $inflight --duration $SECS"
done
pair tcp '<binary name="tcp_bulk"/><config listen="9000"/>' \
  "<binary name=\"tcp_bulk\"/><config connect=\"10.90.0.10:9000\" duration=\"$SECS\" delay=\"0.5\" out=\"$TMP/tcp.out\"/>"
kernel "$BIN/tcp_bulk --net kernel --listen 9000" \
  "$BIN/tcp_bulk --net kernel --connect 127.0.0.1:9000 --duration $SECS"
