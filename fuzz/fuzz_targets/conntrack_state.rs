//! A connection-state file of arbitrary bytes, opened and resumed as a restarted
//! dataplane would: refused, converted or resumed, never a crash, and whatever is
//! resumed is a consistent table (every entry found by both of its tuples).
//!
//! Input: byte 0 chooses what is made right (bit 0: the header's identity, so the
//! entries are reached; bit 1: the file's length), byte 1 the reservation written;
//! the rest is the header page's remainder and the entries.
#![no_main]
use libfuzzer_sys::fuzz_target;
use podpath_dataplane::nat::conntrack::{state, Conntrack, Timeouts};

const OWNER: state::Owner = state::Owner {
    worker: 0,
    workers: 1,
    nat: (30000, 60999),
};

fuzz_target!(|d: &[u8]| {
    if d.len() < 2 {
        return;
    }
    let (mode, reserved) = (d[0], u64::from(d[1] & 0x7f));
    let page = 4096;
    let mut file = vec![0u8; page];
    let body = &d[2..];
    let head = body.len().min(page);
    file[..head].copy_from_slice(&body[..head]);
    file.extend_from_slice(&body[head..]);
    if mode & 1 != 0 {
        let b = state::boot_id();
        file[0..8].copy_from_slice(&state::MAGIC.to_le_bytes());
        file[8..12].copy_from_slice(&state::LAYOUT.to_le_bytes());
        file[12..16].copy_from_slice(&52u32.to_le_bytes());
        file[16..24].copy_from_slice(&reserved.to_le_bytes());
        file[32..36].copy_from_slice(&0u32.to_le_bytes());
        file[36..40].copy_from_slice(&1u32.to_le_bytes());
        file[40..44].copy_from_slice(&30000u32.to_le_bytes());
        file[44..48].copy_from_slice(&60999u32.to_le_bytes());
        file[48..56].copy_from_slice(&b[0].to_le_bytes());
        file[56..64].copy_from_slice(&b[1].to_le_bytes());
    }
    if mode & 2 != 0 {
        file.resize(state::file_bytes(reserved as usize) as usize, 0);
    }
    let dir = std::path::PathBuf::from(format!("/dev/shm/podpath-fuzz-ct-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(state::path(&dir, 0), &file).unwrap();
    let want = if mode & 4 != 0 {
        64
    } else {
        reserved.max(1) as usize
    };
    let Ok(st) = state::open(&dir, OWNER, want) else {
        return;
    };
    let now = 1000;
    let (ct, r) = Conntrack::resume(want, Timeouts::default(), now, st);
    assert_eq!(ct.len(), r.restored);
    let mut n = 0;
    for e in ct.entries(now) {
        assert!(ct.lookup(&e.orig, now).is_some() && ct.lookup(&e.reply, now).is_some());
        n += 1;
    }
    assert_eq!(n, r.restored);
});
