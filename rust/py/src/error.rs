//! The one place where core errors become Python exceptions. The exception
//! classes are defined in Python (`dicomrelay.errors`) and imported here.

use dicomrelay_core::ScanError;
use pyo3::PyErr;

pyo3::import_exception!(dicomrelay.errors, DicomParseError);

#[cold]
pub fn parse_error(e: ScanError) -> PyErr {
    DicomParseError::new_err((e.to_string(), e.offset, e.tag))
}

/// Why one input of a batch failed.
pub enum Failure {
    Parse(ScanError),
    Io(std::io::Error),
}

impl From<Failure> for PyErr {
    #[cold]
    fn from(f: Failure) -> PyErr {
        match f {
            Failure::Parse(e) => parse_error(e),
            Failure::Io(e) => e.into(),
        }
    }
}

impl From<ScanError> for Failure {
    fn from(e: ScanError) -> Self {
        Failure::Parse(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Io(e)
    }
}
