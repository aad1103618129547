//! Walking a dataset: every element header checked, undefined lengths followed
//! through items and delimiters, nesting capped. Defined-length values are
//! skipped, never copied.

use crate::element::{
    read_header, value_end, Encoding, Header, ITEM, ITEM_DELIMITER, SEQUENCE_DELIMITER,
};
use crate::error::{ErrorKind, Result, ScanError};

/// Deepest nesting of sequences the walker follows.
pub const MAX_DEPTH: usize = 64;

pub const PIXEL_DATA: u32 = 0x7FE0_0010;

/// Where a dataset ends: at a byte limit, or at an item delimiter.
#[derive(Debug, Clone, Copy)]
enum Until {
    Limit(usize),
    ItemDelimiter,
}

/// What a walk hands to its caller for each top-level element.
#[derive(Debug, Clone, Copy)]
pub struct Element {
    pub header: Header,
    /// The value's bytes: `value_offset..value_end`. For undefined lengths the
    /// range stops before the closing delimiter.
    pub value_end: usize,
    /// Fragments of encapsulated pixel data (basic offset table included).
    pub fragments: u32,
}

/// Walk the top-level dataset from `pos` to the end of `buf`, calling `visit`
/// for each element. Returns the offset where the walk stopped.
pub fn walk_top_level(
    buf: &[u8],
    pos: usize,
    enc: Encoding,
    visit: &mut impl FnMut(&Element) -> Result<()>,
) -> Result<usize> {
    walk(buf, pos, Until::Limit(buf.len()), enc, 0, visit)
}

fn walk(
    buf: &[u8],
    mut pos: usize,
    until: Until,
    enc: Encoding,
    depth: usize,
    visit: &mut impl FnMut(&Element) -> Result<()>,
) -> Result<usize> {
    let limit = match until {
        Until::Limit(limit) => limit,
        Until::ItemDelimiter => buf.len(),
    };
    loop {
        if pos >= limit {
            if let Until::ItemDelimiter = until {
                return Err(ScanError::new(
                    ErrorKind::Truncated,
                    pos,
                    None,
                    "item of undefined length has no item delimiter",
                ));
            }
            return Ok(pos);
        }
        let header = read_header(buf, pos, limit, enc)?;
        match header.tag {
            ITEM_DELIMITER => {
                if let Until::ItemDelimiter = until {
                    return Ok(header.value_offset);
                }
                return Err(bad_item(&header, "item delimiter outside an item"));
            }
            ITEM | SEQUENCE_DELIMITER => {
                return Err(bad_item(&header, "item tag where an element belongs"));
            }
            _ => {}
        }
        let element = if header.is_undefined() {
            if header.tag == PIXEL_DATA {
                read_fragments(buf, &header, enc)?
            } else {
                // UN of undefined length holds implicit VR little endian (PS3.5 6.2.2).
                let inner = if header.vr == Some(*b"UN") {
                    Encoding::IMPLICIT_LE
                } else {
                    enc
                };
                read_sequence(buf, &header, inner, depth + 1)?
            }
        } else {
            Element {
                header,
                value_end: value_end(&header, limit)?,
                fragments: 0,
            }
        };
        if depth == 0 {
            visit(&element)?;
        }
        pos = if header.is_undefined() {
            element.value_end + 8
        } else {
            element.value_end
        };
    }
}

#[cold]
fn bad_item(h: &Header, what: &str) -> ScanError {
    ScanError::new(ErrorKind::BadItem, h.offset, Some(h.tag), what)
}

#[cold]
fn too_deep(h: &Header) -> ScanError {
    ScanError::new(
        ErrorKind::TooDeep,
        h.offset,
        Some(h.tag),
        format!("more than {MAX_DEPTH} levels"),
    )
}

/// Follow an undefined-length sequence to its delimiter. Items of defined length
/// are skipped whole; items of undefined length are walked to their delimiter.
fn read_sequence(buf: &[u8], seq: &Header, enc: Encoding, depth: usize) -> Result<Element> {
    if depth > MAX_DEPTH {
        return Err(too_deep(seq));
    }
    let mut pos = seq.value_offset;
    loop {
        let item = read_item_header(buf, pos, enc, seq)?;
        match item.tag {
            SEQUENCE_DELIMITER => {
                return Ok(Element {
                    header: *seq,
                    value_end: pos,
                    fragments: 0,
                })
            }
            ITEM if item.is_undefined() => {
                pos = walk(
                    buf,
                    item.value_offset,
                    Until::ItemDelimiter,
                    enc,
                    depth,
                    &mut |_| Ok(()),
                )?;
            }
            ITEM => pos = value_end(&item, buf.len())?,
            _ => return Err(bad_item(&item, "expected an item or a sequence delimiter")),
        }
    }
}

/// Item and delimiter headers: tag and 32-bit length, no VR, in every encoding.
fn read_item_header(buf: &[u8], pos: usize, enc: Encoding, parent: &Header) -> Result<Header> {
    if pos.checked_add(8).is_none_or(|end| end > buf.len()) {
        return Err(ScanError::new(
            ErrorKind::Truncated,
            pos,
            Some(parent.tag),
            "undefined length without a sequence delimiter",
        ));
    }
    Ok(Header {
        tag: enc.tag_at(buf, pos),
        vr: None,
        length: enc.u32_at(buf, pos + 4),
        offset: pos,
        value_offset: pos + 8,
    })
}

/// Follow encapsulated pixel data (PS3.5 A.4): a basic offset table item, then
/// fragment items of defined length, then a sequence delimiter.
fn read_fragments(buf: &[u8], pixel: &Header, enc: Encoding) -> Result<Element> {
    let mut pos = pixel.value_offset;
    let mut fragments: u32 = 0;
    loop {
        let item = read_item_header(buf, pos, enc, pixel)?;
        match item.tag {
            SEQUENCE_DELIMITER => {
                if fragments == 0 {
                    return Err(bad_item(
                        &item,
                        "encapsulated pixel data without a basic offset table",
                    ));
                }
                return Ok(Element {
                    header: *pixel,
                    value_end: pos,
                    fragments,
                });
            }
            ITEM if item.is_undefined() => {
                return Err(ScanError::new(
                    ErrorKind::UndefinedLength,
                    item.offset,
                    Some(pixel.tag),
                    "fragment of undefined length",
                ))
            }
            ITEM => {
                pos = value_end(&item, buf.len())?;
                fragments += 1;
            }
            _ => {
                return Err(bad_item(
                    &item,
                    "expected a fragment or a sequence delimiter",
                ))
            }
        }
    }
}
