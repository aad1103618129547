//! The one place where core errors become Python exceptions. The exception
//! classes are defined in Python (`dicomrelay.errors`) and imported here.

use dicomrelay_core::channel::ChannelError;
use dicomrelay_core::pdu::PduError as CorePduError;
use dicomrelay_core::ScanError;
use std::path::PathBuf;

use pyo3::exceptions::PyOSError;
use pyo3::PyErr;

pyo3::import_exception!(dicomrelay.errors, DicomParseError);
pyo3::import_exception!(dicomrelay.errors, ProtocolError);
pyo3::import_exception!(dicomrelay.errors, TlsError);
pyo3::import_exception!(dicomrelay.errors, ConfigurationError);
pyo3::import_exception!(dicomrelay.errors, PduError);

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

/// Why one input of a batch failed.
pub enum Failure {
    Parse(ScanError),
    Io(std::io::Error, PathBuf),
}

impl From<Failure> for PyErr {
    #[cold]
    fn from(f: Failure) -> PyErr {
        match f {
            Failure::Parse(e) => parse_error(e),
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
