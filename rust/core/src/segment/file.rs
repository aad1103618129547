//! Segment files at the system-call level: creating and preallocating them,
//! writing whole blocks with direct I/O (or through the page cache where the
//! filesystem refuses it), reading, and the seam through which writes and
//! syncs go, so that tests can make them fail.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{Result, SegmentError};
use super::format::{SegmentHeader, BLOCK};

/// The writes and syncs of segment data. The store calls only these for
/// them, so a test can fail any one (a full disk, a lost write-back).
pub trait SegmentIo: Send + Sync {
    /// Write all of `buf` at `offset`.
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(buf, offset)
    }
    /// fdatasync(2).
    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }
}

/// The system's own calls.
pub struct SystemIo;
impl SegmentIo for SystemIo {}

/// The file name of segment `id`: its number in 16 hex digits.
pub fn segment_name(id: u64) -> String {
    format!("{id:016x}.seg")
}

/// The segment number a file name stands for, if it names a segment.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// A segment open for appending: with `O_DIRECT` when the filesystem allows.
pub struct WriteFile {
    pub file: Arc<File>,
    pub path: PathBuf,
    direct: bool,
}

fn open_options(direct: bool) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o
}

impl WriteFile {
    pub fn open(path: &Path) -> Result<WriteFile> {
        let (file, direct) = match open_options(true).open(path) {
            Ok(f) => (f, true),
            // The filesystem refuses direct I/O (tmpfs): go through the cache.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (
                open_options(false)
                    .open(path)
                    .map_err(|e| SegmentError::io("open", path, e))?,
                false,
            ),
            Err(e) => return Err(SegmentError::io("open", path, e)),
        };
        Ok(WriteFile {
            file: Arc::new(file),
            path: path.to_owned(),
            direct,
        })
    }

    /// Write whole blocks from a page-aligned buffer at a block offset. A
    /// filesystem that refuses the direct write gets it through the cache.
    pub fn write_blocks(&mut self, io: &dyn SegmentIo, buf: &[u8], offset: u64) -> Result<()> {
        match io.write_at(&self.file, buf, offset) {
            Ok(()) => Ok(()),
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                self.file = Arc::new(
                    open_options(false)
                        .open(&self.path)
                        .map_err(|e| SegmentError::io("open", &self.path, e))?,
                );
                self.direct = false;
                io.write_at(&self.file, buf, offset)
                    .map_err(|e| SegmentError::io("write", &self.path, e))
            }
            Err(e) => Err(SegmentError::io("write", &self.path, e)),
        }
    }
}

/// Give `file` `len` bytes of allocated, zeroed blocks. Filesystems without
/// fallocate get a sparse file of that length.
pub fn preallocate(file: &File, path: &Path, len: u64) -> Result<()> {
    let Ok(len_off) = libc::off_t::try_from(len) else {
        return Err(SegmentError::Invalid(format!(
            "segment size {len} too large"
        )));
    };
    // SAFETY: fallocate takes a descriptor, which `file` keeps open for the call.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len_off) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        return file
            .set_len(len)
            .map_err(|e| SegmentError::io("extend", path, e));
    }
    Err(SegmentError::io("preallocate", path, e))
}

/// fsync a directory: what was created, renamed or removed in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SegmentError::io("sync directory", dir, e))
}

/// Create segment `id` in `dir`: its header block, `capacity` bytes
/// preallocated, the directory entry durable. Its data is made durable by the
/// first round that writes to it.
pub fn create_segment(dir: &Path, id: u64, capacity: u64, io: &dyn SegmentIo) -> Result<WriteFile> {
    let path = dir.join(segment_name(id));
    File::options()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| SegmentError::io("create", &path, e))?;
    let mut file = WriteFile::open(&path)?;
    preallocate(&file.file, &path, capacity)?;
    let mut block = crate::aligned::AlignedBytes::zeroed(BLOCK as usize);
    block.as_mut_slice().copy_from_slice(
        &SegmentHeader {
            segment: id,
            capacity,
        }
        .encode(),
    );
    let padded = block.padded().unwrap_or(block.as_slice());
    file.write_blocks(io, padded, 0)?;
    sync_dir(dir)?;
    Ok(file)
}

/// Read exactly `buf.len()` bytes at `offset`; a short file is `UnexpectedEof`.
pub fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    file.read_exact_at(buf, offset)
}

/// Hold an exclusive advisory lock on `path` for as long as the file is open.
pub fn lock_file(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| SegmentError::io("open", path, e))?;
    // SAFETY: flock takes a descriptor, which `file` keeps open for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(SegmentError::Locked {
                path: path.to_owned(),
            });
        }
        return Err(SegmentError::io("lock", path, e));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_name(26), "000000000000001a.seg");
        assert_eq!(parse_segment_name("000000000000001a.seg"), Some(26));
        assert_eq!(parse_segment_name("1a.seg"), None);
        assert_eq!(parse_segment_name("000000000000001a.tmp"), None);
        assert_eq!(parse_segment_name("00000000000000zz.seg"), None);
    }
}
