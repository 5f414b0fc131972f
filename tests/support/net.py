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
probe HOST ALLOWED DENIED LOGFILE
    a service's first act (Type=notify): connect() to the allowed and to the denied port,
    append "allowed=<verdict> denied=<verdict>" to LOGFILE, send READY=1, sleep forever
udp-send HOST PORT COUNT SIZE
    sends COUNT datagrams of SIZE payload bytes from one unconnected socket;
    prints "sent=N eperm=M"
udp-per-flow HOST ALLOWED DENIED LOOPBACK
    one UDP socket connect()ed to HOST:ALLOWED, then sendto() elsewhere, after
    connect(AF_UNSPEC), after a refused re-connect, and from a socket connected to
    LOOPBACK:ALLOWED (then dissolved); prints one "step=result" line per step
hold HOST TCPPORT UDPPORT GOFILE OUTFILE
    opens a TCP connection and a connected UDP socket, sends "1" on both, waits for
    GOFILE, sends "2" on both; writes the results as JSON to OUTFILE
ping HOST ID
    one ICMP echo request (raw socket) with identifier ID; prints reply | timeout
icmp-listen SECONDS OUTFILE
    raw ICMP socket: appends "type code" of each message received to OUTFILE
icmp-error HOST TYPE CODE QSRC QSPORT QDST QDPORT PROTO
    sends an ICMP error to HOST quoting an IPv4 PROTO packet QSRC:QSPORT -> QDST:QDPORT
exchange HOST PORT SEND
    TCP: connect, send SEND payload bytes, half-close, read to the end; prints
    "received=N" (or the errno name)
serve PORT REPLY [--host ADDR]
    TCP server: for each connection, read to the end of the client's data, send REPLY
    payload bytes, close
udp6-frame IFACE DSTMAC SRC DST SPORT DPORT PAYLOAD
    sends one Ethernet frame on IFACE (AF_PACKET): IPv6 SRC -> DST, UDP, any source
    address at all (IPv4-mapped, ::1): what a spoofing peer puts on the wire
echo PORT
    dual-stack TCP echo server: sends back whatever each connection sends
resolve-connect SERVER PORT [--tcp] [--aaaa] [--names FILE] [NAME...]
    a stub resolver and its application in one process: for each name, one DNS query
    (UDP, or TCP with --tcp) to SERVER port 53 from a fresh socket, the answer read and
    its CNAME chain followed as an application's resolver does, then at once (no sleep)
    connect() to the first address on PORT; prints one JSON summary:
    {"resolved", "connected", "eperm", "failures": [first 20], "answers": {name: addr}}
resolve-hold SERVER PORT NAME GOFILE OUTFILE
    resolves NAME as resolve-connect does, connects, exchanges "1" with the echo server,
    writes OUTFILE.open; waits for GOFILE, exchanges "2" on the same connection, then
    tries a new connect() to the same address; writes the results as JSON to OUTFILE
