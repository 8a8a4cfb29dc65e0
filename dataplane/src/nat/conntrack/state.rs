//! The connection table's state file: one per worker, `conntrack-<worker>` in the
//! dataplane's `state_dir` (tmpfs: it survives the process, not a reboot). The
//! worker's slab is a shared mapping of it, so every change a worker makes is in the
//! file the moment it is made; a `kill -9` loses nothing. A restarted dataplane maps
//! the file again and `Conntrack::resume` rebuilds the index and wheel from it.
//!
//! Why a file and not a hand-over over the socket: a crash or an OOM kill gives the
//! old process no chance to hand anything over, and a planned upgrade then needs no
//! second path. The price is the file's memory, allocated at start (the table's
//! whole reservation: `file_bytes`).
//!
//! Layout: page 0 holds a [`Header`]; the slab of `reserved` entries follows. The
//! header names its layout version and entry size; a file of another layout, of
//! another boot, or made for another worker split is refused by name and kept aside
//! as `conntrack-<worker>.refused`; one whose only difference is the reservation
//! (`conntrack.max_capacity` changed) is converted into a new file.
use super::{Entry, F_DEAD};
use crate::dpdk::region::{self, page_size, Region};
use std::fs::File;
use std::path::{Path, PathBuf};

/// "PODPATCT", little endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"PODPATCT");
/// Bump when `Entry`, `Tuple` or `Header` change shape or meaning.
pub const LAYOUT: u32 = 1;
/// An entry's size, recorded in the header so a changed `Entry` is caught even if
/// `LAYOUT` was not bumped.
#[allow(clippy::cast_possible_truncation)] // 52
const ENTRY_SIZE: u32 = std::mem::size_of::<Entry>() as u32;

crate::plain_struct! {
#[derive(Debug, Clone, Copy, Default)]
pub struct Header {
    pub magic: u64,
    pub layout: u32,
    pub entry_size: u32,
    /// Entries the slab has room for.
    pub reserved: u64,
    /// Entries handed out so far (the slab's high-water mark).
    pub used: u64,
    pub worker: u32,
    pub workers: u32,
    pub nat_lo: u32,
    pub nat_hi: u32,
    /// /proc/sys/kernel/random/boot_id when written: the table's clock counts from
    /// boot, so another boot's times mean nothing.
    pub boot_id: [u64; 2],
    /// The table's clock (seconds) and the wall clock (ms) at the same moment, stamped
    /// once a second by the worker.
    pub clock_secs: u64,
    pub wall_ms: u64,
}
}

/// Which worker a table belongs to: a restarted dataplane resumes only tables of its
/// own split (NAT port slices name their worker, so another split would misroute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub worker: u16,
    pub workers: u16,
    pub nat: (u16, u16),
}

/// What `open` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No file: a new, empty one.
    Fresh,
    /// The file as the last process left it.
    Resumed,
    /// The same layout with another reservation: its entries copied into a new file.
    Converted { from_reserved: u64 },
    /// Not usable (the reason); kept aside, and a new, empty one made.
    Refused(String),
}

/// A state file mapped and locked, ready for `Conntrack::resume`.
pub struct Opened {
    pub(super) file: File,
    pub(super) hdr: Region<Header>,
    pub(super) slab: Region<Entry>,
    pub outcome: Outcome,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("dataplane.state_dir: connection state {path}: {msg}")]
pub struct StateError {
    pub path: PathBuf,
    pub msg: String,
}

/// The state file of `worker` in `dir`.
pub fn path(dir: &Path, worker: u16) -> PathBuf {
    dir.join(format!("conntrack-{worker}"))
}

/// Bytes a state file of `reserved` entries takes (allocated when it is made).
pub fn file_bytes(reserved: usize) -> u64 {
    let page = page_size() as u64;
    let body = (reserved as u64).saturating_mul(std::mem::size_of::<Entry>() as u64);
    page.saturating_add(body.div_ceil(page).saturating_mul(page))
}

/// Stamps the clock pair the next process shifts expiries by.
pub fn stamp(h: &mut Header, now: u32) {
    h.clock_secs = u64::from(now);
    h.wall_ms = wall_ms();
}

pub(super) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// This boot's id (zeros where the kernel does not say).
pub fn boot_id() -> [u64; 2] {
    let s = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let hex: String = s.chars().filter(char::is_ascii_hexdigit).collect();
    if hex.len() != 32 {
        return [0, 0];
    }
    [
        u64::from_str_radix(&hex[..16], 16).unwrap_or(0),
        u64::from_str_radix(&hex[16..], 16).unwrap_or(0),
    ]
}

