//! Memory regions that tables keep their state in: anonymous (gone with the process)
//! or a shared mapping of a file (on tmpfs it outlives the process, so a restarted
//! dataplane finds the connection table as the dead one left it). This is the only
//! place outside DPDK's wrapper that maps memory; it does not need EAL.
//!
//! A region is a typed slice over the mapping. The types it holds are [`Plain`]:
//! every bit pattern is a value, so whatever the file holds (another build's bytes,
//! a torn write from a killed process) is memory-safe to read; the table validates
//! meaning on top.
use std::fs::File;
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

/// A type for which every bit pattern of its size is a valid value, with no
/// references or pointers inside.
///
/// # Safety
/// Implement only for `#[repr(C)]` types made of integers and arrays or `Plain`
/// structs of them (no `bool`, `char`, enums, references, or `NonNull`).
pub unsafe trait Plain: Copy + 'static {}

/// Defines a `#[repr(C)]` struct whose fields are all [`Plain`], and makes it
/// `Plain`: the one way outside this module to declare one, so the `unsafe impl`
/// stays here and the field check cannot be skipped.
#[macro_export]
macro_rules! plain_struct {
    (
        $(#[$m:meta])*
        $vis:vis struct $name:ident {
            $($(#[$fm:meta])* $fvis:vis $field:ident : $ty:ty),* $(,)?
        }
    ) => {
        $(#[$m])*
        #[repr(C)]
        $vis struct $name {
            $($(#[$fm])* $fvis $field: $ty),*
        }
        // SAFETY: repr(C) and every field's type is Plain (checked at compile time
        // just below), so every bit pattern of the fields is a value; padding is
        // never read as a value.
        #[allow(unsafe_code)]
        unsafe impl $crate::dpdk::region::Plain for $name {}
        const _: fn() = || {
            fn plain<T: $crate::dpdk::region::Plain>() {}
            $(plain::<$ty>();)*
        };
    };
}

// SAFETY: integers accept every bit pattern.
unsafe impl Plain for u8 {}
// SAFETY: as above.
unsafe impl Plain for u16 {}
// SAFETY: as above.
unsafe impl Plain for u32 {}
// SAFETY: as above.
unsafe impl Plain for u64 {}

// SAFETY: an array of values that accept every bit pattern accepts every bit pattern.
unsafe impl<T: Plain, const N: usize> Plain for [T; N] {}
/// `len` values of `T` in a mapping this region owns (unmapped on drop).
pub struct Region<T: Plain> {
    ptr: NonNull<T>,
    len: usize,
    /// Bytes mapped (the length `munmap` needs).
    bytes: usize,
}

// SAFETY: the region owns its mapping exclusively (nothing else holds its pointer),
// and `T: Plain` holds no thread-bound data, so moving it to a worker thread is
// moving plain memory.
unsafe impl<T: Plain> Send for Region<T> {}

impl<T: Plain> Region<T> {
    /// Anonymous, zeroed memory for `len` values: address space until touched, as
    /// `Vec::with_capacity` would reserve it.
    pub fn anonymous(len: usize) -> io::Result<Region<T>> {
        let bytes = Self::bytes_for(len)?;
        // SAFETY: a fresh private anonymous mapping with no address hint; mmap either
        // fails (checked below) or returns `bytes` of zeroed, page-aligned memory
        // nobody else refers to.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        Self::from_mmap(p, len, bytes)
    }

    /// `len` values of `T` at byte `offset` of `file`, shared with the file (writes
    /// go to the file's pages; on tmpfs they survive the process, even `kill -9`).
    /// The file must already be at least `offset + len * size_of::<T>()` long
    /// (allocated, so a write never faults on a full filesystem); `offset` must be a
    /// multiple of the page size.
    pub fn shared(file: &File, offset: u64, len: usize) -> io::Result<Region<T>> {
        let bytes = Self::bytes_for(len)?;
        let size = file.metadata()?.len();
        let end = offset
            .checked_add(bytes as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "region too large"))?;
        // The mapping covers whole pages; the file must cover the values themselves.
        let need = offset + (len * std::mem::size_of::<T>()) as u64;
        if size < need || !offset.is_multiple_of(page_size() as u64) || end < need {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("file of {size} bytes cannot hold {need} (offset {offset})"),
            ));
        }
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: maps an open file descriptor we were lent for the duration of the
        // call (the mapping keeps its own reference to the file); the range was
        // checked against the file's size above, and the caller holds an exclusive
        // lock on the file (`lock_exclusive`), so no other podpath process maps it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                off,
            )
        };
        Self::from_mmap(p, len, bytes)
    }

    fn bytes_for(len: usize) -> io::Result<usize> {
        let page = page_size();
        len.checked_mul(std::mem::size_of::<T>())
            .and_then(|b| b.max(1).checked_next_multiple_of(page))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "region too large"))
    }

    fn from_mmap(p: *mut libc::c_void, len: usize, bytes: usize) -> io::Result<Region<T>> {
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<T>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        // Page-aligned, so aligned for any T of ours; checked rather than assumed.
        if !(p as usize).is_multiple_of(std::mem::align_of::<T>()) {
            return Err(io::Error::other("mapping misaligned"));
        }
        Ok(Region { ptr, len, bytes })
    }
}

