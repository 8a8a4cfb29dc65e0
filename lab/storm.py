#!/usr/bin/env python3
"""Malformed-frame storm (issue 15): sends COUNT frames, seeded, from IFACE through
an AF_PACKET socket, so nothing of the kernel's stack repairs them. Run inside a
namespace the test made: `storm.py IFACE COUNT SEED ROLE [key=value...]`.

ROLE pod: from a pod's eth0 (its MAC and IP given), to its gateway, a Service VIP,
another pod, the external host. ROLE uplink: from the underlay, to the node's IP
(NodePorts, VXLAN with garbage inner frames, a spoofed remote node's VTEP).

Every class a dataplane meets from hostile hosts: truncation at every layer, header
lengths beyond the frame, bad total lengths and checksums, IP options, overlapping
and endless fragments, invalid TCP flag combinations, ICMP errors quoting garbage or
a truncated header, VXLAN carrying garbage, runts, giants and random bytes. Prints
how many of each class it sent."""
import random, socket, struct, sys, time

def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff

def ip4(a):
    return socket.inet_aton(a)

def mac(s):
    return bytes(int(x, 16) for x in s.split(":"))

def ipv4(src, dst, proto, payload, ident=1, frag=0, ttl=64, ihl=5, tot=None, opts=b"", good=True):
    tl = tot if tot is not None else 20 + len(opts) + len(payload)
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tl & 0xffff, ident, frag, ttl, proto, 0, ip4(src), ip4(dst)) + opts
    c = csum(h) if good else 0x1234
    return h[:10] + struct.pack("!H", c) + h[12:] + payload

def l4sum(src, dst, proto, seg):
    return csum(ip4(src) + ip4(dst) + struct.pack("!BBH", 0, proto, len(seg)) + seg)

def udp(src, dst, sp, dp, data, good=True, ulen=None):
    u = struct.pack("!HHHH", sp, dp, (ulen if ulen is not None else 8 + len(data)) & 0xffff, 0) + data
    c = (l4sum(src, dst, 17, u) or 0xffff) if good else 0x4321
    return u[:6] + struct.pack("!H", c) + u[8:]

def tcp(src, dst, sp, dp, flags, off=5, data=b"", good=True):
    t = struct.pack("!HHIIBBHHH", sp, dp, random.getrandbits(32), 0, off << 4, flags, 65535, 0, 0) + data
    c = l4sum(src, dst, 6, t) if good else 0x1111
    return t[:16] + struct.pack("!H", c) + t[18:]

def icmp(t, code, body):
    m = struct.pack("!BBHI", t, code, 0, 0) + body
    return m[:2] + struct.pack("!H", csum(m)) + m[4:]

def eth(dst, src, etype, payload):
    return dst + src + struct.pack("!H", etype) + payload

def rbytes(n):
    return bytes(random.getrandbits(8) for _ in range(n))

