#!/usr/bin/env bash
# Installs the system packages fragnet's tests and benchmarks use, on a fresh
# Debian machine, as root. Idempotent: does nothing when all are present.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip        || need+=(iproute2)
have ping      || need+=(iputils-ping)
have nft       || need+=(nftables)
have setpriv   || need+=(util-linux)
have size      || need+=(binutils)
have python3   || need+=(python3)

if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup: missing packages ${need[*]}; run as root to install them" >&2
        exit 1
    fi
    echo "setup: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# TAP devices need the tun module and its device node.
if [ ! -e /dev/net/tun ]; then
    modprobe tun 2>/dev/null || true
    if [ ! -e /dev/net/tun ]; then
        mkdir -p /dev/net && mknod /dev/net/tun c 10 200 && chmod 0666 /dev/net/tun
    fi
fi
echo "setup: ok"
