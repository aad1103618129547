//! The text of chosen top-level elements and of every private creator: what a
//! decision about an instance (de-identification) reads of its header. The
//! input is checked by the scanner first; values are decoded in the dataset's
//! character set and stripped of padding; sequences are never read as text.

use crate::charset::{trim_text, Charset};
use crate::dataset::{walk_top_level, Element};
use crate::error::{ErrorKind, Result, ScanError};
use crate::scan::{scan, ScanOptions};
use crate::syntax::DatasetSyntax;

const SPECIFIC_CHARACTER_SET: u32 = 0x0008_0005;

/// Top-level `(tag, text)` pairs in tag order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeaderValues {
    /// The elements asked for that are present with a non-empty value.
    pub values: Vec<(u32, String)>,
    /// Every private creator element (odd group, element 0x0010-0x00FF).
    pub private_creators: Vec<(u32, String)>,
}

fn is_private_creator(tag: u32) -> bool {
    tag & 0x0001_0000 != 0 && (0x0010..=0x00FF).contains(&(tag & 0xFFFF))
}

/// Read the top-level text of `tags` (sorted or not) and the private creators.
pub fn header_values(data: &[u8], tags: &[u32]) -> Result<HeaderValues> {
    let options = ScanOptions::default();
    let info = scan(data, &options)?;
    let syntax = DatasetSyntax::from_uid(info.transfer_syntax_uid.as_deref().unwrap_or(""));
    let start = info.dataset_offset as usize;
    if info.deflated {
        let inflated = miniz_oxide::inflate::decompress_to_vec_with_limit(
            &data[start..],
            options.max_inflated,
        )
        .map_err(|e| {
            ScanError::new(
                ErrorKind::BadDeflate,
                start,
                None,
                format!("{:?}", e.status),
            )
        })?;
        read(&inflated, 0, syntax, tags)
    } else {
        read(data, start, syntax, tags)
    }
}

fn read(buf: &[u8], start: usize, syntax: DatasetSyntax, tags: &[u32]) -> Result<HeaderValues> {
    let mut wanted = tags.to_vec();
    wanted.sort_unstable();
    let mut charset: Option<&[u8]> = None;
    let mut values: Vec<(u32, &[u8])> = Vec::new();
    let mut creators: Vec<(u32, &[u8])> = Vec::new();
    walk_top_level(buf, start, syntax.encoding, &mut |e: &Element| {
        let tag = e.header.tag;
        if e.header.is_undefined() || e.header.vr == Some(*b"SQ") {
            return Ok(());
        }
        let value = &buf[e.header.value_offset..e.value_end];
        if tag == SPECIFIC_CHARACTER_SET {
            charset = Some(value);
        }
        if is_private_creator(tag) {
            creators.push((tag, value));
        } else if wanted.binary_search(&tag).is_ok() {
            values.push((tag, value));
        }
        Ok(())
    })?;
    let charset = charset.map_or(Charset::Latin1, Charset::from_value);
    let decode = |pairs: Vec<(u32, &[u8])>| -> Vec<(u32, String)> {
        pairs
            .into_iter()
            .map(|(tag, v)| (tag, charset.decode(trim_text(v)).trim().to_owned()))
            .filter(|(_, text)| !text.is_empty())
            .collect()
    };
    Ok(HeaderValues {
        values: decode(values),
        private_creators: decode(creators),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(tag: u32, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((tag >> 16) as u16).to_le_bytes());
        out.extend_from_slice(&(tag as u16).to_le_bytes());
        out.extend_from_slice(vr);
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    fn dataset() -> Vec<u8> {
        [
            element(0x0008_0005, b"CS", b"ISO_IR 100"),
            element(0x0008_0020, b"DA", b"20200131"),
            element(0x0008_1030, b"LO", b"T\xeate  "),
            element(0x0010_0010, b"PN", b"  "),
            element(0x0019_0010, b"LO", b"GEMS_ACQU_01"),
            element(0x0019_1023, b"DS", b"1.5 "),
        ]
        .concat()
    }

    #[test]
    fn reads_the_tags_asked_for_and_the_private_creators() {
        let got = header_values(&dataset(), &[0x0010_0010, 0x0008_1030, 0x0008_0020]).unwrap();
        assert_eq!(
            got.values,
            vec![
                (0x0008_0020, "20200131".to_owned()),
                (0x0008_1030, "T\u{ea}te".to_owned())
            ]
        );
        assert_eq!(
            got.private_creators,
            vec![(0x0019_0010, "GEMS_ACQU_01".to_owned())]
        );
    }

    #[test]
    fn refuses_what_the_scanner_refuses() {
        let mut data = dataset();
        data.truncate(data.len() - 2);
        assert!(header_values(&data, &[0x0008_0020]).is_err());
    }
}
