#!/usr/bin/env python3
"""Ruleset generator for the fragnet filtering benchmarks.

Writes OUTDIR/rules_<N>.nft for N in 0 10 100 1000 10000 (and the variant
OUTDIR/rules_<N>b.nft, the same size with other ports and prefixes, for the
swap test), then checks every file with `nft -c -f` (Linux's own parser, no
change to the kernel ruleset). Shape of a file, as a host firewall is
usually written:

    table inet filter {
        set blocked  { type ipv4_addr; flags interval; elements = {...} }
        set allowed_ports { type inet_service; elements = {...} }
        chain input { type filter hook input priority filter; policy drop;
            ct state established,related accept        # rule 1
            <N generated rules: port and prefix matches, the named sets>
            ip saddr 10.90.0.0/24 udp dport 7 accept    # the echo service
        }
        chain output { type filter hook output priority filter; policy accept; }
    }

None of the N generated rules matches the benchmark traffic (UDP between
10.90.0.10:7 and 10.90.0.20:ephemeral), so a new flow walks all of them and
is accepted by the last rule; packets of an established flow are accepted by
the first.

Usage: gen_rules.py OUTDIR [--sizes 0,10,100,1000,10000] [--no-check]
"""
import argparse
import os
import subprocess
import sys


def rule(i, variant):
    """The i-th generated rule; `variant` shifts ports/prefixes."""
    off = 7 * variant
    a, b = (i // 256) % 256, i % 256
    k = i % 8
    if k == 0:
        return f"tcp dport {1024 + (i + off) % 60000} counter accept"
    if k == 1:
        return f"ip saddr 10.{(a + variant) % 80}.{b}.0/24 udp dport {20000 + (i + off) % 40000} accept"
    if k == 2:
        return "ip saddr @blocked drop"
    if k == 3:
        return (f"udp dport {{ {30000 + (i + off) % 30000}, {31000 + (i + off) % 30000} }} "
                f"ip saddr != 10.0.0.0/8 drop")
    if k == 4:
        return f"ip saddr 172.{16 + (a % 16)}.{b}.0/24 tcp dport @allowed_ports accept"
    if k == 5:
        return f"ip daddr 192.0.2.{b} tcp dport {{ 80, 443 }} ct state new accept"
    if k == 6:
        return f"ip6 saddr 2001:db8:{(i + off) % 65536:x}::/48 tcp dport 22 accept"
    return f"tcp flags syn tcp dport {2000 + (i + off) % 50000} ip saddr 198.51.100.0/24 drop"


def ruleset(n, variant=0):
    out = [
        "#!/usr/sbin/nft -f",
        f"# fragnet filterbench: {n} generated rules (variant {variant})",
        "table inet filter {",
        "\tset blocked {",
        "\t\ttype ipv4_addr",
        "\t\tflags interval",
        "\t\telements = { 192.168.0.0/16, 172.16.0.0/12, 100.64.0.0/10, 203.0.113.0/24 }",
        "\t}",
        "\tset allowed_ports {",
        "\t\ttype inet_service",
        "\t\telements = { 22, 80, 443, 8080, %d }" % (9000 + variant),
        "\t}",
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy drop;",
        "\t\tct state established,related accept",
    ]
    out += ["\t\t" + rule(i, variant) for i in range(n)]
    out += [
        "\t\tip saddr 10.90.0.0/24 udp dport 7 accept",
        "\t}",
        "\tchain output {",
        "\t\ttype filter hook output priority filter; policy accept;",
        "\t}",
        "}",
        "",
    ]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--sizes", default="0,10,100,1000,10000")
    ap.add_argument("--no-check", action="store_true")
    o = ap.parse_args()
    os.makedirs(o.outdir, exist_ok=True)
    files = []
    for n in [int(s) for s in o.sizes.split(",")]:
        for variant, suffix in ((0, ""), (1, "b")):
            path = os.path.join(o.outdir, f"rules_{n}{suffix}.nft")
            with open(path, "w") as f:
                f.write(ruleset(n, variant))
            files.append(path)
    if not o.no_check:
        for p in files:
            r = subprocess.run(["nft", "-c", "-f", p], capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"nft -c -f {p} failed:\n{r.stderr}")
            print(f"nft -c -f {p}: ok ({os.path.getsize(p)} bytes)")
    else:
        print("\n".join(files))


if __name__ == "__main__":
    main()