dns-ask SERVER NAME [--tcp] [--hold]
    one A query for NAME to SERVER port 53 (UDP, or TCP with --tcp) from a fresh
    socket; the answer is read whole but not interpreted (it may be hostile); prints
    {"bytes": its length, "id_ok": whether it carries the query's ID} or the errno name;
    with --hold the socket stays open 1 s after the answer (for segments that follow it)
dns-pending SERVER NAME OUTFILE SECONDS
    two UDP sockets connected to SERVER port 53; the first sends one A query for NAME
    (which SERVER is not meant to answer); writes {"port", "other_port", "id"} to
    OUTFILE, then keeps both sockets open SECONDS: forged answers are aimed at them
udp-forge SRC SPORT DST DPORT HEX
    sends the bytes HEX as one UDP datagram SRC:SPORT -> DST:DPORT (IPv4) from a raw
    socket: a source port that a listener on SRC already holds (a forged answer)
fake-resolver ADDR FILE
    a hostile resolver on ADDR port 53, UDP and TCP: FILE has one "NAME HEX [HOW [HEX2]]"
    line per query name, and a query for NAME is answered with the bytes HEX as written
    (the first two, the ID, replaced by the query's; over TCP in one segment with the
    length prefix); a name not in FILE gets no answer. HOW (TCP only):
      split:N   the answer leaves in two segments, the second from byte N of the
                message on; bytes N+2..N+4 (a message hidden there) get the query's ID
      ahead     first a raw segment carrying HEX2 (length prefix, the query's ID) 4096
                bytes ahead of the answer's sequence number (out of order), then HEX
      again     HEX, then a raw segment carrying HEX2 (length prefix, the query's ID)
                at the answer's own sequence number (a retransmission that lies)
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
        if not log:
            c.close()
            continue
        # With --log, a TCP connection's bytes are logged as they arrive (a held flow).
        import threading

        def drain(c):
            while True:
                data = c.recv(65535)
                if not data:
                    break
                with open(log, "ab") as f:
                    f.write(data)
            c.close()
        threading.Thread(target=drain, args=(c,), daemon=True).start()


def exchange(args):
    host, port, size = args[0], int(args[1]), int(args[2])
    s = socket.socket(family(host), socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((host, port))
        s.sendall(b"q" * size)
        s.shutdown(socket.SHUT_WR)
        got = 0
        while True:
            data = s.recv(65536)
            if not data:
                break
            got += len(data)
        print(f"received={got}")
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)))


def serve(args):
    port, size = int(args[0]), int(args[1])
    host = args[args.index("--host") + 1] if "--host" in args else "::"
    s = socket.socket(family(host), socket.SOCK_STREAM)
    if s.family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(16)
    while True:
        c, _ = s.accept()
        while c.recv(65536):
            pass
        c.sendall(b"r" * size)
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


def errname(e):
    return errno.errorcode.get(e.errno, str(e.errno)) if e.errno else "timeout"


def udp_per_flow(args):
    import ctypes
    host, allowed, denied, loopback = args[0], int(args[1]), int(args[2]), args[3]
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    s.settimeout(1)

    def step(name, fn):
        try:
            fn()
            print(f"{name}=ok", flush=True)
        except OSError as e:
            print(f"{name}={errname(e)}", flush=True)

    step("connect", lambda: s.connect((host, allowed)))
    step("send", lambda: s.send(b"allowed"))
    step("sendto_other", lambda: s.sendto(b"bypass-1", (host, denied)))
    # connect(AF_UNSPEC): a sockaddr whose family is 0 dissolves the association.
    libc = ctypes.CDLL(None, use_errno=True)
    unspec = ctypes.create_string_buffer(16)
    rc = libc.connect(s.fileno(), unspec, 16)
    print(f"unspec={'ok' if rc == 0 else errno.errorcode[ctypes.get_errno()]}", flush=True)
    step("after_unspec", lambda: s.sendto(b"bypass-2", (host, denied)))
    step("connect_again", lambda: s.connect((host, allowed)))
    step("reconnect_denied", lambda: s.connect((host, denied)))
    step("after_refused", lambda: s.sendto(b"bypass-3", (host, denied)))
    step("send_after_refused", lambda: s.send(b"allowed-again"))
    lo = socket.socket(family(loopback), socket.SOCK_DGRAM)
    step("connect_loopback", lambda: lo.connect((loopback, allowed)))
    # Dissolve the association (which also unbinds the loopback source address), then
    # send elsewhere: the exempt record must not carry the datagram.
    libc.connect(lo.fileno(), unspec, 16)
    step("after_loopback", lambda: lo.sendto(b"bypass-4", (host, denied)))


def hold(args):
    import json, os, time
    host, tcp_port, udp_port, gofile, outfile = args[0], int(args[1]), int(args[2]), args[3], args[4]
    t = socket.create_connection((host, tcp_port), timeout=3)
    u = socket.socket(family(host), socket.SOCK_DGRAM)
    u.connect((host, udp_port))
    res = {}

    def send(name, fn):
        try:
            fn()
            res[name] = "ok"
        except OSError as e:
            res[name] = errname(e)

    send("tcp1", lambda: t.send(b"1"))
    send("udp1", lambda: u.send(b"1"))
    while not os.path.exists(gofile):
        time.sleep(0.02)
    send("tcp2", lambda: t.send(b"2"))
    send("udp2", lambda: u.send(b"2"))
    time.sleep(0.5)
    with open(outfile, "w") as f:
        json.dump(res, f)


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    return (~total) & 0xffff


def ping(args):
    import struct, time
    host, ident = args[0], int(args[1])
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"portcullis"
    body = body[:2] + checksum(body).to_bytes(2, "big") + body[4:]
    try:
        s.sendto(body, (host, 0))
    except OSError as e:
        print(errname(e))
        return
    s.settimeout(0.2)
    deadline = time.time() + 2
    while time.time() < deadline:
        try:
            data = s.recv(2048)
        except socket.timeout:
            continue
        ihl = (data[0] & 0x0f) * 4
        if data[ihl] == 0 and int.from_bytes(data[ihl + 4:ihl + 6], "big") == ident:
            print("reply")
            return
    print("timeout")


def icmp_listen(args):
    import time
    seconds, outfile = float(args[0]), args[1]
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.settimeout(0.1)
    open(outfile, "w").close()
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            data = s.recv(2048)
        except socket.timeout:
            continue
        ihl = (data[0] & 0x0f) * 4
        with open(outfile, "a") as f:
            f.write(f"{data[ihl]} {data[ihl + 1]}\n")


def icmp_error(args):
    import struct
    host, ty, code = args[0], int(args[1]), int(args[2])
    qsrc, qsport, qdst, qdport, proto = args[3], int(args[4]), args[5], int(args[6]), int(args[7])
    quoted = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, proto, 0,
                         socket.inet_aton(qsrc), socket.inet_aton(qdst))
    quoted += struct.pack("!HHHH", qsport, qdport, 8, 0)
    body = struct.pack("!BBHI", ty, code, 0, 0) + quoted
    body = body[:2] + checksum(body).to_bytes(2, "big") + body[4:]
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.sendto(body, (host, 0))


