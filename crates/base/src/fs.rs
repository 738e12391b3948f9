//! Files that a crash cannot leave half written, and files only their owner can read.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use crate::id::random_hex;

/// Writes `bytes` to `path` so that a reader (or a crash) sees either the old file or the whole
/// new one: a temporary file in the same directory, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_through_temp(path, bytes, |p| fs::File::create(p))
}

/// The temporary file beside `path`, made by `create`, written, fsynced, renamed over `path`.
fn write_through_temp(path: &Path, bytes: &[u8], create: fn(&Path) -> io::Result<fs::File>) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", random_hex(4)));
    let result = (|| {
        let mut f = create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes a rename in `dir` durable: fsync of the directory on Unix; NTFS journals renames in
/// order and has no directory fsync.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    return fs::File::open(dir)?.sync_all();
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Creates a new file for a secret that only its owner can read: 0600 on Unix; on Windows it
/// inherits its directory's access list, which in a profile is already limited to the user and
/// administrators. Refuses to replace an existing one.
pub fn create_private(path: &Path) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Writes a secret to `path` as [`write_atomic`] does, in a file only its owner can read (see
/// [`create_private`]): an existing file at `path` is replaced whole, and its mode with it.
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_through_temp(path, bytes, create_private)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left behind");
    }

    #[test]
    fn a_private_file_is_new_and_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        create_private(&p).unwrap().write_all(b"s").unwrap();
        assert!(create_private(&p).is_err(), "an existing file is not replaced");
        fs::write(dir.path().join("open"), b"old").unwrap();
        write_private_atomic(&dir.path().join("open"), b"new").unwrap();
        assert_eq!(fs::read(dir.path().join("open")).unwrap(), b"new");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
            let replaced = fs::metadata(dir.path().join("open")).unwrap().permissions().mode();
            assert_eq!(replaced & 0o777, 0o600, "a replaced file is owner-only too");
        }
    }
}
