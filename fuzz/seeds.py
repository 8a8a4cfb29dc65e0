#!/usr/bin/env python3
"""Writes the seed corpus (fuzz/corpus/<target>/): a few real inputs per target, so
short runs start from frames, requests and files that reach deep paths. Rerun after
changing an input format; the fuzzer's own finds are not committed."""
import json, os, struct

here = os.path.dirname(os.path.abspath(__file__))

def out(target, name, data):
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff

def ip4(a): return bytes(int(x) for x in a.split("."))

def ipv4(src, dst, proto, payload, ttl=64):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, ttl, proto, 0, ip4(src), ip4(dst))
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload

def udp(src, dst, sp, dp, data):
    u = struct.pack("!HHHH", sp, dp, 8 + len(data), 0) + data
    ph = ip4(src) + ip4(dst) + struct.pack("!BBH", 0, 17, len(u))
    c = csum(ph + u) or 0xffff
    return ipv4(src, dst, 17, u[:6] + struct.pack("!H", c) + u[8:])

def tcp(src, dst, sp, dp, flags, seq=1):
    t = struct.pack("!HHIIBBHHH", sp, dp, seq, 0, 5 << 4, flags, 65535, 0, 0)
    ph = ip4(src) + ip4(dst) + struct.pack("!BBH", 0, 6, len(t))
    return ipv4(src, dst, 6, t[:16] + struct.pack("!H", csum(ph + t)) + t[18:])

def icmp_echo(src, dst, ident=7):
    m = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"podpath"
    return ipv4(src, dst, 1, m[:2] + struct.pack("!H", csum(m)) + m[4:])

def eth(dst, src, etype, payload):
    return bytes(dst) + bytes(src) + struct.pack("!H", etype) + payload

POD_A = [2, 0, 0, 0, 2, 1]
POD_B = [2, 0, 0, 0, 3, 1]
GW = [2, 0, 0, 0, 9, 2]  # pod-a's port MAC in the fuzz node
BCAST = [0xff] * 6
UPLINK = [2, 0, 0, 0, 9, 0]
N2 = [2, 0, 0, 0, 1, 2]

def arp_req(smac, sip, tip):
    return eth(BCAST, smac, 0x0806, struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, bytes(smac), ip4(sip), b"\0" * 6, ip4(tip)))

frames = {
    "arp": (2, arp_req(POD_A, "10.244.0.2", "10.244.0.1")),
    "bridge": (2, eth(POD_B, POD_A, 0x0800, udp("10.244.0.2", "10.244.0.3", 40000, 53, b"q"))),
    "svc-syn": (2, eth(GW, POD_A, 0x0800, tcp("10.244.0.2", "10.96.0.10", 40001, 80, 0x02))),
    "svc-udp": (2, eth(GW, POD_A, 0x0800, udp("10.244.0.2", "10.96.0.10", 40002, 80, b"hello"))),
    "masq": (2, eth(GW, POD_A, 0x0800, udp("10.244.0.2", "192.168.77.100", 40003, 53, b"dns?"))),
    "remote-ping": (2, eth(GW, POD_A, 0x0800, icmp_echo("10.244.0.2", "10.244.1.5"))),
    "vxlan-in": (0, eth(UPLINK, N2, 0x0800, udp("192.168.77.12", "192.168.77.11", 50000, 4789,
        struct.pack("!BBHI", 0x08, 0, 0, 1 << 8) + eth([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 8, 8], 0x0800,
        icmp_echo("10.244.1.5", "10.244.0.2"))))),
    "nodeport": (0, eth(UPLINK, [2, 0, 0, 0, 0, 0x64], 0x0800, tcp("192.168.77.100", "192.168.77.11", 45000, 30080, 0x02))),
    "host": (1, eth([2, 0, 0, 0, 9, 1], [2, 0, 0, 0, 0xff, 1], 0x0800, icmp_echo("10.244.0.1", "10.244.0.2"))),
}

def record(port, f):
    f = f[:255]
    return bytes([port, len(f)]) + f

for name, (port, f) in frames.items():
    out("wire", name, f)
    out("pipeline", name, record(port, f))
# A conversation: ARP, a Service connection opened and answered, time passing.
conv = record(2, frames["arp"][1]) + record(2, frames["svc-syn"][1]) + record(2, frames["masq"][1]) \
    + bytes([0x80 | 5, 0]) + record(0, frames["vxlan-in"][1]) + bytes([0x80 | 40, 0]) + record(2, frames["svc-udp"][1])
out("pipeline", "conversation", conv)

# protocol: postcard frames, not written here; corpus/protocol holds six requests
# (Hello, Stats, PortList, MacAdd, TraceStart, ServiceSet) as codec::encode made
# them, each framed and bare.

for name in ["node.toml"]:
    with open(os.path.join(here, "..", "configs", name)) as f:
        out("config", name, f.read())
out("config", "minimal", '[eal]\nlcores = "0,1"\npci = false\n[dataplane]\nsocket = "/tmp/x.sock"\n[conntrack]\ncapacity = 1024\n')

out("cni", "add", json.dumps({"cniVersion": "1.0.0", "name": "podpath", "type": "podpath-cni",
    "controlSocket": "/run/podpath/control.sock", "attach": "af_packet", "mtu": 1450, "ipam": {"type": "podpath"}}))
out("cni", "tap", json.dumps({"cniVersion": "0.4.0", "name": "podpath", "type": "podpath-cni", "attach": "tap"}))

# conntrack_state: mode 3 (identity and length made right), 8 entries reserved, a
# header page with used = 3, then a TCP, a UDP and a dead entry.
def tup(s, d, sp, dp, p): return struct.pack("<IIHHB3x", s, d, sp, dp, p)
def entry(o, r, exp, born, tcp_state, flags):
    return o + r + struct.pack("<IIBBHII", exp, born, tcp_state, flags, 0, 0xffffffff, 0xffffffff)
page = bytearray(4096)
struct.pack_into("<Q", page, 24, 3)
body = bytes(page)
a = tup(0x0af40002, 0xc0a84d64, 40000, 80, 6)
body += entry(a, tup(0xc0a84d64, 0xc0a84d0b, 80, 30001, 6), 5000, 900, 3, 3)
u = tup(0x0af40002, 0x0a60000a, 40001, 80, 17)
body += entry(u, tup(0x0af40105, 0x0af40002, 8080, 40001, 17), 1100, 990, 0, 32 | 1)
body += entry(tup(1, 2, 3, 4, 17), tup(2, 1, 4, 3, 17), 1100, 990, 0, 4)
out("conntrack_state", "three", bytes([3, 8]) + body)
out("conntrack_state", "converted", bytes([7, 8]) + body)
