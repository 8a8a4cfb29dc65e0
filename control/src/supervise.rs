//! The dataplane's supervisor: with `[control] dataplane_command` set, the control
//! service starts podpath-dataplane, restarts it when it dies (with back-off), and
//! says so in its events (`dataplane-started`, `dataplane-exited`) and metrics
//! (`podpath_dataplane_restarts_total`). The restarted dataplane resumes its
//! connection tables from its state directory, and the control service reconciles
//! the rest as after any reconnect.
//!
//! The dataplane runs in a process group of its own, so a signal to the control
//! service (kill -9, an upgrade) does not reach it: forwarding goes on, and the next
//! control service finds it answering its socket and adopts it rather than starting
//! a second one (which the dataplane's state-file lock would refuse anyway).
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Restart back-off: from `FIRST`, doubling to `LONGEST`; a dataplane that ran for
/// `STEADY` is restarted at once and starts the count again.
const FIRST: Duration = Duration::from_millis(100);
const LONGEST: Duration = Duration::from_secs(10);
const STEADY: Duration = Duration::from_secs(10);

pub struct Supervisor {
    cmd: Vec<String>,
    log: Option<PathBuf>,
    child: Option<Child>,
    started_at: Instant,
    backoff: Duration,
    next_start: Instant,
    /// Consecutive checks that found no dataplane answering.
    missing: u32,
    /// A dataplane ran before (started or adopted): the next start is a restart.
    seen: bool,
    pub restarts: u64,
}

/// What a check did, for the events.
#[derive(Debug, PartialEq, Eq)]
pub enum Happened {
    Started { pid: u32 },
    Exited { pid: u32, how: String },
    StartFailed(String),
}

impl Supervisor {
    pub fn new(cmd: Vec<String>, log: Option<PathBuf>) -> Supervisor {
        let now = Instant::now();
        Supervisor {
            cmd,
            log,
            child: None,
            started_at: now,
            backoff: FIRST,
            next_start: now,
            missing: 0,
            seen: false,
            restarts: 0,
        }
    }

    /// The pid of the dataplane this service started, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// One check: reaps a dataplane of ours that exited, and starts one when none
    /// answers (`answering`: the socket connected) and the back-off allows. A
    /// dataplane that answers but is not ours (the previous control service's) is
    /// adopted: left alone.
    pub fn check(&mut self, answering: bool) -> Vec<Happened> {
        let mut out = Vec::new();
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                let pid = c.id();
                let how = match (status.code(), status.signal()) {
                    (Some(code), _) => format!("exit status {code}"),
                    (None, Some(sig)) => format!("killed by signal {sig}"),
                    _ => "ended".into(),
                };
                self.child = None;
                // Ours, and known dead: no need to wait for silent checks. One that
                // ran steadily comes back at once; one that keeps dying backs off.
                self.missing = 2;
                if self.started_at.elapsed() >= STEADY {
                    self.backoff = FIRST;
                    self.next_start = Instant::now();
                } else {
                    self.next_start = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(LONGEST);
                }
                out.push(Happened::Exited { pid, how });
            }
        }
        self.missing = if answering {
            0
        } else {
            self.missing.saturating_add(1)
        };
        self.seen |= answering;
        // Two checks in a row with no answer: not a dataplane still starting up.
        if self.child.is_none() && self.missing >= 2 && Instant::now() >= self.next_start {
            match self.spawn() {
                Ok(pid) => {
                    out.push(Happened::Started { pid });
                }
                Err(e) => {
                    self.next_start = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(LONGEST);
                    out.push(Happened::StartFailed(e));
                }
            }
        }
        out
    }

    fn spawn(&mut self) -> Result<u32, String> {
        let (prog, args) = self
            .cmd
            .split_first()
            .ok_or_else(|| "control.dataplane_command is empty".to_string())?;
        let mut c = Command::new(prog);
        c.args(args).stdin(Stdio::null()).process_group(0);
        if let Some(p) = &self.log {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("control.dataplane_log {}: {e}", p.display()))?;
            let g = f.try_clone().map_err(|e| e.to_string())?;
            c.stdout(f).stderr(g);
        }
        let child = c.spawn().map_err(|e| format!("starting {prog}: {e}"))?;
        let pid = child.id();
        if self.seen {
            self.restarts += 1;
        }
        self.seen = true;
        self.child = Some(child);
        self.started_at = Instant::now();
        self.missing = 0;
        Ok(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_dataplane_is_restarted_with_back_off_and_a_live_one_left_alone() {
        let mut s = Supervisor::new(vec!["sleep".into(), "0.2".into()], None);
        // Answering: adopted, nothing started.
        assert!(s.check(true).is_empty());
        // One silent check is not enough (it may be starting).
        assert!(s.check(false).is_empty());
        let started = s.check(false);
        assert!(
            matches!(started[..], [Happened::Started { .. }]),
            "{started:?}"
        );
        let pid = s.pid().unwrap();
        std::thread::sleep(Duration::from_millis(400));
        let v = s.check(false);
        assert_eq!(
            v[0],
            Happened::Exited {
                pid,
                how: "exit status 0".into()
            }
        );
        // It ran under STEADY: the next start waits for the doubled back-off.
        assert!(v.len() == 1, "restarted at once: {v:?}");
        std::thread::sleep(Duration::from_millis(250));
        let v = s.check(false);
        assert!(matches!(v[..], [Happened::Started { .. }]), "{v:?}");
        // Both starts were restarts: the first replaced the adopted one.
        assert_eq!(s.restarts, 2);
        let bad = Supervisor::new(vec!["/nonexistent/podpath-dataplane".into()], None).check(false);
        assert!(bad.is_empty());
        let mut bad = Supervisor::new(vec!["/nonexistent/podpath-dataplane".into()], None);
        bad.check(false);
        let v = bad.check(false);
        assert!(
            matches!(&v[..], [Happened::StartFailed(e)] if e.contains("nonexistent")),
            "{v:?}"
        );
    }
}
