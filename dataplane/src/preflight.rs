//! What the process needs from its host, checked before EAL starts: a container that
//! lacks a capability or a mount is told which one, and how to grant it, instead of
//! failing deep inside EAL (`mlockall() failed`, promiscuous mode EPERM, a tap ioctl).
//!
//! In podpath's image the dataplane runs as a non-root user and its file carries the
//! capabilities below as *permitted* only: exec succeeds whatever the container
//! grants, and [`raise`] makes effective what the container's bounding set allows.
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability};

/// A capability the dataplane uses, why, and whether it cannot start without it.
pub struct Need {
    pub cap: Capability,
    pub why: &'static str,
    pub required: bool,
    /// Needed only when EAL runs on hugepages.
    pub hugepages_only: bool,
}

pub const NEEDS: [Need; 5] = [
    Need {
        cap: Capability::CAP_NET_ADMIN,
        why: "promiscuous mode, tap devices and interface flags",
        required: true,
        hugepages_only: false,
    },
    Need {
        cap: Capability::CAP_NET_RAW,
        why: "af_packet ports (raw sockets on an interface)",
        required: true,
        hugepages_only: false,
    },
    Need {
        cap: Capability::CAP_IPC_LOCK,
        why: "locking DPDK's memory (hugepages, or mlockall with --no-huge)",
        required: true,
        hugepages_only: false,
    },
    Need {
        cap: Capability::CAP_SYS_NICE,
        why: "placing hugepage memory by NUMA node (container seccomp profiles allow \
              set_mempolicy only with it)",
        required: true,
        hugepages_only: true,
    },
    Need {
        cap: Capability::CAP_SYS_ADMIN,
        why: "tap ports inside a pod's network namespace (setns)",
        required: false,
        hugepages_only: false,
    },
];

/// Makes every permitted capability of [`NEEDS`] effective (file capabilities that
/// are permitted only); those the container does not permit stay off.
pub fn raise() {
    for n in &NEEDS {
        if caps::has_cap(None, CapSet::Permitted, n.cap).unwrap_or(false) {
            let _ = caps::raise(None, CapSet::Effective, n.cap);
        }
    }
}

/// The capabilities of [`NEEDS`] this process lacks (effective set), for a run on
/// hugepages or not.
pub fn missing(hugepages: bool) -> Vec<&'static Need> {
    NEEDS
        .iter()
        .filter(|n| hugepages || !n.hugepages_only)
        .filter(|n| !caps::has_cap(None, CapSet::Effective, n.cap).unwrap_or(false))
        .collect()
}

/// How to grant `cap` ("CAP_NET_ADMIN" -> "NET_ADMIN").
fn short(cap: Capability) -> String {
    cap.to_string().trim_start_matches("CAP_").to_string()
}

/// An error naming every required capability that is missing, with how to add them;
/// warnings for optional ones and for a missing `/dev/net/tun`.
pub fn check_capabilities(hugepages: bool) -> Result<Vec<String>, String> {
    let gone = missing(hugepages);
    let mut warnings: Vec<String> = gone
        .iter()
        .filter(|n| !n.required)
        .map(|n| {
            format!(
                "without {} there are no {} (attaching one fails)",
                n.cap, n.why
            )
        })
        .collect();
    if !Path::new("/dev/net/tun").exists() {
        warnings.push(
            "no /dev/net/tun: tap ports cannot be created (docker run --device /dev/net/tun; \
             Kubernetes: a hostPath volume /dev/net/tun)"
                .into(),
        );
    }
    let required: Vec<&&Need> = gone.iter().filter(|n| n.required).collect();
    if required.is_empty() {
        return Ok(warnings);
    }
    let list: Vec<String> = required
        .iter()
        .map(|n| format!("  {}: {}", n.cap, n.why))
        .collect();
    let add: Vec<String> = required.iter().map(|n| short(n.cap)).collect();
    Err(format!(
        "missing capabilities:\n{}\ngrant them: docker run --cap-add {}; Kubernetes: \
         securityContext.capabilities.add: [{}] (as a non-root user, on a binary whose \
         file permits them, as podpath's image does)",
        list.join("\n"),
        add.join(" --cap-add "),
        add.join(", ")
    ))
}

/// The first hugetlbfs mount this process can create files in, per `/proc/self/mounts`.
pub fn hugetlbfs() -> Result<PathBuf, String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let dirs = hugetlbfs_mounts(&mounts);
    if dirs.is_empty() {
        return Err(
            "no hugetlbfs is mounted (docker run -v /dev/hugepages:/dev/hugepages; \
                    Kubernetes: an emptyDir volume with medium HugePages-2Mi at /dev/hugepages)"
                .into(),
        );
    }
    let mut why = Vec::new();
    for d in dirs {
        let probe = d.join(format!(".podpath-probe-{}", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
        {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
                return Ok(d);
            }
            Err(e) => why.push(format!("{}: {e}", d.display())),
        }
    }
    Err(format!(
        "no hugetlbfs mount is writable by this user ({})",
        why.join("; ")
    ))
}

fn hugetlbfs_mounts(mounts: &str) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "hugetlbfs").then(|| PathBuf::from(f[1]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hugetlbfs_mounts_are_read_from_the_mount_table() {
        let t =
            "proc /proc proc rw 0 0\nnodev /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n\
                 tmpfs /run tmpfs rw 0 0\nnone /mnt/huge1G hugetlbfs rw,pagesize=1G 0 0\n";
        assert_eq!(
            hugetlbfs_mounts(t),
            vec![
                PathBuf::from("/dev/hugepages"),
                PathBuf::from("/mnt/huge1G")
            ]
        );
        assert!(hugetlbfs_mounts("proc /proc proc rw 0 0\n").is_empty());
    }

    #[test]
    fn every_need_is_named_with_how_to_grant_it() {
        assert_eq!(short(Capability::CAP_NET_ADMIN), "NET_ADMIN");
        assert_eq!(NEEDS.iter().filter(|n| n.required).count(), 4);
        assert!(NEEDS.iter().all(|n| !n.why.is_empty()));
    }
}
