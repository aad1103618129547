//! Walking a dataset: every element header checked, sequences of defined and
//! undefined length followed through their items, nesting capped. Other
//! defined-length values are skipped, never copied.

use crate::element::{
    read_header, value_end, Encoding, Header, ITEM, ITEM_DELIMITER, SEQUENCE_DELIMITER,
};
use crate::error::{ErrorKind, Result, ScanError};
use crate::sequences::is_sequence_tag;

/// Deepest nesting of sequences the walker follows.
pub const MAX_DEPTH: usize = 64;

pub const PIXEL_DATA: u32 = 0x7FE0_0010;

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

/// What a walk reports. `element` comes for each element once its value has
/// been checked (a sequence's after all its items), at the top level only
/// unless `NESTED`; with `NESTED`, the sequences and items are reported too, so
/// a visitor can rebuild the whole tree in one pass.
pub trait Visit {
    const NESTED: bool;

    /// An element at `depth` (0: the top level; 1: in an item of a top-level sequence).
    fn element(&mut self, e: &Element, depth: usize) -> Result<()>;

    /// A sequence (or an undefined-length UN read as one) begins; its items
    /// are encoded as `inner` says.
    fn begin_sequence(&mut self, _seq: &Header, _inner: Encoding, _depth: usize) -> Result<()> {
        Ok(())
    }

    fn begin_item(&mut self, _item: &Header) -> Result<()> {
        Ok(())
    }

    /// An item ends at `end` (after its delimiter, for an undefined length).
    fn end_item(&mut self, _item: &Header, _end: usize) -> Result<()> {
        Ok(())
    }
}

/// A closure over the top-level elements, as a visitor.
struct TopLevel<F>(F);

impl<F: FnMut(&Element) -> Result<()>> Visit for TopLevel<F> {
    const NESTED: bool = false;

    #[inline]
    fn element(&mut self, e: &Element, _depth: usize) -> Result<()> {
        (self.0)(e)
    }
}

/// Walk the top-level dataset from `pos` to the end of `buf`, calling `visit`
/// for each element. Returns the offset where the walk stopped.
pub fn walk_top_level(
    buf: &[u8],
    pos: usize,
    enc: Encoding,
    visit: &mut impl FnMut(&Element) -> Result<()>,
) -> Result<usize> {
    walk(buf, pos, buf.len(), false, enc, 0, &mut TopLevel(visit))
}

/// Walk the dataset from `pos` to the end of `buf`, reporting to `visitor`.
pub fn walk_dataset<V: Visit>(
    buf: &[u8],
    pos: usize,
    enc: Encoding,
    visitor: &mut V,
) -> Result<usize> {
    walk(buf, pos, buf.len(), false, enc, 0, visitor)
}

