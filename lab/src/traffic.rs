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

/// Sends `bytes` of the stream to `to`, retrying the connect for up to 10 s.
pub fn send(to: SocketAddr, bytes: u64, seed: u64, timeout: Duration) -> Result<()> {
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
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        g.fill(&mut buf[..n]);
        s.write_all(&buf[..n]).context("sending")?;
        left -= n as u64;
    }
    s.shutdown(Shutdown::Write)?;
    // Wait for the receiver's verdict byte.
    let mut v = [0u8; 1];
    s.read_exact(&mut v)
        .context("waiting for the receiver's verdict")?;
    if v[0] != b'+' {
        bail!("receiver reported corrupted or short data");
    }
    Ok(())
}

/// Accepts one connection on `port`, checks `bytes` of the stream; returns the count.
pub fn recv(port: u16, bytes: u64, seed: u64, timeout: Duration) -> Result<u64> {
    let l = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("binding port {port}"))?;
    l.set_nonblocking(true)?;
    let end = Instant::now() + timeout;
    let (mut s, _) = loop {
        match l.accept() {
            Ok(c) => break c,
            Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e).context("no connection arrived"),
        }
    };
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(timeout))?;
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
    let ok = ok && got == bytes;
    let _ = s.write_all(if ok { b"+" } else { b"-" });
    if !ok {
        bail!(
            "received {got} of {bytes} bytes, content {}",
            if got == bytes { "corrupted" } else { "short" }
        );
    }
    Ok(got)
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
