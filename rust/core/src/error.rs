//! The one error type of the scanner: what went wrong, at which byte, in which element.

use std::fmt;

/// Why a byte stream is not a DICOM dataset this crate will read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input ends inside an element header or value.
    Truncated,
    /// A declared length does not fit in the bytes that are left.
    LengthOverflow,
    /// Sequences or items nested deeper than the scanner allows.
    TooDeep,
    /// An item, delimiter or fragment is not where the encoding requires it.
    BadItem,
    /// The file meta group is malformed.
    BadMeta,
    /// The deflated dataset cannot be inflated, or inflates past the cap.
    BadDeflate,
    /// An undefined length where the encoding forbids it.
    UndefinedLength,
    /// The input is empty or holds no dataset at all.
    Empty,
    /// A value or item of odd length (PS3.5 7.1.1: every length is even).
    OddLength,
    /// The dataset is not encoded as its transfer syntax says (implicit VR
    /// data under an explicit VR syntax, or the reverse).
    EncodingMismatch,
}

impl ErrorKind {
    pub fn describe(self) -> &'static str {
        match self {
            ErrorKind::Truncated => "truncated",
            ErrorKind::LengthOverflow => "declared length runs past the end of its parent",
            ErrorKind::TooDeep => "sequences nested too deeply",
            ErrorKind::BadItem => "malformed item",
            ErrorKind::BadMeta => "malformed file meta information",
            ErrorKind::BadDeflate => "cannot inflate deflated dataset",
            ErrorKind::UndefinedLength => "undefined length not allowed here",
            ErrorKind::Empty => "no dataset",
            ErrorKind::OddLength => "odd value length",
            ErrorKind::EncodingMismatch => "dataset encoding does not match its transfer syntax",
        }
    }
}

/// A scan failure: the kind, the byte offset where it was detected, the element
/// being read (if any) and a short detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError {
    pub kind: ErrorKind,
    pub offset: u64,
    pub tag: Option<u32>,
    pub detail: String,
}

impl ScanError {
    #[cold]
    #[inline(never)]
    pub fn new(
        kind: ErrorKind,
        offset: usize,
        tag: Option<u32>,
        detail: impl Into<String>,
    ) -> Self {
        ScanError {
            kind,
            offset: offset as u64,
            tag,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.describe())?;
        if let Some(tag) = self.tag {
            write!(f, " in element ({:04X},{:04X})", tag >> 16, tag & 0xFFFF)?;
        }
        write!(f, " at byte {}", self.offset)?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for ScanError {}

pub type Result<T> = std::result::Result<T, ScanError>;