def main():
    iface, count, seed, role = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    kv = dict(a.split("=", 1) for a in sys.argv[5:])
    random.seed(seed)
    me_mac, me_ip = mac(kv["mac"]), kv["ip"]
    to_mac = mac(kv["to_mac"])  # the gateway (pod) or the node's uplink (uplink)
    targets = kv["targets"].split(",")  # IPs to aim at
    spoof = kv.get("spoof", me_ip)  # uplink: a remote node's IP, for VXLAN
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    sent = {}

    def frame_of(cls):
        dst = random.choice(targets)
        sp, dp = random.randint(1024, 65535), random.choice([80, 53, 8080, 30080, 4789, 22])
        good_udp = ipv4(me_ip, dst, 17, udp(me_ip, dst, sp, dp, rbytes(random.randint(0, 64))))
        if cls == "truncated":
            f = eth(to_mac, me_mac, 0x0800, ipv4(me_ip, dst, 6, tcp(me_ip, dst, sp, dp, 0x02)))
            return f[: random.randint(0, len(f) - 1)]
        if cls == "header-beyond-frame":
            return eth(to_mac, me_mac, 0x0800, ipv4(me_ip, dst, 6, tcp(me_ip, dst, sp, dp, 0x12, off=15), ihl=random.choice([5, 15, 6])))
        if cls == "ihl-under-5":
            return eth(to_mac, me_mac, 0x0800, ipv4(me_ip, dst, 17, udp(me_ip, dst, sp, dp, b"x"), ihl=random.randint(0, 4)))
        if cls == "bad-total-length":
            p = udp(me_ip, dst, sp, dp, rbytes(20))
            return eth(to_mac, me_mac, 0x0800, ipv4(me_ip, dst, 17, p, tot=random.choice([0, 19, 21, 28 + len(p), 65535])))
        if cls == "bad-ip-checksum":
            return eth(to_mac, me_mac, 0x0800, ipv4(me_ip, dst, 17, udp(me_ip, dst, sp, dp, b"hi"), good=False))
        if cls == "bad-l4-checksum":
            p = random.choice([udp(me_ip, dst, sp, dp, b"hi", good=False), tcp(me_ip, dst, sp, dp, 0x02, good=False)])
            return eth(to_mac, me_mac, 0x0800, ipv4(me_ip, dst, 17 if len(p) < 20 else 6, p))
        if cls == "bad-udp-length":
            return eth(to_mac, me_mac, 0x0800, ipv4(me_ip, dst, 17, udp(me_ip, dst, sp, dp, rbytes(10), ulen=random.choice([0, 7, 9, 200, 65535]))))
        if cls == "ip-options":
            opts = random.choice([b"\x01\x01\x01\x00", b"\x07\x27\x04" + rbytes(37), b"\x83\x03\x04\x00"])
            opts = opts[: (len(opts) // 4) * 4] or b"\x01\x01\x01\x01"
            return eth(to_mac, me_mac, 0x0800, ipv4(me_ip, dst, 17, udp(me_ip, dst, sp, dp, b"opt"), ihl=5 + len(opts) // 4, opts=opts))
        if cls == "overlapping-fragments":
            ident = random.getrandbits(16)
            body = udp(me_ip, dst, sp, dp, rbytes(64))
            a = eth(to_mac, me_mac, 0x0800, ipv4(me_ip, dst, 17, body[:48], ident=ident, frag=0x2000))
            b = eth(to_mac, me_mac, 0x0800, ipv4(me_ip, dst, 17, body[16:], ident=ident, frag=(16 // 8)))
            return [a, b] if random.random() < 0.5 else [b, a]
        if cls == "endless-fragments":
            ident = random.getrandbits(16)
            return [eth(to_mac, me_mac, 0x0800, ipv4(me_ip, dst, 17, rbytes(64), ident=ident, frag=0x2000 | (k * 8))) for k in range(1, 6)]
        if cls == "tcp-flags":
            flags = random.choice([0x03, 0x06, 0x00, 0x01, 0x3f, 0xff, 0x07, 0x29])
            return eth(to_mac, me_mac, 0x0800, ipv4(me_ip, dst, 6, tcp(me_ip, dst, sp, dp, flags)))
        if cls == "icmp-error-garbage":
            quoted = random.choice([rbytes(random.randint(0, 40)), good_udp[:random.randint(0, 27)],
                                    ipv4(dst, me_ip, 6, tcp(dst, me_ip, dp, sp, 0x02))[:28], good_udp[:8]])
            return eth(to_mac, me_mac, 0x0800, ipv4(me_ip, dst, 1, icmp(random.choice([3, 11, 12, 5]), random.randint(0, 15), quoted)))
        if cls == "vxlan-garbage":
            inner = random.choice([rbytes(random.randint(0, 100)),
                                   eth(rbytes(6), rbytes(6), random.choice([0x0800, 0x0806, 0x86dd, 0x8100]), rbytes(random.randint(0, 60)))])
            vx = struct.pack("!BBHI", random.choice([0x08, 0x00, 0xff]), 0, 0, random.choice([1, 2, 0xffffff]) << 8) + inner
            return eth(to_mac, me_mac, 0x0800, ipv4(spoof, dst, 17, udp(spoof, dst, random.randint(1024, 65535), 4789, vx)))
        if cls == "arp-garbage":
            a = struct.pack("!HHBBH", random.choice([1, 6]), random.choice([0x0800, 0x86dd]), random.choice([6, 0]), random.choice([4, 16]), random.randint(0, 5))
            return eth(b"\xff" * 6, me_mac, 0x0806, a + rbytes(random.randint(0, 30)))
        if cls == "runt-or-giant":
            return random.choice([rbytes(random.randint(0, 13)), eth(to_mac, me_mac, 0x0800, rbytes(random.randint(1400, 1486)))])
        if cls == "random":
            return rbytes(random.randint(14, 200))
        if cls == "odd-ethertype-or-mac":
            return eth(random.choice([b"\x01\x00\x5e\x00\x00\x01", b"\x33\x33\x00\x00\x00\x01", to_mac]),
                       random.choice([b"\xff" * 6, b"\x00" * 6, me_mac, b"\x01\x02\x03\x04\x05\x06"]),
                       random.choice([0x86dd, 0x8100, 0x88cc, 0x0000, 0x0800]), good_udp)
        raise ValueError(cls)

    classes = ["truncated", "header-beyond-frame", "ihl-under-5", "bad-total-length", "bad-ip-checksum",
               "bad-l4-checksum", "bad-udp-length", "ip-options", "overlapping-fragments", "endless-fragments",
               "tcp-flags", "icmp-error-garbage", "arp-garbage", "runt-or-giant", "random", "odd-ethertype-or-mac"]
    if role == "uplink":
        classes.append("vxlan-garbage")
        classes.append("vxlan-garbage")
    n, deadline = 0, time.time() + 60
    while n < count and time.time() < deadline:
        cls = classes[n % len(classes)]
        fs = frame_of(cls)
        for f in fs if isinstance(fs, list) else [fs]:
            try:
                s.send(f if len(f) >= 1 else b"\0")
            except OSError:
                pass  # the kernel refuses some runts; they never reach the wire
            n += 1
        sent[cls] = sent.get(cls, 0) + 1
        if n % 256 == 0:
            time.sleep(0.002)  # bounded pace: the poll loop shares two cores
    print("sent", n, " ".join("%s=%d" % kv for kv in sorted(sent.items())))

main()
