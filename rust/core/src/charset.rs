//! Text values decoded as DICOM's Specific Character Set (0008,0005) says.
//!
//! ASCII, by far the common case, is a borrowed check and one copy. Others go
//! through `encoding_rs`; ISO 2022 code extensions are decoded for the Japanese
//! and Korean sets that use them in practice.

use encoding_rs::{
    Encoding as TextEncoding, EUC_KR, GB18030, GBK, ISO_2022_JP, ISO_8859_2, ISO_8859_3,
    ISO_8859_4, ISO_8859_5, ISO_8859_6, ISO_8859_7, ISO_8859_8, SHIFT_JIS, WINDOWS_1254,
    WINDOWS_874,
};

/// The character repertoire of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Charset {
    /// The default repertoire; non-ASCII bytes are read as ISO 8859-1, as pydicom does.
    #[default]
    Latin1,
    Utf8,
    Other(&'static TextEncoding),
    /// ISO 2022 with code extensions into JIS X 0208 (ISO 2022 IR 87 / 159).
    Iso2022Japanese,
    /// ISO 2022 with code extensions into KS X 1001 (ISO 2022 IR 149).
    Iso2022Korean,
}

impl Charset {
    /// The repertoire named by a (0008,0005) value; unknown terms fall back to the default.
    pub fn from_value(value: &[u8]) -> Charset {
        let mut extended_japanese = false;
        let mut extended_korean = false;
        let mut first: Option<Charset> = None;
        for term in value.split(|&b| b == b'\\') {
            let term = trim_text(term);
            let charset = match term {
                b"ISO_IR 192" => Charset::Utf8,
                b"ISO_IR 100" | b"ISO 2022 IR 100" | b"" | b"ISO_IR 6" | b"ISO 2022 IR 6" => {
                    Charset::Latin1
                }
                b"ISO_IR 101" | b"ISO 2022 IR 101" => Charset::Other(ISO_8859_2),
                b"ISO_IR 109" | b"ISO 2022 IR 109" => Charset::Other(ISO_8859_3),
                b"ISO_IR 110" | b"ISO 2022 IR 110" => Charset::Other(ISO_8859_4),
                b"ISO_IR 144" | b"ISO 2022 IR 144" => Charset::Other(ISO_8859_5),
                b"ISO_IR 127" | b"ISO 2022 IR 127" => Charset::Other(ISO_8859_6),
                b"ISO_IR 126" | b"ISO 2022 IR 126" => Charset::Other(ISO_8859_7),
                b"ISO_IR 138" | b"ISO 2022 IR 138" => Charset::Other(ISO_8859_8),
                b"ISO_IR 148" | b"ISO 2022 IR 148" => Charset::Other(WINDOWS_1254),
                b"ISO_IR 166" | b"ISO 2022 IR 166" => Charset::Other(WINDOWS_874),
                b"ISO_IR 13" | b"ISO 2022 IR 13" => Charset::Other(SHIFT_JIS),
                b"GB18030" => Charset::Other(GB18030),
                b"GBK" | b"ISO 2022 GBK" | b"ISO 2022 58" | b"ISO 2022 IR 58" => {
                    Charset::Other(GBK)
                }
                b"ISO 2022 IR 87" | b"ISO 2022 IR 159" => {
                    extended_japanese = true;
                    continue;
                }
                b"ISO 2022 IR 149" => {
                    extended_korean = true;
                    continue;
                }
                _ => Charset::Latin1,
            };
            first.get_or_insert(charset);
        }
        if extended_japanese {
            Charset::Iso2022Japanese
        } else if extended_korean {
            Charset::Iso2022Korean
        } else {
            first.unwrap_or_default()
        }
    }

    /// Decode a value; malformed sequences become U+FFFD rather than errors.
    pub fn decode(self, bytes: &[u8]) -> String {
        if bytes.is_ascii() && (!bytes.contains(&0x1B)) {
            // ASCII is valid UTF-8 (and identical in every repertoire here).
            return String::from_utf8(bytes.to_vec()).unwrap_or_default();
        }
        match self {
            Charset::Latin1 => bytes.iter().map(|&b| char::from(b)).collect(),
            Charset::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
            Charset::Other(encoding) => encoding.decode_without_bom_handling(bytes).0.into_owned(),
            Charset::Iso2022Japanese => decode_iso2022(bytes, ISO_2022_JP, true),
            Charset::Iso2022Korean => decode_iso2022(bytes, EUC_KR, false),
        }
    }
}

/// ISO 2022 values: Japanese is a stateful 7-bit encoding that `encoding_rs`
/// decodes with its escapes; Korean announces KS X 1001 with `ESC $ ) C` and
/// then uses 8-bit EUC-KR bytes, so the escapes are dropped before decoding.
fn decode_iso2022(bytes: &[u8], encoding: &'static TextEncoding, keep_escapes: bool) -> String {
    if keep_escapes {
        return encoding.decode_without_bom_handling(bytes).0.into_owned();
    }
    let mut plain = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0x1B {
            i += if bytes.get(i + 1) == Some(&b'$') {
                4
            } else {
                3
            };
            continue;
        }
        plain.push(bytes[i]);
        i += 1;
    }
    encoding.decode_without_bom_handling(&plain).0.into_owned()
}

/// Strip trailing spaces and NULs: the padding of DICOM text values.
#[inline]
pub fn trim_text(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |i| i + 1);
    &bytes[..end]
}
