#!/usr/bin/env python3
"""Real socket clients for the root tests, where the exact errno or byte count matters.

connect HOST PORT [--bind PORT] [--mapped] [--udp]
    connect() once; prints ok | EPERM | ECONNREFUSED | timeout | <errno name>
listen PORT [--udp] [--host ADDR] [--log FILE]
    dual-stack listener: TCP accepts and closes connections forever; UDP appends each
    datagram to FILE
load HOST ALLOWED DENIED INTERVAL_MS STOPFILE OUTFILE
    until STOPFILE exists: every INTERVAL_MS, connect() to the allowed port (must work)
    and to the denied port (must fail); writes counts as JSON to OUTFILE
udp-send HOST PORT COUNT SIZE
    sends COUNT datagrams of SIZE payload bytes from one unconnected socket;
    prints "sent=N eperm=M"
"""
import errno
import socket
import sys


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def connect(args):
    host, port = args[0], int(args[1])
    bind = int(args[args.index("--bind") + 1]) if "--bind" in args else None
    mapped = "--mapped" in args
    kind = socket.SOCK_DGRAM if "--udp" in args else socket.SOCK_STREAM
    if mapped:
        s = socket.socket(socket.AF_INET6, kind)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        host = "::ffff:" + host
    else:
        s = socket.socket(family(host), kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(3)
    try:
        if bind is not None:
            s.bind(("::" if s.family == socket.AF_INET6 else "0.0.0.0", bind))
        s.connect((host, port))
        print("ok")
    except socket.timeout:
        print("timeout")
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)))


def udp_send(args):
    host, port, count, size = args[0], int(args[1]), int(args[2]), int(args[3])
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    sent = eperm = 0
    for _ in range(count):
        try:
            s.sendto(b"x" * size, (host, port))
            sent += 1
        except PermissionError:
            eperm += 1
    print(f"sent={sent} eperm={eperm}")


def listen(args):
    port = int(args[0])
    host = args[args.index("--host") + 1] if "--host" in args else "::"
    log = args[args.index("--log") + 1] if "--log" in args else None
    udp = "--udp" in args
    s = socket.socket(family(host), socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    if s.family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    if udp:
        while True:
            data = s.recv(65535)
            if log:
                with open(log, "ab") as f:
                    f.write(data)
    s.listen(128)
    while True:
        c, _ = s.accept()
        c.close()


def load(args):
    import json, os, time
    host, allowed, denied, interval = args[0], int(args[1]), int(args[2]), int(args[3]) / 1000
    stopfile, outfile = args[4], args[5]
    counts = {"allowed_ok": 0, "allowed_failed": 0, "denied_blocked": 0, "denied_ok": 0, "errors": []}

    def attempt(port):
        s = socket.socket(family(host), socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect((host, port))
            return None
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e)) if e.errno else "timeout"
        finally:
            s.close()

    while not os.path.exists(stopfile):
        err = attempt(allowed)
        if err is None:
            counts["allowed_ok"] += 1
        else:
            counts["allowed_failed"] += 1
            counts["errors"].append(f"allowed: {err} at {time.time():.3f}")
        if attempt(denied) is None:
            counts["denied_ok"] += 1
            counts["errors"].append(f"denied connected at {time.time():.3f}")
        else:
            counts["denied_blocked"] += 1
        time.sleep(interval)
    with open(outfile, "w") as f:
        json.dump(counts, f)


if __name__ == "__main__":
    {"connect": connect, "udp-send": udp_send, "listen": listen, "load": load}[sys.argv[1]](sys.argv[2:])
