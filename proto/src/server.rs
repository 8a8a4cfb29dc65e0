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

fn client_loop(mut stream: UnixStream, jobs: &SyncSender<Job>) {
    stream.set_nonblocking(false).ok();
    // A client that stops mid-frame or goes silent is dropped after this long.
    stream.set_read_timeout(Some(Duration::from_secs(300))).ok();
    stream.set_write_timeout(Some(Duration::from_secs(10))).ok();
    let mut hello = false;
    loop {
        let env: Envelope<Request> = match read_frame(&mut stream) {
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
