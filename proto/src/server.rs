//! The server side of the protocol, shared by the dataplane and the control service:
//! socket creation, and one thread per client feeding requests to a single executor.
use std::io::ErrorKind as IoErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use crate::codec::{read_frame, write_frame, CodecError};
use crate::msg::{Envelope, ErrorKind, ErrorReply, Request, Response};

/// A request from a client thread, with where to send the answer.
pub type Job = (Request, SyncSender<Response>);

/// Clients served at once; more are answered with an error and closed.
pub const MAX_CLIENTS: usize = 64;
/// A new client must say Hello within this long, or it is dropped (a connection
/// that never speaks does not hold a slot for long).
pub const HELLO_WITHIN: Duration = Duration::from_secs(5);
/// A client silent this long between requests is dropped.
pub const IDLE_AFTER: Duration = Duration::from_secs(300);
/// Once a frame's first byte came, the whole frame must within this long (a
/// client dripping a byte at a time cannot hold its slot).
pub const FRAME_WITHIN: Duration = Duration::from_secs(5);

/// Creates a control socket: removes a stale file (nobody answering on it), refuses
/// when a live server listens there, and sets mode 0660 (and the group, if given).
pub fn bind_socket(path: &Path, group: Option<&str>) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                IoErrorKind::AddrInUse,
                format!("{} is in use by a running server", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(g) = group {
        let status = std::process::Command::new("chgrp")
            .arg(g)
            .arg(path)
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!(
                "chgrp {g} {} failed",
                path.display()
            )));
        }
    }
    Ok(l)
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error(ErrorReply {
        kind,
        message: message.into(),
    })
}

/// Accepts clients until `stop`; each gets its own thread, so a slow or silent client
/// stalls only itself. Requests reach the executor through `jobs`, one at a time.
pub fn serve(listener: UnixListener, jobs: SyncSender<Job>, stop: Arc<AtomicBool>) {
    listener.set_nonblocking(true).ok();
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                if active.load(Ordering::Relaxed) >= MAX_CLIENTS {
                    stream.set_nonblocking(false).ok();
                    let _ = write_frame(
                        &mut stream,
                        &Envelope {
                            id: 0,
                            body: error(
                                ErrorKind::Unavailable,
                                format!("too many clients (at most {MAX_CLIENTS})"),
                            ),
                        },
                    );
                    continue;
                }
                active.fetch_add(1, Ordering::Relaxed);
                let (jobs, active) = (jobs.clone(), Arc::clone(&active));
                std::thread::spawn(move || {
                    client_loop(stream, &jobs);
                    active.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Reads one frame: the wait for its first byte may last `idle`, the rest of it
/// `FRAME_WITHIN` in all.
fn read_frame_within(
    stream: &mut UnixStream,
    idle: Duration,
) -> Result<Envelope<Request>, CodecError> {
    use std::io::Read;
    stream.set_read_timeout(Some(idle)).ok();
    let mut first = [0u8; 1];
    loop {
        match stream.read(&mut first) {
            Ok(0) => return Err(CodecError::Closed),
            Ok(_) => break,
            // A signal is no reason to drop the client (read_exact retries too).
            Err(e) if e.kind() == IoErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let deadline = std::time::Instant::now() + FRAME_WITHIN;
    struct Within<'a> {
        s: &'a mut UnixStream,
        deadline: std::time::Instant,
    }
    impl std::io::Read for Within<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let left = self
                .deadline
                .saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(
                    IoErrorKind::TimedOut,
                    "frame not complete in time",
                ));
            }
            self.s.set_read_timeout(Some(left))?;
            self.s.read(buf)
        }
    }
    let mut rest = Within {
        s: stream,
        deadline,
    };
    read_frame(&mut std::io::Read::chain(&first[..], &mut rest))
}

