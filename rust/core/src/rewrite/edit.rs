//! The edits a rewrite applies, and how their values become the bytes of an
//! element in a given dataset (its character set, its byte order, its VR).

use crate::charset::Charset;
use crate::element::{has_long_length, is_known_vr, Encoding};
use crate::rewrite::error::{Result, RewriteError};

pub type Vr = [u8; 2];

/// A value as the caller gives it: bytes as they are to be stored (binary
/// VRs in little endian, swapped for a big endian dataset), or text to encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Bytes(Vec<u8>),
    Text(String),
}

/// An element of an item that `AddItem` appends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewElement {
    pub tag: u32,
    pub vr: Vr,
    pub value: NewValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewValue {
    Value(Value),
    /// A sequence (VR SQ): its items, each a list of elements.
    Items(Vec<Vec<NewElement>>),
}

/// One edit; see `dicomrelay.rewrite` for what each does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    Set {
        tag: u32,
        value: Value,
        vr: Vr,
    },
    Replace {
        tag: u32,
        value: Value,
        vr: Vr,
        everywhere: bool,
    },
    Empty {
        tag: u32,
        everywhere: bool,
    },
    Remove {
        tag: u32,
        mask: u32,
        everywhere: bool,
    },
    RemovePrivate {
        /// Sorted, for binary search.
        keep: Vec<u32>,
        everywhere: bool,
    },
    RemapUids {
        /// Sorted; `None`: every UI element but those naming a class or scheme.
        tags: Option<Vec<u32>>,
        key: Vec<u8>,
        everywhere: bool,
    },
    AddItem {
        sequence: u32,
        elements: Vec<NewElement>,
    },
}

/// What encoding a value needs to know about the dataset it goes into.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub encoding: Encoding,
    pub charset: Charset,
}

/// VRs whose text is in the dataset's character set; the other text VRs are ASCII.
fn is_localised_text(vr: Vr) -> bool {
    matches!(&vr, b"SH" | b"LO" | b"ST" | b"LT" | b"PN" | b"UC" | b"UT")
}

fn is_ascii_text(vr: Vr) -> bool {
    matches!(
        &vr,
        b"AE" | b"AS" | b"CS" | b"DA" | b"DS" | b"DT" | b"IS" | b"TM" | b"UI" | b"UR"
    )
}

/// Bytes of one number of a binary VR, or `None` for a VR that is not one.
fn binary_width(vr: Vr) -> Option<usize> {
    Some(match &vr {
        b"OB" | b"UN" => 1,
        b"US" | b"SS" | b"OW" | b"AT" => 2,
        b"UL" | b"SL" | b"FL" | b"OF" | b"OL" => 4,
        b"FD" | b"OD" | b"UV" | b"SV" | b"OV" => 8,
        _ => return None,
    })
}

/// Check that `vr` is a VR of PS3.5 that a value may be given for.
pub fn check_vr(tag: u32, vr: Vr) -> Result<()> {
    if !is_known_vr(vr) {
        return Err(RewriteError::edit(
            tag,
            format!("unknown VR {:?}", String::from_utf8_lossy(&vr)),
        ));
    }
    Ok(())
}

/// The value's bytes for an element of `vr` in `target`: encoded, padded to
/// an even length, its length checked against what the encoding can hold.
pub fn encode(tag: u32, vr: Vr, value: &Value, target: &Target) -> Result<Vec<u8>> {
    check_vr(tag, vr)?;
    if vr == *b"SQ" {
        return Err(RewriteError::edit(
            tag,
            "a sequence takes items (AddItem), not a value",
        ));
    }
    let little = target.encoding.little_endian;
    let mut bytes = match value {
        Value::Text(text) => encode_text(tag, vr, text, target)?,
        Value::Bytes(bytes) => match binary_width(vr) {
            Some(width) => in_byte_order(tag, vr, bytes, width, little)?,
            None => bytes.clone(),
        },
    };
    if bytes.len() % 2 == 1 {
        bytes.push(if matches!(&vr, b"UI" | b"OB" | b"UN") {
            0
        } else {
            b' '
        });
    }
    check_length(tag, vr, bytes.len(), target.encoding)?;
    Ok(bytes)
}

