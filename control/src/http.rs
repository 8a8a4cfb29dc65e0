//! The smallest HTTP/1.1 server the control service needs (health checks, metrics):
//! one request per connection, answered and closed. Off the fast path, a thread per
//! listener; a slow client waits at most a few seconds.
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// An answer: status code, content type, body.
pub struct Answer {
    pub code: u16,
    pub content_type: &'static str,
    pub body: String,
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Accepts until `stop`; `answer` gets each request's path.
pub fn serve(l: TcpListener, stop: &AtomicBool, answer: impl Fn(&str) -> Answer) {
    let _ = l.set_nonblocking(true);
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut s, _)) = l.accept() else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let _ = s.set_nonblocking(false);
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
        // The request line and headers: what comes in one read (bounded) will do.
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        let req = String::from_utf8_lossy(&buf[..n]);
        let path = req.split_whitespace().nth(1).unwrap_or("");
        let a = answer(path);
        let _ = write!(
            s,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            a.code,
            reason(a.code),
            a.content_type,
            a.body.len(),
            a.body
        );
    }
}
