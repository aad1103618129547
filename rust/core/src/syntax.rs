//! Transfer syntaxes: which encoding a dataset uses, and how it is found when
//! the file meta group does not say.

use crate::element::{is_known_vr, Encoding};
use crate::error::{ErrorKind, Result, ScanError};

pub const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";
pub const DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1.99";
pub const EXPLICIT_VR_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";

/// How the dataset after the meta group is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetSyntax {
    pub encoding: Encoding,
    pub deflated: bool,
}

impl DatasetSyntax {
    /// The syntax a transfer syntax UID names. Every syntax other than the three
    /// uncompressed ones and deflate is explicit VR little endian (PS3.5 A.4).
    pub fn from_uid(uid: &str) -> DatasetSyntax {
        let encoding = match uid {
            IMPLICIT_VR_LITTLE_ENDIAN => Encoding::IMPLICIT_LE,
            EXPLICIT_VR_BIG_ENDIAN => Encoding::EXPLICIT_BE,
            _ => Encoding::EXPLICIT_LE,
        };
        DatasetSyntax {
            encoding,
            deflated: uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        }
    }

    /// Guess from the first element when no transfer syntax is given: a known VR
    /// after the tag means explicit VR; a little-endian group of 1024 or more
    /// means the groups are big endian.
    pub fn guess(buf: &[u8], pos: usize) -> DatasetSyntax {
        let mut encoding = Encoding::IMPLICIT_LE;
        if let Some(head) = buf.get(pos..pos.saturating_add(6)) {
            if head.len() == 6 && is_known_vr([head[4], head[5]]) {
                encoding = Encoding::EXPLICIT_LE;
                if u16::from_le_bytes([head[0], head[1]]) >= 1024 {
                    encoding = Encoding::EXPLICIT_BE;
                }
            }
        }
        DatasetSyntax {
            encoding,
            deflated: false,
        }
    }

    /// The UID of this syntax when it had to be guessed.
    pub fn uid(&self) -> &'static str {
        match (self.encoding.explicit_vr, self.encoding.little_endian) {
            (false, _) => IMPLICIT_VR_LITTLE_ENDIAN,
            (true, true) => EXPLICIT_VR_LITTLE_ENDIAN,
            (true, false) => EXPLICIT_VR_BIG_ENDIAN,
        }
    }
}

/// Refuse explicit VR data under an implicit VR syntax: a known VR after the
/// first tag. (Its reverse, no VR where one belongs, the walk refuses element
/// by element.) An implicit first value of 16 KB or more could look like this;
/// such a first element does not occur.
pub fn check_vr_axis(buf: &[u8], pos: usize, enc: Encoding) -> Result<()> {
    match buf.get(pos..pos.saturating_add(6)) {
        Some(&[_, _, _, _, a, b]) if !enc.explicit_vr && is_known_vr([a, b]) => {
            Err(ScanError::new(
                ErrorKind::EncodingMismatch,
                pos,
                Some(enc.tag_at(buf, pos)),
                format!(
                    "VR {} after the tag: explicit VR data under an implicit VR transfer syntax",
                    String::from_utf8_lossy(&[a, b])
                ),
            ))
        }
        _ => Ok(()),
    }
}
