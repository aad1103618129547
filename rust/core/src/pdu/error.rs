//! The one error type of the PDU codec: what went wrong and at which byte.

use std::borrow::Cow;
use std::fmt;

/// Why bytes are not a PDU this codec will read, or a PDU cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PduErrorKind {
    /// The input ends inside a PDU (only where the input is known to be whole).
    Truncated,
    /// A PDU declares more bytes than this side accepts.
    TooLong,
    /// An item's declared length runs past its parent or does not fill it exactly.
    LengthMismatch,
    /// The first byte of a PDU is not a PDU type of PS3.8 table 9-1.
    UnknownPduType,
    /// An item that is not allowed where it stands, or repeats a unique one.
    UnexpectedItem,
    /// A mandatory item is absent.
    MissingItem,
    /// A field holds a value PS3.8 forbids (an empty AE title, a non-ASCII UID).
    BadValue,
    /// A value does not fit the field it is encoded into.
    Unencodable,
}

impl PduErrorKind {
    pub fn describe(self) -> &'static str {
        match self {
            PduErrorKind::Truncated => "truncated PDU",
            PduErrorKind::TooLong => "PDU longer than the maximum accepted",
            PduErrorKind::LengthMismatch => "item length does not fit its parent",
            PduErrorKind::UnknownPduType => "unrecognised PDU type",
            PduErrorKind::UnexpectedItem => "unexpected item",
            PduErrorKind::MissingItem => "missing item",
            PduErrorKind::BadValue => "invalid field value",
            PduErrorKind::Unencodable => "value cannot be encoded",
        }
    }

    /// The A-ABORT reason (PS3.8 table 9-26, source 2 "service provider") an
    /// Upper Layer sends when it receives bytes that fail this way.
    pub fn abort_reason(self) -> u8 {
        match self {
            PduErrorKind::UnknownPduType => 1, // unrecognized-PDU
            PduErrorKind::UnexpectedItem => 5, // unexpected-PDU-parameter
            PduErrorKind::Truncated | PduErrorKind::Unencodable => 0, // reason-not-specified
            _ => 6,                            // invalid-PDU-parameter-value
        }
    }
}

/// A codec failure: the kind, the byte offset where it was detected (in the
/// decoder's stream, or in the output being encoded) and a short detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PduError {
    pub kind: PduErrorKind,
    pub offset: u64,
    pub detail: Cow<'static, str>,
}

impl PduError {
    #[cold]
    #[inline(never)]
    pub fn new(kind: PduErrorKind, offset: u64, detail: impl Into<Cow<'static, str>>) -> Self {
        PduError {
            kind,
            offset,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for PduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.kind.describe(), self.offset)?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for PduError {}

pub type Result<T> = std::result::Result<T, PduError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_kind_offset_and_detail() {
        let e = PduError::new(PduErrorKind::TooLong, 2, "P-DATA-TF of 9 bytes");
        assert_eq!(
            e.to_string(),
            "PDU longer than the maximum accepted at byte 2: P-DATA-TF of 9 bytes"
        );
        let e = PduError::new(PduErrorKind::Truncated, 7, "");
        assert_eq!(e.to_string(), "truncated PDU at byte 7");
    }

    #[test]
    fn abort_reasons_follow_ps3_8() {
        assert_eq!(PduErrorKind::UnknownPduType.abort_reason(), 1);
        assert_eq!(PduErrorKind::UnexpectedItem.abort_reason(), 5);
        assert_eq!(PduErrorKind::LengthMismatch.abort_reason(), 6);
        assert_eq!(PduErrorKind::BadValue.abort_reason(), 6);
        assert_eq!(PduErrorKind::TooLong.abort_reason(), 6);
    }
}
