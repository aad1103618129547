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
    /// ISO 2022 code extensions: escape sequences switch repertoires within a
    /// value, starting from the first term's (`None`: the default repertoire).
    Iso2022(Option<&'static TextEncoding>),
}

/// A single (0008,0005) term, as a repertoire; `None` for the default one.
fn term(term: &[u8]) -> Option<Option<&'static TextEncoding>> {
    let name = term
        .strip_prefix(b"ISO 2022 IR ")
        .or_else(|| term.strip_prefix(b"ISO_IR "));
    Some(match name? {
        b"6" | b"100" => None,
        b"101" => Some(ISO_8859_2),
        b"109" => Some(ISO_8859_3),
        b"110" => Some(ISO_8859_4),
        b"144" => Some(ISO_8859_5),
        b"127" => Some(ISO_8859_6),
        b"126" => Some(ISO_8859_7),
        b"138" => Some(ISO_8859_8),
        b"148" => Some(WINDOWS_1254),
        b"166" => Some(WINDOWS_874),
        b"13" => Some(SHIFT_JIS),
        b"149" => Some(EUC_KR),
        b"58" => Some(GBK),
        _ => return None,
    })
}

impl Charset {
    /// The repertoire named by a (0008,0005) value; unknown terms fall back to the default.
    pub fn from_value(value: &[u8]) -> Charset {
        let terms: Vec<&[u8]> = value.split(|&b| b == b'\\').map(trim_text).collect();
        let first = terms.first().copied().unwrap_or_default();
        match first {
            b"ISO_IR 192" => return Charset::Utf8,
            b"GB18030" => return Charset::Other(GB18030),
            b"GBK" | b"ISO 2022 GBK" => return Charset::Other(GBK),
            _ => {}
        }
        let initial = if first.is_empty() {
            None
        } else {
            term(first).flatten()
        };
        if terms.iter().any(|t| t.starts_with(b"ISO 2022")) {
            return Charset::Iso2022(initial);
        }
        initial.map_or(Charset::Latin1, Charset::Other)
    }

    /// Decode a value; malformed sequences become U+FFFD rather than errors.
    pub fn decode(self, bytes: &[u8]) -> String {
        if bytes.is_ascii() && !bytes.contains(&0x1B) {
            // ASCII is valid UTF-8 (and identical in every repertoire here).
            return String::from_utf8(bytes.to_vec()).unwrap_or_default();
        }
        match self {
            Charset::Latin1 => latin1(bytes),
            Charset::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
            Charset::Other(encoding) => encoding.decode_without_bom_handling(bytes).0.into_owned(),
            Charset::Iso2022(initial) => decode_iso2022(bytes, initial),
        }
    }
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Decode a value with ISO 2022 escape sequences (PS3.5 6.1.2.5): split it at
/// each escape, and decode each run in the repertoire its escape designates.
fn decode_iso2022(bytes: &[u8], initial: Option<&'static TextEncoding>) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut escape: &[u8] = b"";
    let mut rest = bytes;
    loop {
        let end = rest.iter().position(|&b| b == 0x1B).unwrap_or(rest.len());
        decode_run(&mut out, escape, &rest[..end], initial);
        if end == rest.len() {
            return out;
        }
        // ESC, intermediate bytes 0x20-0x2F, one final byte.
        let tail = &rest[end + 1..];
        let len = tail
            .iter()
            .position(|b| !(0x20..=0x2F).contains(b))
            .map_or(tail.len(), |i| i + 1);
        escape = &tail[..len];
        rest = &tail[len..];
    }
}

fn decode_run(out: &mut String, escape: &[u8], run: &[u8], initial: Option<&'static TextEncoding>) {
    if run.is_empty() {
        return;
    }
    let simple: Option<Option<&'static TextEncoding>> = match escape {
        b"" => Some(initial),
        b"(B" | b"(J" | b"-A" => Some(None),
        b")I" => Some(Some(SHIFT_JIS)),
        b"$)C" => Some(Some(EUC_KR)),
        b"$)A" => Some(Some(GBK)),
        b"-B" => Some(Some(ISO_8859_2)),
        b"-C" => Some(Some(ISO_8859_3)),
        b"-D" => Some(Some(ISO_8859_4)),
        b"-F" => Some(Some(ISO_8859_7)),
        b"-G" => Some(Some(ISO_8859_6)),
        b"-H" => Some(Some(ISO_8859_8)),
        b"-L" => Some(Some(ISO_8859_5)),
        b"-M" => Some(Some(WINDOWS_1254)),
        b"-T" => Some(Some(WINDOWS_874)),
        _ => None,
    };
    match simple {
        Some(None) => out.push_str(&latin1(run)),
        Some(Some(encoding)) => out.push_str(&encoding.decode_without_bom_handling(run).0),
        None => {
            // Multi-byte 7-bit sets (JIS X 0208, ...): the ISO-2022-JP decoder
            // reads the run with its escape in front.
            let mut with_escape = Vec::with_capacity(run.len() + escape.len() + 1);
            with_escape.push(0x1B);
            with_escape.extend_from_slice(escape);
            with_escape.extend_from_slice(run);
            out.push_str(&ISO_2022_JP.decode_without_bom_handling(&with_escape).0);
        }
    }
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