/// Does a value of `len` bytes fit the length field of `vr` in `encoding`?
pub fn check_length(tag: u32, vr: Vr, len: usize, encoding: Encoding) -> Result<()> {
    let limit = if encoding.explicit_vr && !has_long_length(vr) {
        0xFFFE
    } else {
        0xFFFF_FFFE
    };
    if len > limit {
        return Err(RewriteError::edit(
            tag,
            format!(
                "a value of {len} bytes is too long for VR {} (at most {limit})",
                String::from_utf8_lossy(&vr)
            ),
        ));
    }
    Ok(())
}

fn encode_text(tag: u32, vr: Vr, text: &str, target: &Target) -> Result<Vec<u8>> {
    if is_ascii_text(vr) || (is_localised_text(vr) && text.is_ascii()) {
        if !text.is_ascii() {
            return Err(RewriteError::edit(
                tag,
                format!(
                    "VR {} takes ASCII text only: {text:?}",
                    String::from_utf8_lossy(&vr)
                ),
            ));
        }
        return Ok(text.as_bytes().to_vec());
    }
    if is_localised_text(vr) {
        return encode_in_charset(tag, text, target.charset);
    }
    let Some(width) = binary_width(vr).filter(|&w| w > 1 && !vr.starts_with(b"O")) else {
        return Err(RewriteError::edit(
            tag,
            format!("VR {} takes bytes, not text", String::from_utf8_lossy(&vr)),
        ));
    };
    let mut out = Vec::with_capacity(width * (text.matches('\\').count() + 1));
    if text.is_empty() {
        return Ok(out);
    }
    for number in text.split('\\') {
        push_number(
            tag,
            vr,
            number.trim(),
            target.encoding.little_endian,
            &mut out,
        )?;
    }
    Ok(out)
}

fn encode_in_charset(tag: u32, text: &str, charset: Charset) -> Result<Vec<u8>> {
    let unencodable = |name: &str| {
        RewriteError::edit(
            tag,
            format!("{text:?} cannot be encoded in the dataset's character set ({name})"),
        )
    };
    match charset {
        Charset::Latin1 => text
            .chars()
            .map(|c| u8::try_from(u32::from(c)).map_err(|_| unencodable("ISO_IR 100")))
            .collect(),
        Charset::Utf8 => Ok(text.as_bytes().to_vec()),
        Charset::Other(encoding) => {
            let (bytes, _, failed) = encoding.encode(text);
            if failed || encoding.output_encoding() != encoding {
                return Err(unencodable(encoding.name()));
            }
            Ok(bytes.into_owned())
        }
        // Code extensions switch repertoires with escapes: the caller encodes.
        Charset::Iso2022(_) => Err(unencodable("ISO 2022 code extensions: give bytes")),
    }
}

fn push_number(tag: u32, vr: Vr, text: &str, little: bool, out: &mut Vec<u8>) -> Result<()> {
    let bad = || {
        RewriteError::edit(
            tag,
            format!(
                "{text:?} is not a value of VR {}",
                String::from_utf8_lossy(&vr)
            ),
        )
    };
    macro_rules! put {
        ($ty:ty) => {{
            let v: $ty = text.parse().map_err(|_| bad())?;
            out.extend_from_slice(&if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            });
        }};
    }
    match &vr {
        b"US" => put!(u16),
        b"SS" => put!(i16),
        b"UL" => put!(u32),
        b"SL" => put!(i32),
        b"FL" => put!(f32),
        b"FD" => put!(f64),
        b"UV" => put!(u64),
        b"SV" => put!(i64),
        b"AT" => {
            // A tag as gggg,eeee (or ggggeeee): two 16-bit numbers.
            let hex: String = text
                .trim_matches(|c| c == '(' || c == ')')
                .chars()
                .filter(|&c| c != ',')
                .collect();
            if hex.len() != 8 {
                return Err(bad());
            }
            let tag_value = u32::from_str_radix(&hex, 16).map_err(|_| bad())?;
            for half in [(tag_value >> 16) as u16, tag_value as u16] {
                out.extend_from_slice(&if little {
                    half.to_le_bytes()
                } else {
                    half.to_be_bytes()
                });
            }
        }
        _ => return Err(bad()),
    }
    Ok(())
}

