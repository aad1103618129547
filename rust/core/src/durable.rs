//! Durable writes of whole files: bytes on stable storage before the call returns.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::aligned::AlignedBytes;

/// Create `path` (it must not exist) and write `data`; with `sync`, fdatasync it.
///
/// Page-aligned data is written with `O_DIRECT`: no copy into the page cache and
/// no writeback later, which on small virtual machines costs several times the
/// CPU of the copy itself. Filesystems without direct I/O (tmpfs) get an ordinary
/// write. Without `sync` the caller makes the file durable, typically for many
/// files at once with [`sync_filesystem`].
pub fn write_new_file(path: &Path, data: &AlignedBytes, sync: bool) -> io::Result<()> {
    if let Some(padded) = data.padded() {
        match write_direct(path, padded, data.len(), sync) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let _ = std::fs::remove_file(path);
            }
            other => return other,
        }
    }
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(data)?;
    if sync {
        file.sync_data()?;
    }
    Ok(())
}

fn write_direct(path: &Path, padded: &[u8], len: usize, sync: bool) -> io::Result<()> {
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    file.write_all(padded)?;
    file.set_len(len as u64)?;
    if sync {
        file.sync_data()?;
    }
    Ok(())
}

/// Commit everything written to the filesystem holding `path` (syncfs(2)): one
/// journal commit and cache flush for a whole batch of files. Linux reports
/// writeback errors of the filesystem here, so an error means data may be lost.
pub fn sync_filesystem(path: &Path) -> io::Result<()> {
    let dir = File::open(path)?;
    // SAFETY: syncfs takes a valid open descriptor, which `dir` holds for the call.
    let rc = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_hold_exactly_the_data() {
        let dir = std::env::temp_dir().join(format!("dicomrelay-durable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for len in [0usize, 1, 4096, 5000, 600_000] {
            let mut data = AlignedBytes::zeroed(len);
            for (i, b) in data.as_mut_slice().iter_mut().enumerate() {
                *b = (i % 251) as u8;
            }
            let path = dir.join(format!("f{len}"));
            write_new_file(&path, &data, len % 2 == 0).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), data.as_slice());
            assert!(
                write_new_file(&path, &data, true).is_err(),
                "must not overwrite"
            );
        }
        sync_filesystem(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
