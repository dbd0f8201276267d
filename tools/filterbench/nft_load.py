#!/usr/bin/env python3
"""Load a ruleset file into a fragnet component through init's control
socket, like `fragnet nft --socket S --target T -f FILE`, but with the
socket's send buffer raised (SO_SNDBUFFORCE, root) so that a message larger
than the default unix-socket send buffer (~208 KiB, e.g. a 10,000-rule file
of ~490 KiB) can be sent in one SEQPACKET datagram; prints the reply and the
time from the send to the reply.
Usage: nft_load.py SOCKET TARGET FILE"""
import socket
import sys
import time

SO_SNDBUFFORCE = 32

sock_path, target, path = sys.argv[1:4]
text = open(path).read()
msg = f"nft {target} load\n{text}".encode()
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, len(msg) + 65536)
s.connect(sock_path)
t0 = time.monotonic()
s.send(msg)
s.settimeout(15)
reply = s.recv(1 << 20).decode(errors="replace")
t1 = time.monotonic()
ok = reply.startswith("ok")
print(f"{'ok' if ok else 'ERROR'} {(t1 - t0) * 1000:.1f} ms {len(msg)} bytes {reply.strip()[:200]!r}")
sys.exit(0 if ok else 1)
