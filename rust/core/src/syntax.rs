//! Transfer syntaxes: which encoding a dataset uses, and how it is found when
//! the file meta group does not say.

use crate::element::{is_known_vr, Encoding};

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

/// Correct the VR axis from the first element, as readers must for files whose
/// meta group names the wrong syntax: a pair of upper-case letters after the tag
/// means explicit VR. (A first implicit value of 16 KB or more could fool this;
/// such a first element does not occur.)
pub fn correct_vr_axis(buf: &[u8], pos: usize, enc: Encoding) -> Encoding {
    match buf.get(pos + 4..pos + 6) {
        Some(&[a, b]) => Encoding {
            explicit_vr: a.is_ascii_uppercase() && b.is_ascii_uppercase(),
            ..enc
        },
        _ => enc,
    }
}