/// Walk elements up to `limit` (the end of the input, of a defined-length item
/// or of the sequence around an undefined-length one). With `delimited`, the
/// dataset must end at an item delimiter before `limit`; returns the offset
/// after it. Otherwise it must end exactly at `limit`.
fn walk<V: Visit>(
    buf: &[u8],
    mut pos: usize,
    limit: usize,
    delimited: bool,
    enc: Encoding,
    depth: usize,
    visit: &mut V,
) -> Result<usize> {
    loop {
        if pos >= limit {
            if delimited {
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
            ITEM_DELIMITER if delimited => return Ok(header.value_offset),
            ITEM_DELIMITER => return Err(bad_item(&header, "item delimiter outside an item")),
            t if t >> 16 == 0xFFFE => {
                return Err(bad_item(&header, "item tag where an element belongs"));
            }
            _ => {}
        }
        if enc.explicit_vr && header.vr.is_none() {
            return Err(ScanError::new(
                ErrorKind::EncodingMismatch,
                header.offset,
                Some(header.tag),
                "no VR after the tag: implicit VR data under an explicit VR transfer syntax",
            ));
        }
        let element = if header.is_undefined() {
            if header.tag == PIXEL_DATA {
                read_fragments(buf, &header, limit, enc)?
            } else {
                // UN of undefined length holds implicit VR little endian (PS3.5 6.2.2).
                let inner = if header.vr == Some(*b"UN") {
                    Encoding::IMPLICIT_LE
                } else {
                    enc
                };
                if V::NESTED {
                    visit.begin_sequence(&header, inner, depth)?;
                }
                read_sequence(buf, &header, limit, inner, depth + 1, visit)?
            }
        } else {
            // Private values of odd length occur in the wild and read the same
            // everywhere (DCMTK warns); a standard one is refused.
            if header.tag & 0x0001_0000 == 0 {
                even(&header)?;
            }
            let end = value_end(&header, limit)?;
            if is_sequence(buf, &header, enc) {
                if V::NESTED {
                    visit.begin_sequence(&header, enc, depth)?;
                }
                read_items(buf, &header, end, enc, depth + 1, visit)?;
            } else if V::NESTED && holds_un_items(buf, &header, end, depth) {
                visit.begin_sequence(&header, Encoding::IMPLICIT_LE, depth)?;
                read_items(buf, &header, end, Encoding::IMPLICIT_LE, depth + 1, visit)?;
            }
            Element {
                header,
                value_end: end,
                fragments: 0,
            }
        };
        if depth == 0 || V::NESTED {
            visit.element(&element, depth)?;
        }
        pos = if header.is_undefined() {
            element.value_end + 8
        } else {
            element.value_end
        };
    }
}

/// Is this defined-length value a sequence whose items must be checked? In
/// explicit VR its VR says so; in implicit VR the data dictionary does, and a
/// private value that opens with an item tag is read as one (as pydicom reads
/// it). A standard value that is not a sequence is never read as one.
fn is_sequence(buf: &[u8], h: &Header, enc: Encoding) -> bool {
    match h.vr {
        Some(vr) => vr == *b"SQ",
        None => {
            is_sequence_tag(h.tag)
                || (h.tag & 0x0001_0000 != 0
                    && h.length >= 8
                    && enc.tag_at(buf, h.value_offset) == ITEM)
        }
    }
}

/// Is this defined-length UN value a sequence of the data dictionary, stored
/// as UN (its items in implicit VR little endian, PS3.5 6.2.2), whose items
/// read cleanly? Only a visitor that follows nesting asks: the scanner skips
/// UN values unread, and a value that does not read as items stays opaque.
fn holds_un_items(buf: &[u8], h: &Header, end: usize, depth: usize) -> bool {
    h.vr == Some(*b"UN")
        && is_sequence_tag(h.tag)
        && h.length >= 8
        && Encoding::IMPLICIT_LE.tag_at(buf, h.value_offset) == ITEM
        && read_items(buf, h, end, Encoding::IMPLICIT_LE, depth + 1, &mut Skim).is_ok()
}

/// A visitor that only lets the walk check the bytes.
struct Skim;

impl Visit for Skim {
    const NESTED: bool = false;

    fn element(&mut self, _e: &Element, _depth: usize) -> Result<()> {
        Ok(())
    }
}

#[cold]
fn bad_item(h: &Header, what: &str) -> ScanError {
    ScanError::new(ErrorKind::BadItem, h.offset, Some(h.tag), what)
}

#[cold]
fn not_an_item(seq: &Header, found: &Header) -> ScanError {
    ScanError::new(
        ErrorKind::BadItem,
        found.offset,
        Some(seq.tag),
        format!(
            "({:04X},{:04X}) where an item of the sequence belongs",
            found.tag >> 16,
            found.tag & 0xFFFF
        ),
    )
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

/// A defined length must be even (PS3.5 7.1.1).
#[inline]
fn even(h: &Header) -> Result<()> {
    if h.length % 2 == 0 {
        return Ok(());
    }
    Err(ScanError::new(
        ErrorKind::OddLength,
        h.offset,
        Some(h.tag),
        format!("length {} is odd", h.length),
    ))
}

/// Check a defined-length sequence: items only, each one a dataset that ends
/// exactly where the item does, the last one ending where the sequence does.
fn read_items(
    buf: &[u8],
    seq: &Header,
    end: usize,
    enc: Encoding,
    depth: usize,
    visit: &mut impl Visit,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(too_deep(seq));
    }
    let mut pos = seq.value_offset;
    while pos < end {
        if end - pos < 8 {
            return Err(ScanError::new(
                ErrorKind::LengthOverflow,
                pos,
                Some(seq.tag),
                format!("{} stray bytes at the end of a sequence", end - pos),
            ));
        }
        let item = item_header(buf, pos, enc);
        if item.tag != ITEM {
            return Err(not_an_item(seq, &item));
        }
        pos = read_item(buf, seq, &item, end, enc, depth, visit)?;
    }
    Ok(())
}

/// Walk one item's dataset (bounded by `limit`, the end of its sequence);
/// returns the offset after the item. Errors in the item itself name the sequence.
fn read_item(
    buf: &[u8],
    seq: &Header,
    item: &Header,
    limit: usize,
    enc: Encoding,
    depth: usize,
    visit: &mut impl Visit,
) -> Result<usize> {
    visit.begin_item(item)?;
    let end = read_item_dataset(buf, seq, item, limit, enc, depth, visit)?;
    visit.end_item(item, end)?;
    Ok(end)
}

fn read_item_dataset(
    buf: &[u8],
    seq: &Header,
    item: &Header,
    limit: usize,
    enc: Encoding,
    depth: usize,
    visit: &mut impl Visit,
) -> Result<usize> {
    if item.is_undefined() {
        return walk(buf, item.value_offset, limit, true, enc, depth, visit);
    }
    let named = |e: ScanError| ScanError {
        tag: Some(seq.tag),
        detail: format!("item at byte {}: {}", item.offset, e.detail),
        ..e
    };
    even(item).map_err(named)?;
    let end = value_end(item, limit).map_err(named)?;
    walk(buf, item.value_offset, end, false, enc, depth, visit)
}

/// Follow an undefined-length sequence to its delimiter, walking every item.
fn read_sequence(
    buf: &[u8],
    seq: &Header,
    limit: usize,
    enc: Encoding,
    depth: usize,
    visit: &mut impl Visit,
) -> Result<Element> {
    if depth > MAX_DEPTH {
        return Err(too_deep(seq));
    }
    let mut pos = seq.value_offset;
    loop {
        let item = read_item_header(buf, pos, limit, enc, seq)?;
        match item.tag {
            SEQUENCE_DELIMITER => {
                return Ok(Element {
                    header: *seq,
                    value_end: pos,
                    fragments: 0,
                })
            }
            ITEM => pos = read_item(buf, seq, &item, limit, enc, depth, visit)?,
            _ => return Err(not_an_item(seq, &item)),
        }
    }
}

/// Item and delimiter headers: tag and 32-bit length, no VR, in every encoding.
/// The caller has checked that eight bytes are left.
fn item_header(buf: &[u8], pos: usize, enc: Encoding) -> Header {
    Header {
        tag: enc.tag_at(buf, pos),
        vr: None,
        length: enc.u32_at(buf, pos + 4),
        offset: pos,
        value_offset: pos + 8,
    }
}

/// An item or delimiter header inside a value of undefined length.
fn read_item_header(
    buf: &[u8],
    pos: usize,
    limit: usize,
    enc: Encoding,
    parent: &Header,
) -> Result<Header> {
    if pos.checked_add(8).is_none_or(|end| end > limit) {
        return Err(ScanError::new(
            ErrorKind::Truncated,
            pos,
            Some(parent.tag),
            "undefined length without a sequence delimiter",
        ));
    }
    Ok(item_header(buf, pos, enc))
}

/// Follow encapsulated pixel data (PS3.5 A.4): a basic offset table item, then
/// fragment items of defined, even length, then a sequence delimiter.
fn read_fragments(buf: &[u8], pixel: &Header, limit: usize, enc: Encoding) -> Result<Element> {
    let mut pos = pixel.value_offset;
    let mut fragments: u32 = 0;
    loop {
        let item = read_item_header(buf, pos, limit, enc, pixel)?;
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
                even(&item).map_err(|e| ScanError {
                    tag: Some(pixel.tag),
                    ..e
                })?;
                pos = value_end(&item, limit)?;
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
