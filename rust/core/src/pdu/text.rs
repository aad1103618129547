//! The text fields of PS3.8: UIDs and names (ISO 646, padded by some peers)
//! and AE titles (16 bytes, space padded). Decoded text is printable ASCII, so
//! it is always a valid `str`; encoded text must decode back unchanged.

use super::error::{PduError, PduErrorKind, Result};

fn is_printable(b: u8) -> bool {
    (0x20..=0x7E).contains(&b)
}

fn bad(at: u64, detail: String) -> PduError {
    PduError::new(PduErrorKind::BadValue, at, detail)
}

fn unencodable(at: usize, detail: String) -> PduError {
    PduError::new(PduErrorKind::Unencodable, at as u64, detail)
}

/// A UID or other ISO 646 text field, without the trailing NULs or spaces
/// some peers pad it with; printable ASCII only, so it is a valid `str`.
pub(super) fn decode_text(at: u64, raw: &[u8], what: &str) -> Result<String> {
    let len = raw
        .iter()
        .rposition(|&b| b != 0 && b != b' ')
        .map_or(0, |i| i + 1);
    let text = &raw[..len];
    if let Some(i) = text.iter().position(|&b| !is_printable(b)) {
        return Err(bad(
            at.saturating_add(i as u64),
            format!("{what} holds byte 0x{:02X}, not printable ASCII", text[i]),
        ));
    }
    Ok(text.iter().map(|&b| char::from(b)).collect())
}

/// Check a text field before writing it: printable ASCII that decodes back
/// unchanged (so no trailing space).
pub(super) fn check_text(at: usize, value: &str, what: &str) -> Result<()> {
    if !value.bytes().all(is_printable) {
        return Err(unencodable(
            at,
            format!("{what} {value:?} is not printable ASCII"),
        ));
    }
    if value.ends_with(' ') {
        return Err(unencodable(
            at,
            format!("{what} {value:?} ends with a space"),
        ));
    }
    Ok(())
}

/// An AE title of a request: 16 bytes, leading and trailing spaces not
/// significant (PS3.8 9.3.2); printable ASCII and not all spaces.
pub(super) fn decode_ae_title(at: u64, raw: &[u8; 16], what: &str) -> Result<String> {
    let title = decode_text(at, raw, what)?;
    let title = title.trim_start_matches(' ');
    if title.is_empty() {
        return Err(bad(at, format!("{what} is all spaces")));
    }
    Ok(title.to_owned())
}

/// An AE title PS3.8 says not to test (A-ASSOCIATE-AC): never fails.
pub(super) fn decode_ae_title_lenient(raw: &[u8; 16]) -> String {
    let text: String = raw
        .iter()
        .map(|&b| if is_printable(b) { char::from(b) } else { '?' })
        .collect();
    text.trim_matches(' ').to_owned()
}

/// Write an AE title space-padded to 16 bytes.
pub(super) fn put_ae_title(
    out: &mut Vec<u8>,
    value: &str,
    allow_empty: bool,
    what: &str,
) -> Result<()> {
    let title = value.trim_matches(' ');
    if title.len() > 16 || !title.bytes().all(is_printable) {
        return Err(unencodable(
            out.len(),
            format!("{what} {value:?} is not 1 to 16 printable ASCII characters"),
        ));
    }
    if title.is_empty() && !allow_empty {
        return Err(unencodable(out.len(), format!("{what} is empty")));
    }
    out.extend_from_slice(title.as_bytes());
    out.resize(out.len() + 16 - title.len(), b' ');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_fields_lose_their_padding_only() {
        assert_eq!(decode_text(0, b"1.2.3\0", "uid").unwrap(), "1.2.3");
        assert_eq!(decode_text(0, b"1.2 \0 \0", "uid").unwrap(), "1.2");
        assert_eq!(decode_text(0, b" 1.2", "uid").unwrap(), " 1.2");
        assert_eq!(decode_text(0, b"", "uid").unwrap(), "");
        let err = decode_text(50, b"1.\x002", "uid").unwrap_err();
        assert_eq!((err.kind, err.offset), (PduErrorKind::BadValue, 52));
        assert!(check_text(0, "1.2 ", "uid").is_err());
        assert!(check_text(0, "1.2\u{e9}", "uid").is_err());
    }

    #[test]
    fn ae_titles() {
        assert_eq!(
            decode_ae_title(0, b"  STORE SCP     ", "t").unwrap(),
            "STORE SCP"
        );
        let err = decode_ae_title(30, &[b' '; 16], "t").unwrap_err();
        assert_eq!((err.kind, err.offset), (PduErrorKind::BadValue, 30));
        assert!(decode_ae_title(0, b"AB\xFF             ", "t").is_err());
        assert_eq!(decode_ae_title_lenient(b" AB\xFF\0           "), "AB??");
        assert_eq!(decode_ae_title_lenient(&[b' '; 16]), "");

        let mut out = Vec::new();
        put_ae_title(&mut out, " ANY ", false, "t").unwrap();
        assert_eq!(out, b"ANY             ");
        assert!(put_ae_title(&mut out, "SEVENTEEN-LETTERS", false, "t").is_err());
        assert!(put_ae_title(&mut out, "  ", false, "t").is_err());
        assert!(put_ae_title(&mut out, "caf\u{e9}", false, "t").is_err());
        put_ae_title(&mut out, "", true, "t").unwrap();
        assert_eq!(out.len(), 32);
    }
}
