//! Byte-checked TCP transfers: the sender writes a pseudo-random stream from a seed;
//! the receiver regenerates it and compares every byte, so a transfer is checked
//! byte for byte without keeping a copy.
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// xorshift64*: fast, deterministic, good enough to catch reordering or corruption.
/// Byte-oriented, so the stream does not depend on how reads split it.
pub struct Stream {
    state: u64,
    word: [u8; 8],
    pos: usize,
}

impl Stream {
    pub fn new(seed: u64) -> Stream {
        Stream {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            word: [0; 8],
            pos: 8,
        }
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.pos == 8 {
                self.state ^= self.state >> 12;
                self.state ^= self.state << 25;
                self.state ^= self.state >> 27;
                self.word = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
                self.pos = 0;
            }
            *b = self.word[self.pos];
            self.pos += 1;
        }
    }
}

/// How long and how fast to send.
#[derive(Debug, Clone)]
pub struct Pace {
    /// Stop after this many bytes.
    pub bytes: u64,
    /// Or after this long (whichever comes first).
    pub duration: Option<Duration>,
    /// Sending rate cap in Mbit/s (None: as fast as TCP goes).
    pub rate_mbps: Option<u64>,
    /// Or once this file exists.
    pub stop_file: Option<std::path::PathBuf>,
}

/// Sends the stream to `to` (retrying the connect for up to 10 s), waits for the
/// receiver's verdict; returns the bytes sent.
pub fn send(to: SocketAddr, pace: &Pace, seed: u64, timeout: Duration) -> Result<u64> {
    let end = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > end => return Err(e).context(format!("connecting to {to}")),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    s.set_write_timeout(Some(timeout))?;
    s.set_read_timeout(Some(timeout))?;
    let mut g = Stream::new(seed);
    let mut buf = vec![0u8; 16 * 1024];
    let start = Instant::now();
    let mut sent = 0u64;
    let mut checked = Instant::now();
    while sent < pace.bytes && pace.duration.is_none_or(|d| start.elapsed() < d) {
        if let Some(f) = &pace.stop_file {
            if checked.elapsed() > Duration::from_millis(50) {
                if f.exists() {
                    break;
                }
                checked = Instant::now();
            }
        }
        let n = usize::try_from((pace.bytes - sent).min(buf.len() as u64)).unwrap_or(buf.len());
        g.fill(&mut buf[..n]);
        s.write_all(&buf[..n]).context("sending")?;
        sent += n as u64;
        if let Some(r) = pace.rate_mbps {
            // Sleep until the average rate is back under the cap.
            let due = Duration::from_secs_f64(sent as f64 * 8.0 / (r.max(1) as f64 * 1e6));
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    s.shutdown(Shutdown::Write)?;
    let mut v = [0u8; 1];
    s.read_exact(&mut v)
        .context("waiting for the receiver's verdict")?;
    if v[0] != b'+' {
        bail!("receiver reported corrupted or short data");
    }
    Ok(sent)
}

/// Accepts one connection on `port` and checks the stream until the sender closes;
/// `bytes` > 0 also requires exactly that many. Returns the count.
pub fn recv(port: u16, bytes: u64, seed: u64, timeout: Duration) -> Result<u64> {
    let l = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("binding port {port}"))?;
    l.set_nonblocking(true)?;
    let end = Instant::now() + timeout;
    let (s, _) = loop {
        match l.accept() {
            Ok(c) => break c,
            Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e).context("no connection arrived"),
        }
    };
    check_stream(s, bytes, seed, timeout)
}