fn client_loop(mut stream: UnixStream, jobs: &SyncSender<Job>) {
    stream.set_nonblocking(false).ok();
    stream.set_write_timeout(Some(Duration::from_secs(10))).ok();
    let mut hello = false;
    loop {
        let idle = if hello { IDLE_AFTER } else { HELLO_WITHIN };
        let env: Envelope<Request> = match read_frame_within(&mut stream, idle) {
            Ok(e) => e,
            Err(CodecError::Closed) => return,
            Err(e) => {
                // Answer garbage with a typed error, then close: framing is lost.
                let _ = write_frame(
                    &mut stream,
                    &Envelope {
                        id: 0,
                        body: error(ErrorKind::BadRequest, e.to_string()),
                    },
                );
                return;
            }
        };
        let is_hello = matches!(env.body, Request::Hello { .. });
        let body = if !hello && !is_hello {
            error(ErrorKind::BadRequest, "the first request must be Hello")
        } else {
            let (tx, rx) = sync_channel(1);
            if jobs.send((env.body, tx)).is_err() {
                return;
            }
            let Ok(r) = rx.recv() else { return };
            if is_hello && matches!(r, Response::Hello { .. }) {
                hello = true;
            }
            r
        };
        if write_frame(&mut stream, &Envelope { id: env.id, body }).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Client, ClientError};
    use std::io::{Read, Write};
    use std::time::Instant;

    /// A server on a socket of its own, answering Hello and Ping.
    fn server(tag: &str) -> (std::path::PathBuf, Arc<AtomicBool>) {
        let dir = std::env::temp_dir().join(format!("pp-srv-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("s.sock");
        let l = bind_socket(&path, None).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = sync_channel::<Job>(64);
        let s2 = Arc::clone(&stop);
        std::thread::spawn(move || serve(l, tx, s2));
        std::thread::spawn(move || {
            while let Ok((req, reply)) = rx.recv() {
                let _ = reply.send(match req {
                    Request::Hello { .. } => Response::Hello {
                        version: crate::PROTOCOL_VERSION,
                        server: "test".into(),
                        dpdk: "none".into(),
                    },
                    _ => Response::Done,
                });
            }
        });
        (path, stop)
    }

    #[test]
    fn silent_clients_lose_their_slot_and_the_refusal_is_readable() {
        let (path, stop) = server("idle");
        let idle: Vec<UnixStream> = (0..MAX_CLIENTS)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        // Every slot held: the next client is told why, not "unexpected response".
        match Client::connect(&path, "test") {
            Err(ClientError::Server(e)) => {
                assert!(e.message.contains("too many clients"), "{e:?}")
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("served beyond {MAX_CLIENTS} clients"),
        }
        // The silent ones are dropped once HELLO_WITHIN passes: served again.
        let t = Instant::now();
        let mut served = false;
        while t.elapsed() < HELLO_WITHIN + Duration::from_secs(3) {
            if Client::connect(&path, "test").is_ok() {
                served = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(served, "silent clients still hold every slot");
        assert!(t.elapsed() >= HELLO_WITHIN - Duration::from_secs(1));
        drop(idle);
        stop.store(true, Ordering::Relaxed);
    }

    #[test]
    fn a_client_that_drips_a_frame_is_dropped() {
        let (path, stop) = server("drip");
        let mut c = Client::connect(&path, "test").unwrap();
        assert_eq!(c.call(Request::Ping).unwrap(), Response::Done);
        // Another client starts a frame and sends one more byte a second.
        let mut s = UnixStream::connect(&path).unwrap();
        let hello = crate::codec::encode(&Envelope {
            id: 1,
            body: Request::Hello {
                version: crate::PROTOCOL_VERSION,
                client: "drip".into(),
            },
        })
        .unwrap();
        let t = Instant::now();
        let mut closed = false;
        for b in hello.iter().take(20) {
            if s.write_all(&[*b]).is_err() {
                closed = true;
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
            s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
            let mut buf = [0u8; 64];
            if matches!(s.read(&mut buf), Ok(0)) {
                closed = true;
                break;
            }
        }
        assert!(closed, "a dripping client kept its connection");
        assert!(t.elapsed() < FRAME_WITHIN + Duration::from_secs(3));
        // The well-behaved client was served all along.
        assert_eq!(c.call(Request::Ping).unwrap(), Response::Done);
        stop.store(true, Ordering::Relaxed);
    }
}