impl<T: Plain> Deref for Region<T> {
    type Target = [T];
    #[inline(always)]
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` points at `bytes >= len * size_of::<T>()` bytes mapped
        // readable and writable for as long as `self` lives (unmapped only in Drop),
        // aligned for T (checked in from_mmap), and every bit pattern is a T (Plain).
        // The mapping is ours alone, so `&self` gives shared access only.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Plain> DerefMut for Region<T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`; `&mut self` makes this the only access to the
        // mapping (no other process maps it while we hold the file's lock).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Plain> Drop for Region<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `anonymous`/`shared`, once; no
        // reference into it outlives `self` (they borrow it).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.bytes);
        }
    }
}

/// The page size (mapping offsets and lengths are multiples of it).
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// Takes an exclusive lock on `file` without waiting (false: another process holds
/// it). The lock lives as long as the file stays open in this process.
pub fn lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor we own for the call; no memory is passed.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Allocates `len` bytes of `file` for real (not a sparse hole), so writes through a
/// shared mapping cannot fault with SIGBUS on a full filesystem later.
pub fn allocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large"))?;
    // SAFETY: posix_fallocate on a descriptor we own for the call; no memory passed.
    let r = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// Whether `path` is on a filesystem in memory (tmpfs, ramfs, hugetlbfs): a shared
/// mapping there is memory, where on a disk filesystem every change is a write the
/// kernel must flush, and a worker can wait for writeback. None: unknown.
pub fn in_memory(path: &std::path::Path) -> Option<bool> {
    use std::os::unix::ffi::OsStrExt;
    const TMPFS: i64 = 0x0102_1994;
    const RAMFS: i64 = 0x8584_58f6;
    const HUGETLBFS: i64 = 0x9584_58f6;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut s = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `s` room for one statfs, read only
    // when the call returns 0.
    if unsafe { libc::statfs(c.as_ptr(), s.as_mut_ptr()) } != 0 {
        return None;
    }
    #[allow(clippy::useless_conversion)] // the field's type differs between targets
    // SAFETY: statfs returned 0, so it initialised `s`.
    let kind = i64::from(unsafe { s.assume_init() }.f_type);
    Some(matches!(kind, TMPFS | RAMFS | HUGETLBFS))
}

/// Bytes free to an unprivileged writer on the filesystem holding `path`.
pub fn free_bytes(path: &std::path::Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `s` is room for one statvfs, which the
    // call fills when it returns 0 (only then is it read).
    let r = unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `s`.
    let s = unsafe { s.assume_init() };
    #[allow(clippy::useless_conversion)] // u32 on some targets
    Ok(u64::from(s.f_bavail).saturating_mul(u64::from(s.f_frsize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_region_keeps_what_was_written_for_the_next_mapping() {
        let dir = std::env::temp_dir().join(format!("pp-region-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r");
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        allocate(&f, 8192).unwrap();
        assert!(lock_exclusive(&f).unwrap());
        {
            let mut r = Region::<u32>::shared(&f, 4096, 1024).unwrap();
            r[0] = 7;
            r[1023] = 9;
        }
        let r = Region::<u32>::shared(&f, 4096, 1024).unwrap();
        assert_eq!((r[0], r[1], r[1023]), (7, 0, 9));
        // Another open of the file cannot take the lock while this one holds it.
        let g = File::open(&path).unwrap();
        assert!(!lock_exclusive(&g).unwrap());
        // Beyond the file: refused, not mapped.
        assert!(Region::<u32>::shared(&f, 4096, 2048).is_err());
        assert!(Region::<u32>::shared(&f, 100, 4).is_err());
        let a = Region::<u64>::anonymous(10).unwrap();
        assert!(a.iter().all(|&x| x == 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
