//! The one place where core errors become Python exceptions. The exception
//! classes are defined in Python (`dicomrelay.errors`) and imported here.

use dicomrelay_core::channel::ChannelError;
use dicomrelay_core::pdu::PduError as CorePduError;
use dicomrelay_core::rewrite::RewriteError as CoreRewriteError;
use dicomrelay_core::segment::SegmentError;
use dicomrelay_core::ScanError;
use std::path::PathBuf;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::PyErr;

pyo3::import_exception!(dicomrelay.errors, DicomParseError);
pyo3::import_exception!(dicomrelay.errors, ProtocolError);
pyo3::import_exception!(dicomrelay.errors, TlsError);
pyo3::import_exception!(dicomrelay.errors, ConfigurationError);
pyo3::import_exception!(dicomrelay.errors, PduError);
pyo3::import_exception!(dicomrelay.errors, StorageError);
pyo3::import_exception!(dicomrelay.errors, CorruptRecord);
pyo3::import_exception!(dicomrelay.errors, RewriteError);

#[cold]
pub fn channel_error(e: ChannelError) -> PyErr {
    match e {
        ChannelError::Tls(_) => TlsError::new_err(e.to_string()),
        ChannelError::Wire(_) => ProtocolError::new_err(e.to_string()),
        ChannelError::Config(_) => ConfigurationError::new_err(e.to_string()),
        // OSError(errno, strerror) becomes the matching subclass
        // (ConnectionResetError, BrokenPipeError, ...).
        ChannelError::Socket(errno) => {
            PyOSError::new_err((errno, std::io::Error::from_raw_os_error(errno).to_string()))
        }
    }
}

/// Bytes from a DICOM peer that are not PDUs: PduError(message, offset,
/// abort_reason), the reason being what the A-ABORT answering them carries.
#[cold]
pub fn pdu_error(e: CorePduError) -> PyErr {
    PduError::new_err((e.to_string(), e.offset, e.kind.abort_reason()))
}

#[cold]
pub fn parse_error(e: ScanError) -> PyErr {
    DicomParseError::new_err((e.to_string(), e.offset, e.tag))
}

/// Input the scanner refuses is a DicomParseError; an edit that cannot be
/// applied, RewriteError(message, tag).
#[cold]
pub fn rewrite_error(e: CoreRewriteError) -> PyErr {
    match e {
        CoreRewriteError::Parse(e) => parse_error(e),
        CoreRewriteError::Edit { tag, .. } => RewriteError::new_err((e.to_string(), tag)),
    }
}

/// A segment store failure: CorruptRecord for bytes that are not the record
/// asked for, ValueError for a request that cannot be (a location past the
/// durable end, compacting the active segment), StorageError for the rest,
/// each with its errno and file where it has them.
#[cold]
pub fn segment_error(e: SegmentError) -> PyErr {
    let message = e.to_string();
    let corrupt = matches!(
        e,
        SegmentError::Corrupt { .. }
            | SegmentError::CorruptData { .. }
            | SegmentError::WrongRecord { .. }
    );
    if matches!(
        e,
        SegmentError::BadLocation { .. } | SegmentError::Invalid(_)
    ) {
        return PyValueError::new_err(message);
    }
    // OSError(errno, strerror, filename): errno and filename as attributes.
    let path = e.path().map(std::path::Path::to_path_buf);
    match (corrupt, e.errno(), path) {
        (true, Some(errno), Some(path)) => CorruptRecord::new_err((errno, message, path)),
        (true, _, _) => CorruptRecord::new_err(message),
        (false, Some(errno), Some(path)) => StorageError::new_err((errno, message, path)),
        (false, Some(errno), None) => StorageError::new_err((errno, message)),
        (false, None, _) => StorageError::new_err(message),
    }
}

/// Why one input of a batch failed.
pub enum Failure {
    Parse(ScanError),
    Rewrite(CoreRewriteError),
    Io(std::io::Error, PathBuf),
}

impl From<Failure> for PyErr {
    #[cold]
    fn from(f: Failure) -> PyErr {
        match f {
            Failure::Parse(e) => parse_error(e),
            Failure::Rewrite(e) => rewrite_error(e),
            // OSError(errno, strerror, filename) becomes the matching subclass
            // (FileNotFoundError, PermissionError, ...) and names the file.
            Failure::Io(e, path) => match e.raw_os_error() {
                Some(errno) => PyOSError::new_err((errno, e.to_string(), path)),
                None => PyErr::from(e),
            },
        }
    }
}

impl From<ScanError> for Failure {
    fn from(e: ScanError) -> Self {
        Failure::Parse(e)
    }
}