def udp6_frame(args):
    import struct
    iface, dstmac, src, dst = args[0], bytes.fromhex(args[1].replace(":", "")), args[2], args[3]
    sport, dport, payload = int(args[4]), int(args[5]), args[6].encode()
    s6, d6 = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    length = 8 + len(payload)
    pseudo = s6 + d6 + struct.pack("!I3xB", length, 17)
    udp = struct.pack("!HHHH", sport, dport, length, 0) + payload
    udp = udp[:6] + (checksum(pseudo + udp) or 0xffff).to_bytes(2, "big") + udp[8:]
    ip = struct.pack("!IHBB", 6 << 28, length, 17, 64) + s6 + d6
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    srcmac = s.getsockname()[4]
    s.send(dstmac + srcmac + b"\x86\xdd" + ip + udp)


def probe(args):
    import os, time
    host, allowed, denied, logfile = args[0], int(args[1]), int(args[2]), args[3]

    def verdict(port):
        s = socket.socket(family(host), socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect((host, port))
            return "ok"
        except socket.timeout:
            return "timeout"
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))
        finally:
            s.close()

    line = f"allowed={verdict(allowed)} denied={verdict(denied)}\n"
    with open(logfile, "a") as f:
        f.write(line)
    notify = os.environ.get("NOTIFY_SOCKET")
    if notify:
        n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        n.connect("\0" + notify[1:] if notify.startswith("@") else notify)
        n.send(b"READY=1")
    while True:
        time.sleep(3600)


def echo(args):
    import threading
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", int(args[0])))
    s.listen(1024)

    def serve_one(c):
        with c:
            while True:
                data = c.recv(65536)
                if not data:
                    return
                c.sendall(data)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve_one, args=(c,), daemon=True).start()


# A DNS stub written out here: the test machine has neither scapy nor dnspython, and
# the tests need the exact bytes on the wire (one query, one answer, no retries, no
# cache) from the very process that then connects.
QTYPE_A, QTYPE_AAAA, QTYPE_CNAME = 1, 28, 5