/// Binary bytes given in little endian, in the dataset's byte order.
fn in_byte_order(tag: u32, vr: Vr, bytes: &[u8], width: usize, little: bool) -> Result<Vec<u8>> {
    if width > 1 && bytes.len() % width != 0 {
        return Err(RewriteError::edit(
            tag,
            format!(
                "{} bytes is not a whole number of VR {} values ({width} bytes each)",
                bytes.len(),
                String::from_utf8_lossy(&vr)
            ),
        ));
    }
    let mut out = bytes.to_vec();
    // AT is two 16-bit numbers, so it swaps as OW does.
    if !little && width > 1 {
        for unit in out.chunks_exact_mut(width) {
            unit.reverse();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LE: Target = Target {
        encoding: Encoding::EXPLICIT_LE,
        charset: Charset::Latin1,
    };
    const BE: Target = Target {
        encoding: Encoding::EXPLICIT_BE,
        charset: Charset::Latin1,
    };

    fn text(s: &str) -> Value {
        Value::Text(s.to_owned())
    }

    #[test]
    fn text_is_padded_by_vr() {
        assert_eq!(encode(1, *b"LO", &text("ABC"), &LE).unwrap(), b"ABC ");
        assert_eq!(encode(1, *b"UI", &text("1.2.3"), &LE).unwrap(), b"1.2.3\0");
        assert_eq!(
            encode(1, *b"OB", &Value::Bytes(vec![1, 2, 3]), &LE).unwrap(),
            [1, 2, 3, 0]
        );
        assert_eq!(
            encode(1, *b"PN", &text("Müller"), &LE).unwrap(),
            b"M\xfcller"
        );
    }

    #[test]
    fn numbers_follow_the_byte_order() {
        assert_eq!(
            encode(1, *b"US", &text("512\\1"), &LE).unwrap(),
            [0, 2, 1, 0]
        );
        assert_eq!(encode(1, *b"US", &text("512"), &BE).unwrap(), [2, 0]);
        assert_eq!(
            encode(1, *b"AT", &text("0010,0020"), &BE).unwrap(),
            [0, 0x10, 0, 0x20]
        );
        assert_eq!(
            encode(1, *b"OW", &Value::Bytes(vec![1, 2, 3, 4]), &BE).unwrap(),
            [2, 1, 4, 3]
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for (vr, value) in [
            (*b"US", text("70000")),
            (*b"US", text("x")),
            (*b"UI", text("1.2.é")),
            (*b"OW", Value::Bytes(vec![1, 2, 3])),
            (*b"OB", text("text")),
            (*b"SQ", text("")),
            (*b"XX", text("")),
            (*b"LO", text("漢字")),
        ] {
            assert!(encode(7, vr, &value, &LE).is_err(), "{vr:?} {value:?}");
        }
        let long = Value::Bytes(vec![b'A'; 70_000]);
        assert!(encode(7, *b"LO", &long, &LE).is_err());
        assert!(encode(7, *b"UT", &long, &LE).is_ok());
        let implicit = Target {
            encoding: Encoding::IMPLICIT_LE,
            ..LE
        };
        assert!(encode(7, *b"LO", &long, &implicit).is_ok());
    }

    #[test]
    fn localised_text_uses_the_character_set() {
        let utf8 = Target {
            charset: Charset::Utf8,
            ..LE
        };
        assert_eq!(
            encode(1, *b"LO", &text("漢字"), &utf8).unwrap(),
            "漢字".as_bytes()
        );
        let cyrillic = Target {
            charset: Charset::from_value(b"ISO_IR 144"),
            ..LE
        };
        assert_eq!(
            encode(1, *b"LO", &text("Люк"), &cyrillic).unwrap(),
            [0xBB, 0xEE, 0xDA, b' ']
        );
    }
}