/// Opens (or makes) `worker`'s state file in `dir` for a table of `reserved`
/// entries. Errors: the directory or file cannot be made, allocated or mapped, or
/// another process holds the file (two dataplanes on one state directory).
pub fn open(dir: &Path, owner: Owner, reserved: usize) -> Result<Opened, StateError> {
    let p = path(dir, owner.worker);
    let err = |msg: String| StateError {
        path: p.clone(),
        msg,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create the directory: {e}")))?;
    let old = match File::options().read(true).write(true).open(&p) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(err(format!("cannot open: {e}"))),
    };
    let Some(old) = old else {
        let (file, hdr, slab) = create(&p, owner, reserved).map_err(err)?;
        return Ok(Opened {
            file,
            hdr,
            slab,
            outcome: Outcome::Fresh,
            path: p,
        });
    };
    if !region::lock_exclusive(&old).map_err(|e| err(format!("cannot lock: {e}")))? {
        return Err(err(
            "in use by another process (is a second podpath-dataplane running with this \
             state_dir?)"
                .into(),
        ));
    }
    match judge(&old, owner) {
        Ok(h) if h.reserved == reserved as u64 => {
            let hdr = Region::<Header>::shared(&old, 0, 1).map_err(|e| err(e.to_string()))?;
            let slab = Region::<Entry>::shared(&old, page_size() as u64, reserved)
                .map_err(|e| err(e.to_string()))?;
            Ok(Opened {
                file: old,
                hdr,
                slab,
                outcome: Outcome::Resumed,
                path: p,
            })
        }
        Ok(h) => {
            let from = Region::<Entry>::shared(
                &old,
                page_size() as u64,
                usize::try_from(h.reserved).unwrap_or(0),
            )
            .map_err(|e| err(e.to_string()))?;
            let (file, mut hdr, mut slab) = create(&p, owner, reserved).map_err(err)?;
            let mut k = 0;
            for e in from
                .iter()
                .take(usize::try_from(h.used.min(h.reserved)).unwrap_or(0))
            {
                if e.flags & F_DEAD == 0 && k < slab.len() {
                    slab[k] = *e;
                    k += 1;
                }
            }
            hdr[0].used = k as u64;
            hdr[0].clock_secs = h.clock_secs;
            hdr[0].wall_ms = h.wall_ms;
            Ok(Opened {
                file,
                hdr,
                slab,
                outcome: Outcome::Converted {
                    from_reserved: h.reserved,
                },
                path: p,
            })
        }
        Err(why) => {
            let aside = p.with_extension("refused");
            std::fs::rename(&p, &aside)
                .map_err(|e| err(format!("cannot move the refused file aside: {e}")))?;
            drop(old);
            let (file, hdr, slab) = create(&p, owner, reserved).map_err(err)?;
            Ok(Opened {
                file,
                hdr,
                slab,
                outcome: Outcome::Refused(why),
                path: p,
            })
        }
    }
}

/// The header of an existing file, if this process may resume it; else why not.
fn judge(f: &File, owner: Owner) -> Result<Header, String> {
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len < page_size() as u64 {
        return Err(format!("{len} bytes: shorter than its header"));
    }
    let h = Region::<Header>::shared(f, 0, 1).map_err(|e| e.to_string())?[0];
    if h.magic != MAGIC {
        return Err("not a podpath connection table".into());
    }
    if h.layout != LAYOUT || h.entry_size != ENTRY_SIZE {
        return Err(format!(
            "layout {} with {}-byte entries; this build reads layout {LAYOUT} with {}-byte \
             entries",
            h.layout,
            h.entry_size,
            std::mem::size_of::<Entry>()
        ));
    }
    if h.boot_id != boot_id() {
        return Err("written before the machine restarted (its clock means nothing now)".into());
    }
    let theirs = (h.worker, h.workers, h.nat_lo, h.nat_hi);
    let ours = (
        u32::from(owner.worker),
        u32::from(owner.workers),
        u32::from(owner.nat.0),
        u32::from(owner.nat.1),
    );
    if theirs != ours {
        return Err(format!(
            "made for worker {} of {} with NAT ports {}-{}; this dataplane has worker {} of {} \
             with {}-{} (connections would reach the wrong worker)",
            theirs.0, theirs.1, theirs.2, theirs.3, ours.0, ours.1, ours.2, ours.3
        ));
    }
    if len < file_bytes(usize::try_from(h.reserved).unwrap_or(usize::MAX)) || h.used > h.reserved {
        return Err(format!(
            "{len} bytes, {} used of {} reserved: truncated or damaged",
            h.used, h.reserved
        ));
    }
    Ok(h)
}

/// Makes a new state file at `p`: allocated in full, locked, header written.
fn create(
    p: &Path,
    owner: Owner,
    reserved: usize,
) -> Result<(File, Region<Header>, Region<Entry>), String> {
    let tmp = p.with_extension("new");
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    if !region::lock_exclusive(&f).map_err(|e| e.to_string())? {
        return Err("in use by another process".into());
    }
    let bytes = file_bytes(reserved);
    if let Err(e) = region::allocate(&f, bytes) {
        let _ = std::fs::remove_file(&tmp);
        let free = p
            .parent()
            .and_then(|d| region::free_bytes(d).ok())
            .map(|b| format!(", {} MiB free there", b >> 20))
            .unwrap_or_default();
        return Err(format!(
            "cannot allocate {} MiB for {reserved} connections ({e}{free}); lower \
             conntrack.max_capacity or give state_dir more room",
            bytes.div_ceil(1 << 20)
        ));
    }
    let mut hdr = Region::<Header>::shared(&f, 0, 1).map_err(|e| e.to_string())?;
    let slab =
        Region::<Entry>::shared(&f, page_size() as u64, reserved).map_err(|e| e.to_string())?;
    hdr[0] = Header {
        magic: MAGIC,
        layout: LAYOUT,
        entry_size: ENTRY_SIZE,
        reserved: reserved as u64,
        used: 0,
        worker: u32::from(owner.worker),
        workers: u32::from(owner.workers),
        nat_lo: u32::from(owner.nat.0),
        nat_hi: u32::from(owner.nat.1),
        boot_id: boot_id(),
        clock_secs: 0,
        wall_ms: 0,
    };
    std::fs::rename(&tmp, p).map_err(|e| format!("cannot rename {}: {e}", tmp.display()))?;
    Ok((f, hdr, slab))
}