def dns_query_bytes(qid, name, qtype):
    import struct
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack("!HH", qtype, 1)


def dns_name(msg, at):
    """The name at offset `at` (compression pointers followed) and the offset after it."""
    labels, end, hops = [], None, 0
    while True:
        n = msg[at]
        if n & 0xC0 == 0xC0:
            if end is None:
                end = at + 2
            hops += 1
            if hops > 16:
                raise ValueError("compression loop")
            at = ((n & 0x3F) << 8) | msg[at + 1]
            continue
        if n == 0:
            return ".".join(labels).lower(), (at + 1 if end is None else end)
        labels.append(msg[at + 1:at + 1 + n].decode("ascii"))
        at += 1 + n


def dns_answer_addresses(msg, qid, qname, qtype):
    """The addresses an application gets for qname: the chain of CNAMEs from qname
    followed inside the answer, then the A (or AAAA) records of its last name."""
    import struct
    rid, flags, qd, an = struct.unpack("!HHHH", msg[:8])
    if rid != qid:
        raise ValueError(f"answer id {rid} for query {qid}")
    if flags & 0xF:
        raise ValueError(f"rcode {flags & 0xF}")
    at = 12
    for _ in range(qd):
        _, at = dns_name(msg, at)
        at += 4
    cnames, addrs = {}, {}
    for _ in range(an):
        owner, at = dns_name(msg, at)
        rtype, _, _, rdlen = struct.unpack("!HHIH", msg[at:at + 10])
        at += 10
        rdata = msg[at:at + rdlen]
        if rtype == QTYPE_CNAME:
            cnames[owner] = dns_name(msg, at)[0]
        elif rtype == QTYPE_A == qtype:
            addrs.setdefault(owner, []).append(socket.inet_ntop(socket.AF_INET, rdata))
        elif rtype == QTYPE_AAAA == qtype:
            addrs.setdefault(owner, []).append(socket.inet_ntop(socket.AF_INET6, rdata))
        at += rdlen
    name = qname.rstrip(".").lower()
    for _ in range(16):
        if name not in cnames:
            break
        name = cnames[name]
    return addrs.get(name, [])


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed mid-answer")
        data += chunk
    return data


def ask(server, name, qtype, tcp, hold=False):
    """One query to server:53 from a fresh socket, like a stub resolver: its ID and the
    answer's bytes."""
    import random, time
    qid = random.randrange(1 << 16)
    query = dns_query_bytes(qid, name, qtype)
    if tcp:
        s = socket.create_connection((server, 53), timeout=3)
        with s:
            s.sendall(len(query).to_bytes(2, "big") + query)
            msg = recv_exact(s, int.from_bytes(recv_exact(s, 2), "big"))
            if hold:
                time.sleep(1)
            return qid, msg
    s = socket.socket(family(server), socket.SOCK_DGRAM)
    with s:
        s.settimeout(3)
        s.connect((server, 53))
        s.send(query)
        return qid, s.recv(65535)


def resolve(server, name, qtype, tcp):
    """One query to server:53 from a fresh socket, like a stub resolver; the addresses."""
    qid, msg = ask(server, name, qtype, tcp)
    return dns_answer_addresses(msg, qid, name, qtype)


def dns_ask(args):
    import json
    server, name = args[0], args[1]
    try:
        qid, msg = ask(server, name, QTYPE_A, "--tcp" in args, "--hold" in args)
    except OSError as e:
        print(errname(e))
        return
    print(json.dumps({"bytes": len(msg), "id_ok": msg[:2] == qid.to_bytes(2, "big")}))


def dns_pending(args):
    import json, os, random, time
    server, name, outfile, seconds = args[0], args[1], args[2], float(args[3])
    s1 = socket.socket(family(server), socket.SOCK_DGRAM)
    s2 = socket.socket(family(server), socket.SOCK_DGRAM)
    s1.connect((server, 53))
    s2.connect((server, 53))
    qid = random.randrange(1 << 16)
    s1.send(dns_query_bytes(qid, name, QTYPE_A))
    with open(outfile + ".tmp", "w") as f:
        json.dump({"port": s1.getsockname()[1], "other_port": s2.getsockname()[1],
                   "id": qid}, f)
    os.rename(outfile + ".tmp", outfile)
    time.sleep(seconds)


