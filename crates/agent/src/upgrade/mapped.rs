//! Memory maps for decoding a release, the crate's one module with `unsafe`: the running binary,
//! read-only, as a patch's reference; and the file being rebuilt, read-write, as zstd's stable
//! output buffer, so that neither is ever held in memory, however large the binary.
//!
//! Mapping a file is `unsafe` in Rust because another process could change or truncate the
//! file while it is mapped: a slice would then change under safe code, or a read past the new
//! end would raise SIGBUS. What makes each map here sound:
//! - the reference is the installed binary, which the agent only ever replaces by a rename (a
//!   new file), never rewrites in place; while it runs, Linux refuses to open it for writing
//!   (ETXTBSY); and whatever it holds, the rebuilt file is checked against the published sha256;
//! - the output is this upgrade's own staging file, opened by this process, with its whole
//!   length allocated on disk first ([`allocate`]), so that a write through the map cannot meet a
//!   full disk (which would be a SIGBUS, not an error). One upgrade runs at a time (the journal).
//!
//! Resident memory stays flat because [`release`] hands the pages already used back to the page
//! cache: a later read faults them in again from the file.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;

pub use memmap2::{Mmap, MmapMut};

/// Maps `file` read-only, whole.
pub fn reference(file: &File) -> io::Result<Mmap> {
    // SAFETY: see the module documentation: the installed binary is never written in place.
    unsafe { Mmap::map(file) }
}

/// Sets `file` to `len` bytes, allocated on disk (not sparse), and maps it read-write.
pub fn output(file: &File, len: u64) -> io::Result<MmapMut> {
    allocate(file, len)?;
    // SAFETY: see the module documentation: our own staging file, allocated to its full length.
    unsafe { MmapMut::map_mut(file) }
}

/// Allocates `len` bytes for `file` on disk: a write through a map of a sparse file on a full
/// disk would kill the process instead of failing.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
fn allocate(file: &File, len: u64) -> io::Result<()> {
    file.set_len(0)?;
    rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len).map_err(io::Error::from)
}

/// Elsewhere the length is set (Windows allocates the clusters then); the free-space check
/// before the download is what guards against a full disk.
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
fn allocate(file: &File, len: u64) -> io::Result<()> {
    file.set_len(0)?;
    file.set_len(len)
}

/// Drops the resident pages of a file map (Unix): they stay in the page cache, and a later
/// access faults them in again from the file. Elsewhere a no-op.
pub fn release(map: &Mmap) {
    #[cfg(unix)]
    // SAFETY: a shared or read-only file map: the data is kept in the file and page cache, and
    // no slice's contents change (MADV_DONTNEED only drops this process's page tables).
    let _ = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
    #[cfg(not(unix))]
    let _ = map;
}

/// [`release`] for the first `len` bytes of a read-write map (the part already written).
pub fn release_written(map: &MmapMut, len: usize) {
    #[cfg(unix)]
    if len > 0 {
        // SAFETY: a shared file map: written pages are dirty in the page cache and reach the
        // file; dropping them from this process's page tables loses nothing (the kernel rounds
        // `len` up to a page: the partly written last page is kept in the page cache too).
        let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, 0, len) };
    }
    #[cfg(not(unix))]
    let _ = (map, len);
}
