//! Why a segment store operation failed.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::format::HeaderFault;
use super::Location;

#[derive(Debug)]
pub enum SegmentError {
    /// A read, write, allocation or directory operation failed.
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// fdatasync failed: what the round wrote may be lost. The round failed,
    /// and the store takes no more records until it is opened again.
    SyncFailed { path: PathBuf, source: io::Error },
    /// An earlier write or sync failed; open the store again (at the
    /// ledger's durable end) before appending.
    Failed { path: PathBuf, errno: Option<i32> },
    /// Bytes that are not the record (or segment header) they should be.
    Corrupt {
        path: PathBuf,
        offset: u64,
        fault: HeaderFault,
    },
    /// A record's data does not hash to the digest in its header.
    CorruptData { path: PathBuf, offset: u64 },
    /// The record at a location holds other data than the one asked for.
    WrongRecord { path: PathBuf, location: Location },
    /// A location past what has been made durable, or not on a record boundary.
    BadLocation {
        location: Location,
        why: &'static str,
    },
    /// No such segment file.
    NoSegment { path: PathBuf },
    /// The segment files and the durable end given at open disagree.
    Inconsistent(String),
    /// The store is open in another process (or by another open in this one).
    Locked { path: PathBuf },
    /// A request that cannot be done (compacting the active segment, a record
    /// longer than a record may be).
    Invalid(String),
}

impl SegmentError {
    /// The operating system's error number, if the error has one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            SegmentError::Io { source, .. } | SegmentError::SyncFailed { source, .. } => {
                source.raw_os_error()
            }
            SegmentError::Failed { errno, .. } => *errno,
            SegmentError::Corrupt { .. }
            | SegmentError::CorruptData { .. }
            | SegmentError::WrongRecord { .. } => Some(libc::EBADMSG),
            SegmentError::NoSegment { .. } => Some(libc::ENOENT),
            SegmentError::Locked { .. } => Some(libc::EWOULDBLOCK),
            _ => None,
        }
    }

    /// The file the error is about, if there is one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            SegmentError::Io { path, .. }
            | SegmentError::SyncFailed { path, .. }
            | SegmentError::Failed { path, .. }
            | SegmentError::Corrupt { path, .. }
            | SegmentError::CorruptData { path, .. }
            | SegmentError::WrongRecord { path, .. }
            | SegmentError::NoSegment { path }
            | SegmentError::Locked { path } => Some(path),
            _ => None,
        }
    }

    #[cold]
    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: io::Error) -> Self {
        SegmentError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

impl fmt::Display for SegmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SegmentError::Io { op, path, source } => {
                write!(f, "cannot {op} {}: {source}", path.display())
            }
            SegmentError::SyncFailed { path, source } => write!(
                f,
                "fdatasync of {} failed, the round's records may be lost: {source}",
                path.display()
            ),
            SegmentError::Failed { path, .. } => write!(
                f,
                "an earlier write or sync of {} failed: open the store again at its durable end",
                path.display()
            ),
            SegmentError::Corrupt {
                path,
                offset,
                fault,
            } => write!(
                f,
                "{} at byte {offset} of {}",
                fault.describe(),
                path.display()
            ),
            SegmentError::CorruptData { path, offset } => write!(
                f,
                "the data of the record at byte {offset} of {} does not match its digest",
                path.display()
            ),
            SegmentError::WrongRecord { path, location } => write!(
                f,
                "the record at byte {} of {} holds other data than the digest asked for",
                location.offset,
                path.display()
            ),
            SegmentError::BadLocation { location, why } => write!(
                f,
                "location (segment {}, offset {}, length {}) {why}",
                location.segment, location.offset, location.length
            ),
            SegmentError::NoSegment { path } => write!(f, "no segment {}", path.display()),
            SegmentError::Inconsistent(why) => f.write_str(why),
            SegmentError::Locked { path } => {
                write!(
                    f,
                    "the store is in use by another process ({})",
                    path.display()
                )
            }
            SegmentError::Invalid(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for SegmentError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SegmentError::Io { source, .. } | SegmentError::SyncFailed { source, .. } => {
                Some(source)
            }
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, SegmentError>;