def inet_checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def raw_send(src, dst, proto, header, payload):
    """One IPv4 packet src -> dst of protocol `proto`: `header` (its checksum field
    zero, at offset 6 for UDP, 16 for TCP) and `payload`, checksummed with the pseudo
    header, from a raw socket bound to src."""
    import struct
    seg = bytearray(header + payload)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, proto, len(seg))
    at = 6 if proto == socket.IPPROTO_UDP else 16
    seg[at:at + 2] = inet_checksum(pseudo + bytes(seg)).to_bytes(2, "big")
    r = socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
    with r:
        r.bind((src, 0))
        r.sendto(bytes(seg), (dst, 0))


def udp_forge(args):
    import struct
    src, sport, dst, dport, payload = args[0], int(args[1]), args[2], int(args[3]), bytes.fromhex(args[4])
    raw_send(src, dst, socket.IPPROTO_UDP,
             struct.pack("!HHHH", sport, dport, 8 + len(payload), 0), payload)


def tcp_inject(conn, seq_delta, msg):
    """A raw segment on `conn`'s connection, from its local end: `msg` with its length
    prefix, at the sequence number the connection sends next plus `seq_delta`."""
    import struct
    TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ = 19, 20, 21
    RECV_QUEUE, SEND_QUEUE = 1, 2
    # The sequence numbers, read in repair mode (root: the lab's namespaces).
    conn.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    conn.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, SEND_QUEUE)
    snd = struct.unpack("I", conn.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, 4))[0]
    conn.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, RECV_QUEUE)
    rcv = struct.unpack("I", conn.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, 4))[0]
    conn.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 0)
    (src, sport), (dst, dport) = conn.getsockname()[:2], conn.getpeername()[:2]
    header = struct.pack("!HHIIBBHHH", sport, dport, (snd + seq_delta) & 0xFFFFFFFF, rcv,
                         5 << 4, 0x18, 65535, 0, 0)
    raw_send(src, dst, socket.IPPROTO_TCP, header, len(msg).to_bytes(2, "big") + msg)


def query_name(query):
    """The question's name of a query we sent ourselves (no pointers), lowercase."""
    labels, at = [], 12
    while at < len(query) and query[at]:
        labels.append(query[at + 1:at + 1 + query[at]].decode("latin-1"))
        at += 1 + query[at]
    return ".".join(labels).lower()


