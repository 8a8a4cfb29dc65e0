//! Running a piece of control-thread work inside another network namespace.
//!
//! DPDK's tap PMD creates its kernel device, and the af_packet PMD binds its socket, in
//! the namespace of the thread that probes them. Probing with the thread moved into a
//! pod's namespace is how the dataplane gives a pod a tap as its own `eth0`, or opens
//! an af_packet socket on an interface that lives in another namespace.
use std::ffi::CString;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace path {0:?} contains a NUL byte")]
    BadPath(String),
    #[error("cannot enter network namespace {path}: {err}")]
    Enter { path: String, err: std::io::Error },
}

/// Runs `f` with the calling thread in the network namespace at `path` (e.g.
/// `/var/run/netns/pod-a`), then moves the thread back, also when `f` fails.
pub fn with_netns<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
    let shown = path.display().to_string();
    let c = CString::new(shown.clone()).map_err(|_| NetnsError::BadPath(shown.clone()))?;
    // SAFETY: c is a valid NUL-terminated string; pp_netns_enter only opens it and calls
    // setns(2) for the calling thread, returning a descriptor it owns or -errno.
    let saved = unsafe { dpdk_sys::pp_netns_enter(c.as_ptr()) };
    if saved < 0 {
        return Err(NetnsError::Enter {
            path: shown,
            err: std::io::Error::from_raw_os_error(-saved),
        });
    }
    /// Moves the thread back even if `f` panics.
    struct Back(i32);
    impl Drop for Back {
        fn drop(&mut self) {
            // SAFETY: self.0 is the descriptor pp_netns_enter returned; leave consumes it.
            let rc = unsafe { dpdk_sys::pp_netns_leave(self.0) };
            if rc < 0 {
                // The control thread would act in a pod's namespace from now on.
                eprintln!(
                    "podpath-dataplane: fatal: cannot return to the dataplane's network namespace: {}",
                    std::io::Error::from_raw_os_error(-rc)
                );
                std::process::abort();
            }
        }
    }
    let back = Back(saved);
    let out = f();
    drop(back);
    Ok(out)
}