/// Accepts every connection that arrives on `port` within `accept_for`, checks each
/// stream (all from `seed`) in its own thread, and waits for all of them. Fails if
/// none arrived or any one was short or corrupted. Returns (connections, bytes).
pub fn recv_many(
    port: u16,
    seed: u64,
    accept_for: Duration,
    timeout: Duration,
) -> Result<(usize, u64)> {
    let l = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("binding port {port}"))?;
    l.set_nonblocking(true)?;
    let end = Instant::now() + accept_for;
    let mut threads = Vec::new();
    while Instant::now() < end {
        match l.accept() {
            Ok((s, _)) => threads.push(std::thread::spawn(move || {
                check_stream(s, 0, seed, timeout)
            })),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    if threads.is_empty() {
        bail!("no connection arrived within {accept_for:?}");
    }
    let (mut n, mut total, mut failed) = (0, 0, Vec::new());
    for t in threads {
        match t.join() {
            Ok(Ok(b)) => {
                n += 1;
                total += b;
            }
            Ok(Err(e)) => failed.push(format!("{e:#}")),
            Err(_) => failed.push("a receiver thread panicked".into()),
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} streams failed: {}",
            failed.len(),
            n + failed.len(),
            failed.join("; ")
        );
    }
    Ok((n, total))
}

/// Checks one accepted stream until the sender closes, and answers the verdict.
fn check_stream(mut s: TcpStream, bytes: u64, seed: u64, timeout: Duration) -> Result<u64> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(timeout))?;
    if let Ok(peer) = s.peer_addr() {
        // The receiver names who it sees, so tests can check addresses are real.
        println!("connection from {}", peer.ip());
    }
    let mut g = Stream::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    let mut ok = true;
    loop {
        let n = s.read(&mut buf).context("receiving")?;
        if n == 0 {
            break;
        }
        g.fill(&mut want[..n]);
        if buf[..n] != want[..n] {
            ok = false;
        }
        got += n as u64;
    }
    let ok = ok && (bytes == 0 || got == bytes);
    let _ = s.write_all(if ok { b"+" } else { b"-" });
    if !ok {
        bail!(
            "received {got} of {bytes} bytes, content {}",
            if got == bytes { "corrupted" } else { "short" }
        );
    }
    Ok(got)
}

/// Serves one download: accepts a connection on `port`, sends `bytes` of the stream
/// (at most `rate_mbps` Mbit/s on average, if given), closes. Returns the client's
/// address as seen here.
pub fn serve(
    port: u16,
    bytes: u64,
    seed: u64,
    rate_mbps: Option<u64>,
    timeout: Duration,
) -> Result<std::net::IpAddr> {
    let l = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("binding port {port}"))?;
    l.set_nonblocking(true)?;
    let end = Instant::now() + timeout;
    let (mut s, peer) = loop {
        match l.accept() {
            Ok(c) => break c,
            Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e).context("no connection arrived"),
        }
    };
    s.set_nonblocking(false)?;
    s.set_write_timeout(Some(timeout))?;
    let mut g = Stream::new(seed);
    let mut buf = vec![0u8; 16 * 1024];
    let mut left = bytes;
    let start = Instant::now();
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        g.fill(&mut buf[..n]);
        s.write_all(&buf[..n]).context("sending")?;
        left -= n as u64;
        if let Some(r) = rate_mbps {
            let due =
                Duration::from_secs_f64((bytes - left) as f64 * 8.0 / (r.max(1) as f64 * 1e6));
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    s.shutdown(Shutdown::Write)?;
    Ok(peer.ip())
}

/// What `probe` saw: datagrams sent and echoed, and every silence between two echoes
/// longer than `gap` (when it began, in seconds since the start, and its length).
#[derive(Debug, Clone, Default)]
pub struct Probe {
    pub sent: u64,
    pub echoed: u64,
    pub gaps: Vec<(f64, Duration)>,
}