def fake_resolver(args):
    import threading
    addr, path = args[0], args[1]
    import time
    replies, hows = {}, {}
    with open(path) as f:
        for line in f:
            if line.strip():
                name, hexed, *how = line.split()
                replies[name.lower()] = bytes.fromhex(hexed)
                hows[name.lower()] = how

    def reply(query):
        msg = replies.get(query_name(query))
        return None if msg is None or len(query) < 2 else query[:2] + msg[2:]

    def with_id(query, msg):
        return query[:2] + msg[2:]

    def answer_tcp(c, query, msg):
        how = hows.get(query_name(query)) or ["whole"]
        if how[0].startswith("split:"):
            n = int(how[0].split(":")[1])
            msg = msg[:n + 2] + query[:2] + msg[n + 4:]
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.sendall(len(msg).to_bytes(2, "big") + msg[:n])
            time.sleep(0.2)
            c.sendall(msg[n:])
        elif how[0] == "ahead":
            tcp_inject(c, 4096, with_id(query, bytes.fromhex(how[1])))
            c.sendall(len(msg).to_bytes(2, "big") + msg)
        elif how[0] == "again":
            c.sendall(len(msg).to_bytes(2, "big") + msg)
            time.sleep(0.2)
            tcp_inject(c, -(len(msg) + 2), with_id(query, bytes.fromhex(how[1])))
        else:
            # One send: the prefix and the message leave in one segment.
            c.sendall(len(msg).to_bytes(2, "big") + msg)

    # Both bound before either serves: ready for UDP too once the TCP port accepts.
    u = socket.socket(family(addr), socket.SOCK_DGRAM)
    u.bind((addr, 53))
    t = socket.socket(family(addr), socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((addr, 53))
    t.listen(16)

    def serve_tcp():
        while True:
            c, _ = t.accept()
            with c:
                try:
                    c.settimeout(3)
                    query = recv_exact(c, int.from_bytes(recv_exact(c, 2), "big"))
                    msg = reply(query)
                    if msg is not None:
                        answer_tcp(c, query, msg)
                    # The client closes first: no TIME_WAIT on the resolver's port.
                    c.recv(1)
                except (OSError, ConnectionError):
                    pass

    threading.Thread(target=serve_tcp, daemon=True).start()
    while True:
        query, peer = u.recvfrom(65535)
        msg = reply(query)
        if msg is not None:
            u.sendto(msg, peer)


def connect_now(addr, port):
    """connect() at once; None when it worked (the socket is closed), else the errno name."""
    s = socket.socket(family(addr), socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((addr, port))
        return None
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return errname(e)
    finally:
        s.close()


def resolve_connect(args):
    import json
    server, port = args[0], int(args[1])
    qtype = QTYPE_AAAA if "--aaaa" in args else QTYPE_A
    tcp = "--tcp" in args
    names, rest = [], args[2:]
    i = 0
    while i < len(rest):
        if rest[i] == "--names":
            with open(rest[i + 1]) as f:
                names += f.read().split()
            i += 2
            continue
        if not rest[i].startswith("--"):
            names.append(rest[i])
        i += 1
    out = {"resolved": 0, "connected": 0, "eperm": 0, "failures": [], "answers": {}}

    def fail(what):
        if len(out["failures"]) < 20:
            out["failures"].append(what)
    for name in names:
        try:
            addrs = resolve(server, name, qtype, tcp)
        except (OSError, ValueError) as e:
            fail(f"{name}: resolving: {e}")
            continue
        if not addrs:
            fail(f"{name}: no address in the answer")
            continue
        out["resolved"] += 1
        out["answers"][name] = addrs[0]
        err = connect_now(addrs[0], port)
        if err is None:
            out["connected"] += 1
        else:
            out["eperm"] += err == "EPERM"
            fail(f"{name} {addrs[0]}: {err}")
    print(json.dumps(out))


def resolve_hold(args):
    import json, os, time
    server, port, name, gofile, outfile = args[0], int(args[1]), args[2], args[3], args[4]
    res = {}
    addr = resolve(server, name, QTYPE_A, False)[0]
    res["address"] = addr
    held = socket.create_connection((addr, port), timeout=3)

    def exchange(tag):
        try:
            held.sendall(tag)
            res[tag.decode()] = "ok" if recv_exact(held, len(tag)) == tag else "bad echo"
        except OSError as e:
            res[tag.decode()] = errname(e)
    exchange(b"1")
    with open(outfile + ".open", "w") as f:
        json.dump(res, f)
    while not os.path.exists(gofile):
        time.sleep(0.05)
    exchange(b"2")
    err = connect_now(addr, port)
    res["new_connect"] = "ok" if err is None else err
    with open(outfile, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    {"connect": connect, "udp-send": udp_send, "listen": listen, "load": load,
     "udp-per-flow": udp_per_flow, "hold": hold, "ping": ping, "icmp-listen": icmp_listen,
     "icmp-error": icmp_error, "udp6-frame": udp6_frame, "probe": probe,
     "exchange": exchange, "serve": serve, "echo": echo,
     "resolve-connect": resolve_connect, "resolve-hold": resolve_hold, "dns-ask": dns_ask,
     "dns-pending": dns_pending, "udp-forge": udp_forge, "fake-resolver": fake_resolver}[sys.argv[1]](sys.argv[2:])
