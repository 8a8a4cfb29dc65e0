//! systemd's notify protocol (`Type=notify`, `WatchdogSec=`): `READY=1` once the
//! workers run and the last process's state is replayed, `WATCHDOG=1` while every
//! worker is alive, `STOPPING=1` on the way out. A datagram to `$NOTIFY_SOCKET`; no
//! libsystemd. Without `NOTIFY_SOCKET` (not under systemd) every call is a no-op.
//!
//! The watchdog is the workers' own: it is fed only while each worker's poll count
//! moves, so a worker stuck in a loop (or a stalled control thread) stops the
//! feeding and systemd restarts the dataplane, which resumes its connections.
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

pub struct Notifier {
    sock: Option<(UnixDatagram, std::path::PathBuf)>,
    /// Half of `WATCHDOG_USEC`, as systemd advises; none: no watchdog asked.
    every: Option<Duration>,
    last: Instant,
    polls: Vec<u64>,
}

impl Notifier {
    /// From the environment systemd sets (`NOTIFY_SOCKET`, `WATCHDOG_USEC`,
    /// `WATCHDOG_PID`). An abstract socket (`@name`) is not supported: systemd
    /// passes a path.
    pub fn from_env() -> Notifier {
        let path = std::env::var_os("NOTIFY_SOCKET")
            .map(std::path::PathBuf::from)
            .filter(|p| !p.as_os_str().is_empty() && !p.to_string_lossy().starts_with('@'));
        let sock = path.and_then(|p| UnixDatagram::unbound().ok().map(|s| (s, p)));
        let ours = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && ours)
            .map(|u| Duration::from_micros(u / 2));
        Notifier {
            sock,
            every,
            last: Instant::now(),
            polls: Vec::new(),
        }
    }

    fn send(&self, msg: &str) {
        if let Some((s, p)) = &self.sock {
            let _ = s.send_to(msg.as_bytes(), p);
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!(
            "READY=1\nSTATUS={status}\nMAINPID={}",
            std::process::id()
        ));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// Called from the control loop: feeds the watchdog when it is due and every
    /// worker's poll count moved since the last feed.
    pub fn tick(&mut self, polls: impl Iterator<Item = u64>) {
        let Some(every) = self.every else {
            return;
        };
        if self.last.elapsed() < every {
            return;
        }
        let now: Vec<u64> = polls.collect();
        let alive =
            self.polls.len() != now.len() || now.iter().zip(&self.polls).all(|(a, b)| a > b);
        if alive {
            self.send("WATCHDOG=1");
        }
        self.polls = now;
        self.last = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_fed_only_while_every_worker_polls() {
        let path = std::env::temp_dir().join(format!("pp-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut n = Notifier {
            sock: Some((UnixDatagram::unbound().unwrap(), path.clone())),
            every: Some(Duration::from_millis(10)),
            last: Instant::now(),
            polls: Vec::new(),
        };
        let mut buf = [0u8; 256];
        let mut got = || {
            rx.recv(&mut buf)
                .ok()
                .map(|k| String::from_utf8_lossy(&buf[..k]).to_string())
        };
        n.ready("1 worker(s) forwarding");
        assert!(got()
            .unwrap()
            .starts_with("READY=1\nSTATUS=1 worker(s) forwarding"));
        std::thread::sleep(Duration::from_millis(15));
        n.tick([5, 7].into_iter());
        assert_eq!(got().as_deref(), Some("WATCHDOG=1"));
        std::thread::sleep(Duration::from_millis(15));
        n.tick([6, 9].into_iter());
        assert_eq!(got().as_deref(), Some("WATCHDOG=1"));
        // Worker 1 is stuck: no feed, so systemd's watchdog fires.
        std::thread::sleep(Duration::from_millis(15));
        n.tick([8, 9].into_iter());
        assert_eq!(got(), None);
        // Not due yet (just fed or checked): nothing either.
        n.last = Instant::now();
        n.tick([9, 10].into_iter());
        assert_eq!(got(), None);
        n.stopping();
        assert_eq!(got().as_deref(), Some("STOPPING=1"));
        let _ = std::fs::remove_file(&path);
    }
}
