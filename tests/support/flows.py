#!/usr/bin/env python3
"""A corpus of flows for the differential tests (tests/export.rs): one side serves,
the other tries every flow at once, and each flow's outcome is one word.

serve ADDRS PORTS
    echo servers on every address x port (comma-separated lists), TCP and UDP, each
    socket bound to its own address so that a UDP answer leaves from the address the
    datagram was sent to; runs until killed
probe FILE
    FILE holds a JSON list of flows {"proto": "tcp"|"udp", "src": ADDR|null, "dst":
    ADDR, "port": N}; all are tried concurrently (connect, send one byte, read the echo;
    UDP on a connected socket, so an ICMP error shows as ECONNREFUSED) and a JSON list
    of outcomes is printed in the same order: ok | timeout | EPERM | ECONNREFUSED | ...
"""
import errno
import json
import selectors
import socket
import sys
from concurrent.futures import ThreadPoolExecutor

# How long a flow waits for its echo: a dropped packet shows as "timeout".
WAIT = 1.5


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def serve(args):
    addrs, ports = args[0].split(","), [int(p) for p in args[1].split(",")]
    sel = selectors.DefaultSelector()
    for addr in addrs:
        for port in ports:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                s = socket.socket(family(addr), kind)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if s.family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((addr, port))
                if kind == socket.SOCK_STREAM:
                    s.listen(64)
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, kind)
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            try:
                if key.data == socket.SOCK_DGRAM:
                    data, peer = s.recvfrom(2048)
                    s.sendto(data, peer)
                else:
                    c, _ = s.accept()
                    c.settimeout(WAIT)
                    try:
                        data = c.recv(2048)
                        if data:
                            c.sendall(data)
                    finally:
                        c.close()
            except OSError:
                pass


def one(flow):
    kind = socket.SOCK_STREAM if flow["proto"] == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family(flow["dst"]), kind)
    s.settimeout(WAIT)
    try:
        if flow.get("src"):
            s.bind((flow["src"], 0))
        s.connect((flow["dst"], flow["port"]))
        s.send(b"x")
        return "ok" if s.recv(16) == b"x" else "bad-echo"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()


def probe(args):
    with open(args[0]) as f:
        flows = json.load(f)
    with ThreadPoolExecutor(max_workers=64) as pool:
        print(json.dumps(list(pool.map(one, flows))))


if __name__ == "__main__":
    {"serve": serve, "probe": probe}[sys.argv[1]](sys.argv[2:])