/// Sends a numbered datagram to `to` every `interval` for `seconds` and times the
/// echoes (`udp-echo` answers): the longest silences are how long forwarding
/// stopped. Bounded: `seconds` / `interval` datagrams at most.
pub fn probe(to: SocketAddr, interval: Duration, seconds: f64, gap: Duration) -> Result<Probe> {
    let s = std::net::UdpSocket::bind(("0.0.0.0", 0))?;
    s.connect(to)?;
    s.set_read_timeout(Some(interval.max(Duration::from_micros(200))))?;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut p = Probe::default();
    let (mut next, mut last) = (start, start);
    let mut buf = [0u8; 64];
    while Instant::now() < end {
        if Instant::now() >= next {
            // Errors (no route, refused while a node restarts) are silence too.
            let _ = s.send(&p.sent.to_be_bytes());
            p.sent += 1;
            next += interval;
        }
        if let Ok(8) = s.recv(&mut buf) {
            let now = Instant::now();
            if now - last > gap {
                p.gaps.push(((last - start).as_secs_f64(), now - last));
            }
            last = now;
            p.echoed += 1;
        }
    }
    Ok(p)
}

/// Downloads from `from` and checks every byte; returns the count.
pub fn fetch(from: SocketAddr, bytes: u64, seed: u64, timeout: Duration) -> Result<u64> {
    let end = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match TcpStream::connect_timeout(&from, Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > end => {
                return Err(e).context(format!("connecting to {from}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    s.set_read_timeout(Some(timeout))?;
    let mut g = Stream::new(seed);
    let (mut buf, mut want) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf).context("receiving")?;
        if n == 0 {
            break;
        }
        g.fill(&mut want[..n]);
        if buf[..n] != want[..n] {
            bail!("byte {} onwards differs from what was sent", got);
        }
        got += n as u64;
    }
    if got != bytes {
        bail!("received {got} of {bytes} bytes");
    }
    Ok(got)
}

/// Sends one TCP segment with exactly `flags` (S F R A P U, or "none") from a raw
/// socket: the kernel adds the IPv4 header and our source address; the segment is
/// built here (etherparse computes the checksum). For provoking a dataplane with
/// flag combinations no TCP stack sends. Returns the segment's length.
pub fn tcp_raw(to: SocketAddr, sport: u16, flags: &str, seq: u32) -> Result<usize> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let SocketAddr::V4(dst) = to else {
        anyhow::bail!("IPv4 only");
    };
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP))?;
    // The source address the kernel will use for this destination.
    let probe = std::net::UdpSocket::bind(("0.0.0.0", 0))?;
    probe.connect(to)?;
    let std::net::IpAddr::V4(src) = probe.local_addr()?.ip() else {
        anyhow::bail!("no IPv4 source for {to}");
    };
    let mut h = etherparse::TcpHeader::new(sport, dst.port(), seq, 64_240);
    for c in flags.chars() {
        match c {
            'S' => h.syn = true,
            'F' => h.fin = true,
            'R' => h.rst = true,
            'A' => {
                h.ack = true;
                h.acknowledgment_number = 1;
            }
            'P' => h.psh = true,
            'U' => h.urg = true,
            _ if flags == "none" => {}
            _ => anyhow::bail!("flag {c:?}: use S F R A P U or none"),
        }
    }
    h.checksum = h
        .calc_checksum_ipv4_raw(src.octets(), dst.ip().octets(), &[])
        .map_err(|e| anyhow::anyhow!("checksum: {e}"))?;
    let bytes = h.to_bytes();
    s.send_to(&bytes, &SockAddr::from(to))?;
    Ok(bytes.len())
}

/// One HTTP/1.1 GET with `Connection: close`: the status code and the body.
pub fn http_get(to: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = Vec::new();
    s.take(1 << 16).read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status code")?;
    Ok((code, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_deterministic_and_chunking_independent() {
        let mut a = Stream::new(7);
        let mut one = vec![0u8; 64];
        a.fill(&mut one);
        let mut b = Stream::new(7);
        let mut two = vec![0u8; 64];
        b.fill(&mut two[..13]);
        b.fill(&mut two[13..]);
        assert_eq!(one, two);
        assert_ne!(one, vec![0u8; 64]);
    }
}
